"""Heatmaps of the features at any named module of a network."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from einops import reduce
from torch import nn

from utils.maps import normalize_minmax
from utils.viz.cam.methods import resolve_layer
from utils.viz.cam.vit import ViTReshapeTransform

__all__ = [
    "capture_features",
    "feature_heatmap",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ feature maps
def feature_heatmap(features: torch.Tensor, reduction: str = "l2_norm") -> torch.Tensor:
    """Reduce a feature map over channels to one heatmap per image, min-max normalised.

    Args:
        features: (B, K, h, w).
        reduction: ``l2_norm`` (feature magnitude), ``max`` or ``mean`` over the K channels.

    Returns:
        (B, h, w) float in [0, 1] (a constant map becomes all zeros).
    """
    if features.dim() != 4:
        raise ValueError(
            f"feature_heatmap: features must be (B, K, h, w), got {tuple(features.shape)}; convert ViT tokens "
            f"with vit_reshape_transform or capture_features"
        )
    f = features.float()
    if reduction == "l2_norm":
        heat = torch.linalg.vector_norm(f, dim=1)  # (B, h, w)
    elif reduction == "max":
        heat = reduce(f, "b k h w -> b h w", "max")
    elif reduction == "mean":
        heat = reduce(f, "b k h w -> b h w", "mean")
    else:
        raise ValueError(f"feature_heatmap: unknown reduction {reduction!r}; choose l2_norm, max or mean")
    return normalize_minmax(heat)


@contextlib.contextmanager
def capture_features(
    model: nn.Module, names: Sequence[str], detach: bool = True, tokens_to_grid: bool = True
) -> Iterator[dict[str, Any]]:
    """Record the outputs of named submodules during a forward pass.

    ViT token outputs (B, T, D) become patch grids (B, D, h, w) (prefix tokens stripped, grid from the input
    size) when the model contains a ViT and ``tokens_to_grid`` is set. Every hook is removed on exit, also when
    the block raises.

    Example::

        with capture_features(model, ["layer3", "layer4"]) as feats:
            model(images)
        heat = feature_heatmap(feats["layer4"])

    Args:
        model: the network.
        names: dotted submodule names (``model.named_modules()``; negative indices allowed).
        detach: store detached tensors (set False to keep the graph).
        tokens_to_grid: convert 3-d token outputs to grids.

    Yields:
        A dict name -> output, filled during the forward (the last call wins when a module runs twice).
    """
    modules = {name: resolve_layer(model, name) for name in names}
    has_vit = any(isinstance(getattr(m, "patch_embed", None), nn.Module) for m in model.modules())
    transform: ViTReshapeTransform | None = None
    store: dict[str, Any] = {}
    handles = []

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            value = output
            if isinstance(value, torch.Tensor):
                value = value.detach() if detach else value
                if transform is not None and module is transform.patch_embed:
                    # patch_embed has no prefix tokens: (B, h*w, D) or, with dynamic_img_size, NHWC (B, h, w, D).
                    value = transform.patches_to_grid(value)  # (B, D, h, w)
                elif transform is not None and value.dim() == 3:
                    value = transform(value)  # (B, D, h, w)
            store[name] = value

        return hook

    try:
        if tokens_to_grid and has_vit:
            transform = ViTReshapeTransform(model)
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield store
    finally:
        for handle in handles:
            handle.remove()
        if transform is not None:
            transform.remove()
