"""Trainable heads on top of the frozen ViT: LOCATE's adapter and CAM heads, BiT-Align's attention pooling.

- :class:`AffordanceAdapter` (``aff_proj``): the residual pre-norm MLP that LOCATE (Li et al., CVPR 2023) puts on the
  patch descriptors, x + fc2(GELU(fc1(LayerNorm(x)))), D → 4D → D, shared by the exo- and egocentric views (BiT-Align's
  published code drops the residual). Its sub-module names (``norm``, ``fc1``, ``fc2``) are those of the published
  code, so its checkpoints load as they are.
- :func:`conv_bn_relu` (``aff_exo_proj``/``aff_ego_proj``): [3×3 conv, BatchNorm, ReLU] × 2, indexed like LOCATE's
  ``nn.Sequential`` (0, 1, 3, 4); the kernel sizes are an option (ours: 1×1 scores each patch by its own look).
- :class:`GlobalAveragePool`: class activation maps (the 1×1 conv ``aff_fc`` makes them) to logits, LOCATE's GAP.
- :class:`AttentionPool2d`: CLIP's attention pooling (Radford et al., 2021) as BiT-Align uses it: the mean token is
  prepended as the query, a learned position embedding (interpolated to the grid) is added, and multi-head attention
  returns the pooled feature, the attended patch tokens and the mean query's attention over the patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import einsum, rearrange
from timm.layers import resample_abs_pos_embed
from torch import nn

__all__ = ["AffordanceAdapter", "AttentionPool2d", "AttentionPoolOutput", "GlobalAveragePool", "conv_bn_relu"]


class AffordanceAdapter(nn.Module):
    """LOCATE's ``aff_proj``: a residual pre-norm MLP on patch descriptors, x + fc2(GELU(fc1(norm(x)))).

    Args:
        dim: descriptor width D.
        hidden_ratio: hidden width as a multiple of D (LOCATE: 4).
        norm: apply a LayerNorm before the MLP (LOCATE does; False gives a plain MLP).
        residual: add the input to the MLP's output (LOCATE does; BiT-Align's published code does not).
    """

    def __init__(self, dim: int, hidden_ratio: int = 4, norm: bool = True, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        hidden = int(dim * hidden_ratio)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the adapter to tokens (..., D); returns the same shape."""
        out = self.fc2(self.act(self.fc1(self.norm(x))))
        return x + out if self.residual else out

    def forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the adapter to a channel-first grid (B, D, h, w); returns (B, D, h, w)."""
        h, w = x.shape[-2:]
        tokens = rearrange(x, "b d h w -> b (h w) d")
        return rearrange(self(tokens), "b (h w) d -> b d h w", h=h, w=w)


def conv_bn_relu(dim: int, kernel_sizes: tuple[int, ...] | list[int] = (3, 3)) -> nn.Sequential:
    """LOCATE's ``aff_exo_proj``/``aff_ego_proj``: one [k×k conv ('same' padding), BatchNorm, ReLU] per kernel size.

    LOCATE uses (3, 3). Smaller kernels (ours, an option) shrink how far around a patch its class scores look: with
    (1, 1) each patch is scored by its own descriptor only, so a part is recognised by its look and not by the
    object shape around it; (3, 1) sees one patch around.
    """
    if not kernel_sizes or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
        raise ValueError(f"conv_bn_relu: kernel sizes must be positive odd numbers, got {list(kernel_sizes)}")
    layers: list[nn.Module] = []
    for k in kernel_sizes:
        conv = nn.Conv2d(dim, dim, kernel_size=k, padding=k // 2)
        layers += [conv, nn.BatchNorm2d(dim), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class GlobalAveragePool(nn.Module):
    """LOCATE's logits: the spatial mean of every class activation map, (..., C, h, w) -> (..., C)."""

    def forward(self, cam: torch.Tensor) -> torch.Tensor:
        return cam.mean(dim=(-2, -1))


@dataclass
class AttentionPoolOutput:
    """What :class:`AttentionPool2d` returns.

    Attributes:
        pooled: (B, D_out) the mean-token query's output (the image feature).
        tokens: (B, D_out, h, w) the attended patch tokens.
        attn: (B, h, w) the mean-token query's attention over the patches, averaged over heads (the prefix column is
            dropped after the softmax, so a row sums to less than one).
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    attn: torch.Tensor


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling over a patch grid (Radford et al., 2021; used by BiT-Align).

    The parameter names (``positional_embedding``, ``q_proj``, ``k_proj``, ``v_proj``, ``c_proj``) follow CLIP's.

    Args:
        dim: input width D.
        num_heads: attention heads (D must be divisible by it).
        grid_size: (h, w) grid the position embedding is stored for; other grids are served by bicubic interpolation.
        out_dim: output width (default D).
    """

    def __init__(self, dim: int, num_heads: int, grid_size: tuple[int, int] = (14, 14), out_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"AttentionPool2d: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.positional_embedding = nn.Parameter(torch.randn(self.grid_size[0] * self.grid_size[1] + 1, dim) / dim**0.5)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, out_dim or dim)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Position embedding (1 + h*w, D) for an (h, w) grid."""
        if (h, w) == self.grid_size:
            return self.positional_embedding
        pe = resample_abs_pos_embed(
            self.positional_embedding.unsqueeze(0), new_size=[h, w], old_size=list(self.grid_size), num_prefix_tokens=1
        )
        return pe.squeeze(0)

    def forward(self, x: torch.Tensor) -> AttentionPoolOutput:
        """Pool a grid of features.

        Args:
            x: (B, D, h, w) features.

        Returns:
            An :class:`AttentionPoolOutput`.
        """
        h, w = x.shape[-2:]
        tokens = rearrange(x, "b d h w -> b (h w) d")
        seq = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # (B, 1 + hw, D)
        seq = seq + self._pos_embed(h, w).to(seq.dtype)
        q = rearrange(self.q_proj(seq), "b t (nh dh) -> b nh t dh", nh=self.num_heads)
        k = rearrange(self.k_proj(seq), "b t (nh dh) -> b nh t dh", nh=self.num_heads)
        v = rearrange(self.v_proj(seq), "b t (nh dh) -> b nh t dh", nh=self.num_heads)
        scale = q.shape[-1] ** -0.5
        attn = einsum(q * scale, k, "b nh t dh, b nh s dh -> b nh t s").softmax(dim=-1)  # (B, nh, T, T)
        out = einsum(attn, v, "b nh t s, b nh s dh -> b nh t dh")
        out = self.c_proj(rearrange(out, "b nh t dh -> b t (nh dh)"))  # (B, T, D_out)
        mean_query = attn[:, :, 0, 1:].mean(dim=1)  # (B, hw)
        return AttentionPoolOutput(
            pooled=out[:, 0],
            tokens=rearrange(out[:, 1:], "b (h w) d -> b d h w", h=h, w=w),
            attn=rearrange(mean_query, "b (h w) -> b h w", h=h, w=w),
        )
