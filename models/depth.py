"""BiT-Align's depth prompt (IROS 2025): a depth map steers every block of the frozen ViT.

The depth map (b, 1, H, W), repeated to three channels, goes through the ViT's own RGB patch embedding, CLS token and
position embedding: that token sequence is the first prompt p_0. Before block i, a small module mixes the prompt with
the image tokens z,

    d_p = W_p · p,  d_z = W_z · z,  γ = σ(g)  (one gate logit per token),
    p_out = W_up · ( ½ (d_p + d_z) + ½ (γ d_p + (1 − γ) d_z) ),

adds p_out to the image tokens (CLS included) and hands p_out on as the next block's prompt. The down-projections map
D to int(D / 22) channels (17 for ViT-S); the gate has one logit per token of the grid it was built for (257 for a
16 × 16 grid plus CLS), so a prompt only fits inputs of that grid.

In the published code no gradient ever reaches these modules (the losses see the ViT only through detached
descriptors and a thresholded attention map), so they stay at their random initial values: a fixed random
perturbation of the backbone, saved in the checkpoint. They are frozen here for the same reason: training them would
need gradients through the frozen ViT, which neither implementation computes.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DepthPrompt", "DepthPromptBlock"]


class DepthPromptBlock(nn.Module):
    """One block's prompt generator (the published ``MultimodalPromptGeneration``).

    Parameter names against the published ones: ``down_rgb`` = ``mpg_down1`` (applied to the image tokens),
    ``down_prompt`` = ``mpg_down2`` (applied to the prompt), ``up`` = ``mpg_up``, ``gate`` = ``mpg_g``. The published
    module also holds an unused ``mpg_fc_layer``, which has no counterpart here.

    Args:
        dim: token width D.
        num_tokens: tokens per image (prefix tokens + h·w), the length of the gate.
        reduction: the hidden width is int(D / reduction) (published: 22).
    """

    def __init__(self, dim: int, num_tokens: int, reduction: float = 22) -> None:
        super().__init__()
        hidden = int(dim / reduction)
        if hidden < 1:
            raise ValueError(f"DepthPromptBlock: width {dim} / reduction {reduction} leaves no hidden channel")
        self.down_rgb = nn.Linear(dim, hidden)
        self.down_prompt = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        self.gate = nn.Parameter(torch.randn(num_tokens))
        for layer in (self.down_rgb, self.down_prompt, self.up):  # timm's ViT init, as the published model gets
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, tokens: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """The block's prompt output.

        Args:
            tokens: (B, T, D) the image tokens entering the block.
            prompt: (B, T, D) the previous block's prompt output (p_0: the embedded depth map).

        Returns:
            (B, T, D) p_out, added to the image tokens and passed on as the next prompt.
        """
        if tokens.shape[1] != self.gate.shape[0]:
            raise ValueError(
                f"DepthPromptBlock: the gate is built for {self.gate.shape[0]} tokens per image, the input has "
                f"{tokens.shape[1]}; the depth prompt only fits the input size it was built for (data.image_size)"
            )
        d_prompt = self.down_prompt(prompt)  # (B, T, d)
        d_rgb = self.down_rgb(tokens)  # (B, T, d)
        gamma = torch.sigmoid(self.gate).view(1, -1, 1).to(d_rgb.dtype)  # (1, T, 1)
        mixed = 0.5 * (d_prompt + d_rgb) + 0.5 * (gamma * d_prompt + (1.0 - gamma) * d_rgb)
        return self.up(mixed)


class DepthPrompt(nn.Module):
    """One :class:`DepthPromptBlock` per ViT block, frozen at its random initial values (see the module docstring).

    Args:
        dim: token width D.
        num_blocks: ViT blocks.
        num_tokens: tokens per image (prefix tokens + h·w of the training input grid).
        reduction: hidden width int(D / reduction).
    """

    def __init__(self, dim: int, num_blocks: int, num_tokens: int, reduction: float = 22) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(DepthPromptBlock(dim, num_tokens, reduction) for _ in range(num_blocks))
        self.requires_grad_(False)

    def forward(self, index: int, tokens: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """Block ``index``'s prompt output for (B, T, D) image tokens and prompt; returns (B, T, D)."""
        return self.blocks[index](tokens, prompt)
