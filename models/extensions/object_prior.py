"""The model's own class-agnostic object map mixed into every predicted heatmap (ours; prediction only).

The object map is the min-max normalised log-sum-exp of all class maps: high wherever some affordance is, that is on
the object. Each heatmap and the object map are scaled to sum 1 on the patch grid and mixed,
``(1 - share) · map + share · object``. KLD is convex in the prediction, so the mixture scores at most the mixture of
the two scores, and less where they miss different GT mass: the label map misses the part when it lies on the wrong
part, the object map never misses the object. Training and checkpoints are untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from utils.maps import normalize_mass, normalize_minmax

__all__ = ["ObjectPrior"]


class ObjectPrior(nn.Module):
    """Mixes ``share`` of the class-agnostic object map into heatmaps on the patch grid.

    Args:
        share: the object map's share, in (0, 1).
    """

    def __init__(self, share: float) -> None:
        super().__init__()
        if not 0.0 < share < 1.0:
            raise ValueError(f"ObjectPrior: the share must be in (0, 1), got {share}")
        self.share = float(share)

    def forward(self, maps: torch.Tensor, ego_pred: torch.Tensor) -> torch.Tensor:
        """Mix the object map into ``maps``.

        Args:
            maps: (b, c, h, w) raw heatmaps (the queried label's map with c = 1, or all class maps).
            ego_pred: (b, C, h, w) the egocentric class maps.

        Returns:
            (b, c, h, w) float32 maps (min-max normalise them after resizing).
        """
        obj = normalize_minmax(torch.logsumexp(ego_pred.float(), dim=1, keepdim=True))  # (b, 1, h, w)
        part = normalize_minmax(maps.float())
        return (1.0 - self.share) * normalize_mass(part) + self.share * normalize_mass(obj)

    def extra_repr(self) -> str:
        return f"share={self.share}"
