"""Top-k pooling of the class maps into logits (ours), instead of LOCATE's global average.

GAP rewards a class for the *area* its map covers, so a class whose objects are thin (a knife, scissors) can be
predicted from how much background an image has, and its map then lights up the background. Top-k pooling scores a
class by its strongest places only: the mean of each map's ``top`` fraction of highest positions (at least one).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TopKPool"]


class TopKPool(nn.Module):
    """(..., C, h, w) class maps -> (..., C) logits: the mean of each map's ``top`` fraction of highest positions.

    Args:
        top: the fraction of positions averaged, in (0, 1].
    """

    def __init__(self, top: float = 0.2) -> None:
        super().__init__()
        if not 0 < top <= 1:
            raise ValueError(f"TopKPool: top must be a fraction in (0, 1], got {top}")
        self.top = float(top)

    def forward(self, cam: torch.Tensor) -> torch.Tensor:
        flat = cam.flatten(-2)
        k = max(1, round(self.top * flat.shape[-1]))
        return flat.topk(k, dim=-1).values.mean(dim=-1)

    def extra_repr(self) -> str:
        return f"top={self.top}"
