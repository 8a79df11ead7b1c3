"""ViT tokens as a patch grid for the CAM methods: prefix and register tokens stripped, the grid read from the input."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from einops import rearrange
from torch import nn

__all__ = [
    "ViTReshapeTransform",
    "vit_reshape_transform",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------- ViT reshape transform
def _find_vit(model: nn.Module) -> nn.Module:
    """The (first) submodule with a ``patch_embed``: a timm ViT, inside our backbone or not."""
    for module in model.modules():
        if hasattr(module, "patch_embed") and isinstance(module.patch_embed, nn.Module):
            return module
    raise ValueError(
        f"no ViT found in {type(model).__name__}: expected a submodule with a `patch_embed` (timm VisionTransformer)"
    )


class ViTReshapeTransform:
    """Turn ViT tokens (B, T, D) into a grid (B, D, h, w), dropping the class and register tokens.

    The grid is read from the last input seen by ``patch_embed`` (a forward pre-hook records its size), so
    any input size works, with ``dynamic_img_size`` too; without a recorded size, a square token count is used.
    The hook stays until :meth:`remove` (or the end of a ``with`` block).

    Args:
        model: a timm ViT or any module containing one (our backbone, the grounder).
        num_prefix_tokens: tokens before the patches; default ``num_prefix_tokens`` of the model or the ViT.
    """

    def __init__(self, model: nn.Module, num_prefix_tokens: int | None = None) -> None:
        self.vit = _find_vit(model)
        if num_prefix_tokens is None:
            num_prefix_tokens = getattr(model, "num_prefix_tokens", getattr(self.vit, "num_prefix_tokens", None))
        if num_prefix_tokens is None:
            raise ValueError(
                f"{type(model).__name__} has no `num_prefix_tokens`; pass num_prefix_tokens= (1 for a class token, "
                f"1 + the number of registers with registers)"
            )
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.patch_embed = self.vit.patch_embed
        self.input_size: tuple[int, int] | None = None
        self._handle = self.patch_embed.register_forward_pre_hook(self._record)

    def _record(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            self.input_size = (int(x.shape[-2]), int(x.shape[-1]))

    def grid_size(self, num_patches: int) -> tuple[int, int]:
        """The (h, w) patch grid for ``num_patches`` tokens of the last recorded input."""
        if self.input_size is not None:
            if hasattr(self.patch_embed, "dynamic_feat_size"):
                h, w = self.patch_embed.dynamic_feat_size(self.input_size)
            else:
                ph, pw = _pair(getattr(self.patch_embed, "patch_size", None))
                h, w = self.input_size[0] // ph, self.input_size[1] // pw
            if h * w == num_patches:
                return int(h), int(w)
        side = math.isqrt(num_patches)
        if side * side == num_patches:
            return side, side
        raise ValueError(
            f"cannot lay {num_patches} patch tokens on a grid: the last input size {self.input_size} does not "
            f"match and the count is not square; check num_prefix_tokens ({self.num_prefix_tokens})"
        )

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) tokens -> (B, D, h, w) patch grid; a (B, D, h, w) or (B, h, w, D) grid passes through."""
        if tokens.dim() == 4:
            return tokens
        if tokens.dim() != 3:
            raise ValueError(f"ViT reshape: expected (B, T, D) tokens, got {tuple(tokens.shape)}")
        return self.patches_to_grid(tokens[:, self.num_prefix_tokens :])  # (B, D, h, w)

    def patches_to_grid(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, h*w, D) patch tokens without prefix, or the NHWC output of ``patch_embed`` -> (B, D, h, w)."""
        if patches.dim() == 4:
            if "NCHW" in str(getattr(self.patch_embed, "output_fmt", "NHWC")):
                return patches
            return rearrange(patches, "b h w d -> b d h w")
        h, w = self.grid_size(patches.shape[1])
        return rearrange(patches, "b (h w) d -> b d h w", h=h, w=w)

    def remove(self) -> None:
        """Remove the hook on ``patch_embed``."""
        self._handle.remove()

    def __enter__(self) -> ViTReshapeTransform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _pair(x: Any) -> tuple[int, int]:
    if x is None:
        raise ValueError("the patch embedding has no patch_size")
    return (int(x), int(x)) if isinstance(x, int) else (int(x[0]), int(x[1]))


def vit_reshape_transform(model: nn.Module, num_prefix_tokens: int | None = None) -> ViTReshapeTransform:
    """A reshape transform for ``pytorch_grad_cam`` on a ViT (see :class:`ViTReshapeTransform`).

    Never assumes 14x14: the prefix (class + register) tokens are stripped and the grid follows the input size.
    Call ``.remove()`` when done, or use it as a context manager; :func:`explain` does it for ``"vit"``.
    """
    return ViTReshapeTransform(model, num_prefix_tokens)
