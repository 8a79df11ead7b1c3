"""BiT-Align's text gating of the egocentric features (IROS 2025).

Before the egocentric class maps, every position of the adapted features x is scaled by a gate g and added back,
x · g + x. Two rules for g, picked by ``model.bitalign.gate``:

- :class:`TextGate` (``cosine``, the paper's description): g = σ(s · cos(x, t)), with t the text feature of the
  affordance the sample is conditioned on and s the image-text logit scale. A strong, class-specific gate.
- :class:`PooledTokenGate` (``published``, what BiT-Align's code computes): the AttentionPool2d *output* tokens are
  L2-normalised over the batch axis, dotted with the L2-normalised text feature, scaled by s, L2-normalised over the
  positions of each image, and passed through a sigmoid. The last normalisation cancels s and leaves a unit vector
  over h·w positions, so g stays within σ(±1) and in practice near σ(0) = 0.5 (about ±1/√(hw)): nearly a flat ×1.5.
  The first one couples the samples of a batch; with one image it reduces each channel to its sign.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum
from torch import nn

from models.heads import AttentionPoolOutput

__all__ = ["PooledTokenGate", "TextGate"]


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


class PooledTokenGate(TextGate):
    """BiT-Align's published gate: σ(normalise_hw(s · ⟨normalise_batch(T), t̂⟩)) from the pooled tokens T.

    The result depends on the batch: the same image gets another gate in another batch, and at batch size 1 the
    batch normalisation turns T into sign(T). The published test script runs batch 1.
    """

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, scale: torch.Tensor, pool: AttentionPoolOutput | None = None
    ) -> torch.Tensor:
        if pool is None:
            raise ValueError("PooledTokenGate needs the AttentionPool2d output (a text encoder builds one)")
        tokens = F.normalize(pool.tokens, dim=0)  # (b, D, h, w): each (position, channel) unit over the batch
        text = F.normalize(cond.to(tokens.dtype), dim=-1)  # (b, D)
        score = scale.to(tokens.dtype) * einsum(tokens, text, "b d h w, b d -> b h w")
        score = F.normalize(score.flatten(1), dim=1).view_as(score)  # unit vector over the h·w positions
        gate = torch.sigmoid(score).unsqueeze(1)  # (b, 1, h, w)
        return x * gate.to(x.dtype) + x
