"""Position embeddings of a ViT meeting an input grid other than the one they were stored for.

Two rules, picked by ``model.backbone.pos_embed_resize``:

- ``timm``: timm resamples the stored embedding to the input grid with antialiased bicubic interpolation to the exact
  grid size (``timm.layers.resample_abs_pos_embed``). The backbone is built at the input size, so the resampling
  happens once, when the weights are loaded.
- ``dinov2``: DINOv2's ``interpolate_pos_encoding`` (Oquab et al., 2023), which BiT-Align's published code runs on
  every call: the embedding stays at the checkpoint's grid (37 × 37 for the 518-pixel ViT-S/14) and is resized by
  bicubic interpolation *without* antialiasing and with a scale factor of (g + 0.1) / M instead of a target size.
  PyTorch then samples source position (i + 0.5) · M / (g + 0.1) − 0.5 for output index i, so the grid it reads is
  slightly narrower than the one an exact-size resize reads: 37 → 16 samples 0.649 … 35.121 instead of
  0.656 … 35.344. On a random std-0.02 embedding resized 37 → 16, the two rules differ by up to 0.068 (and DINOv2's
  rule differs from an exact-size bicubic without antialiasing by up to 0.037).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

__all__ = ["POS_EMBED_RESIZE", "resize_pos_embed_dinov2"]

POS_EMBED_RESIZE = ("timm", "dinov2")


def resize_pos_embed_dinov2(
    pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1, offset: float = 0.1
) -> torch.Tensor:
    """DINOv2's position-embedding resize (``interpolate_pos_encoding``), for any stored square grid.

    Args:
        pos_embed: (1, P + M·M, E) the stored embedding, P prefix rows (the CLS token's) and an M × M patch grid.
        grid: (h, w) the input's patch grid.
        num_prefix_tokens: P, the rows that are kept as they are.
        offset: added to the target grid before dividing by M (DINOv2: 0.1, against floating-point rounding of the
            output size).

    Returns:
        (1, P + h·w, E) in the input's dtype; the stored embedding itself when (h, w) == (M, M).

    Raises:
        ValueError: the stored patch rows do not form a square grid, or the scale factor does not give (h, w).
    """
    n = pos_embed.shape[1] - num_prefix_tokens
    m = math.isqrt(n)
    if m * m != n:
        raise ValueError(f"resize_pos_embed_dinov2: {n} patch position rows do not form a square grid")
    h, w = int(grid[0]), int(grid[1])
    if (h, w) == (m, m):
        return pos_embed
    dtype = pos_embed.dtype
    prefix = pos_embed[:, :num_prefix_tokens].float()  # (1, P, E)
    patches = rearrange(pos_embed[:, num_prefix_tokens:].float(), "o (m1 m2) e -> o e m1 m2", m1=m, m2=m)
    patches = F.interpolate(
        patches,
        scale_factor=((h + offset) / m, (w + offset) / m),
        mode="bicubic",
        antialias=False,
        align_corners=False,
    )  # (1, E, h, w)
    if tuple(patches.shape[-2:]) != (h, w):
        raise ValueError(
            f"resize_pos_embed_dinov2: a {m}x{m} grid scaled by ({h} + {offset}) / {m} gives "
            f"{tuple(patches.shape[-2:])}, not ({h}, {w})"
        )
    patches = rearrange(patches, "o e h w -> o (h w) e")
    return torch.cat([prefix, patches], dim=1).to(dtype)
