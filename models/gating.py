"""BiT-Align's text gating of the egocentric features (IROS 2025).

Before the egocentric class maps, every position of the adapted features is scaled by how close it is to the
text feature of the affordance the sample is conditioned on: x · σ(s · cos(x, t)) + x, with s the model's
image-text logit scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum
from torch import nn

from models.heads import AttentionPoolOutput

__all__ = ["TextGate"]


class TextGate(nn.Module):
    """x · σ(s · cos(x, t)) + x on (b, D, h, w) features with one (b, D) text feature per sample."""

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, scale: torch.Tensor, pool: AttentionPoolOutput | None = None
    ) -> torch.Tensor:
        """Gate the features.

        Args:
            x: (b, D, h, w) adapted egocentric features.
            cond: (b, D) text features.
            scale: the (exponentiated) logit scale s.
            pool: AttentionPool2d's output (unused by this rule).

        Returns:
            (b, D, h, w) gated features.
        """
        cos = einsum(F.normalize(x, dim=1), F.normalize(cond.to(x.dtype), dim=-1), "b d h w, b d -> b h w")
        gate = torch.sigmoid(scale.to(cos.dtype) * cos).unsqueeze(1)  # (b, 1, h, w)
        return x * gate + x
