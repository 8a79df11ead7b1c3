"""Per-patch appearance statistics appended to the descriptors (ours; the offline world's random ViT).

A frozen random ViT's linear patch embedding depends on where a stripe or a dot falls inside a patch, so two patches
of the same material can get unrelated tokens. Seven statistics of each patch's pixels do not: the mean and the
standard deviation of each colour channel and the mean absolute difference of neighbouring pixels (texture energy),
standardised and multiplied by a weight, are appended as extra descriptor channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.outputs import Features

__all__ = ["APPEARANCE_CHANNELS", "AppearanceStats", "patch_appearance"]

#: The appended channels, in order.
APPEARANCE_CHANNELS = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "gradient")
# Their mean and standard deviation over the synthetic world's Seen training images (ImageNet-normalised, patch 8),
# measured once; they only bring the seven channels to a common, roughly unit scale.
_APPEARANCE_MEAN = (0.23, 0.32, 0.42, 0.176, 0.174, 0.18, 0.142)
_APPEARANCE_STD = (0.75, 0.68, 0.74, 0.235, 0.226, 0.243, 0.18)


def patch_appearance(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Seven statistics of every patch's pixels: mean and standard deviation of each colour channel, and the mean
    absolute horizontal plus vertical difference of neighbouring pixels (texture energy), standardised.

    Unlike a linear patch embedding they do not depend on where a stripe or a dot falls inside the patch, so two
    patches of the same material look alike.

    Args:
        x: (B, 3, H, W) ImageNet-normalised images, H and W multiples of ``patch``.
        patch: the ViT's patch size.

    Returns:
        (B, 7, H / patch, W / patch) float32, channels in ``APPEARANCE_CHANNELS`` order.
    """
    x = x.float()
    mean = F.avg_pool2d(x, patch)
    std = (F.avg_pool2d(x * x, patch) - mean * mean).clamp_min(0).sqrt()
    dx = F.pad((x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=1, keepdim=True), (0, 1))
    dy = F.pad((x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=1, keepdim=True), (0, 0, 0, 1))
    stats = torch.cat([mean, std, F.avg_pool2d(dx + dy, patch)], dim=1)  # (B, 7, h, w)
    shift = torch.tensor(_APPEARANCE_MEAN, device=x.device).view(1, -1, 1, 1)
    scale = torch.tensor(_APPEARANCE_STD, device=x.device).view(1, -1, 1, 1)
    return (stats - shift) / scale


class AppearanceStats(nn.Module):
    """Appends ``weight`` × :func:`patch_appearance` to the backbone's descriptors.

    Args:
        weight: the multiplier of the standardised statistics (the offline main job: 6).
        patch_size: the ViT's patch size.
    """

    channels = len(APPEARANCE_CHANNELS)

    def __init__(self, weight: float, patch_size: int) -> None:
        super().__init__()
        if not weight > 0:
            raise ValueError(f"AppearanceStats: expected a weight > 0, got {weight!r}")
        self.weight, self.patch_size = float(weight), int(patch_size)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, features: Features) -> Features:
        """Features whose descriptors (B, D + 7, h, w) end with the statistics of ``images`` (B, 3, H, W)."""
        stats = patch_appearance(images, self.patch_size) * self.weight
        desc = features.descriptors
        return Features(torch.cat([desc, stats.to(desc.dtype)], dim=1), features.cls_attn)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, patch_size={self.patch_size}"
