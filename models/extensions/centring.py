"""Part prototypes compared after subtracting the running mean descriptor (ours; the offline world's random ViT).

A random ViT's descriptors share a large common component, so raw cosines barely tell a part from the background.
The prototypes and the prototype loss compare descriptors minus a running mean instead; the heads still see the raw
descriptors. The mean is model state (registered buffers, saved in checkpoints) and is updated only in training.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DescriptorCentring"]


class DescriptorCentring(nn.Module):
    """Subtracts a running mean of the descriptors, updated from every training batch.

    In training the mean is updated first, from this batch: the average of the exocentric and the egocentric views'
    means, folded in with rate max(1 / steps, ``min_rate``): a plain average over the first steps, then an
    exponential one.

    Args:
        dim: descriptor width D.
        min_rate: the smallest rate at which a batch's mean enters the running mean.
    """

    def __init__(self, dim: int, min_rate: float = 0.01) -> None:
        super().__init__()
        self.min_rate = float(min_rate)
        self.register_buffer("desc_mean", torch.zeros(dim))  # (D,)
        self.register_buffer("desc_mean_count", torch.zeros((), dtype=torch.long))  # training steps seen

    def forward(self, exo_desc: torch.Tensor, ego_desc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(exo_desc, ego_desc) minus the running mean; both (·, D, h, w)."""
        if self.training:
            with torch.no_grad():
                views = [x.detach().float().mean(dim=(0, 2, 3)) for x in (exo_desc, ego_desc)]
                self.desc_mean_count += 1
                rate = max(1.0 / float(self.desc_mean_count), self.min_rate)
                self.desc_mean.mul_(1.0 - rate).add_(0.5 * (views[0] + views[1]), alpha=rate)
        mu = self.desc_mean.view(1, -1, 1, 1)
        return exo_desc - mu.to(exo_desc.dtype), ego_desc - mu.to(ego_desc.dtype)
