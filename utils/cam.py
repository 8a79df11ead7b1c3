"""Class activation maps: what a classifier (or our grounder) looks at, for any layer of a CNN or a ViT.

- :func:`class_activation_map` and :class:`CAM`: the original CAM of Zhou et al., "Learning Deep Features for
  Discriminative Localization", CVPR 2016. For a network that ends in global average pooling (GAP) and a linear
  classifier, ``CAM_c(x, y) = sum_k w_k^c f_k(x, y)`` and the class score is ``mean_xy CAM_c(x, y) + b_c``. Our
  grounder's ``ego_pred`` is exactly this map for ``aff_fc`` (SPEC §3).
- :func:`explain` and :data:`METHODS`: gradient and perturbation CAMs (Grad-CAM, Grad-CAM++, Score-CAM, XGrad-CAM,
  Eigen-CAM, Layer-CAM, HiResCAM) from the ``grad-cam`` package (``pytorch_grad_cam``); they are not re-implemented
  here. :func:`vit_reshape_transform` turns ViT tokens into a grid for them without hard-coding 14x14: it strips
  ``num_prefix_tokens`` (class and register tokens) and reads the grid from the actual input size.
- :class:`AffordanceTarget` ("what to explain") and :class:`GrounderForCAM` (our model as an image classifier).
- :func:`feature_heatmap` and :func:`capture_features`: heatmaps of the features at any named module.
- :func:`cam_to_boxes` and :func:`box_iou`: weakly supervised localisation boxes from a map.
- ``python -m utils.cam``: a side-by-side picture of several methods for one image (see :func:`main`).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import inspect
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from utils.maps import normalize_minmax

__all__ = [
    "CAM",
    "METHODS",
    "AffordanceTarget",
    "GrounderForCAM",
    "ViTReshapeTransform",
    "box_iou",
    "cam_to_boxes",
    "capture_features",
    "class_activation_map",
    "explain",
    "feature_heatmap",
    "gap_scores",
    "main",
    "method_class",
    "vit_reshape_transform",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------------ CAM
def _linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """Accept a linear weight (C, K) or a 1x1 convolution weight (C, K, 1, 1); return (C, K)."""
    if weight.dim() == 4:
        if weight.shape[-2:] != (1, 1):
            raise ValueError(
                f"class_activation_map: a convolution classifier must be 1x1, got a weight of shape "
                f"{tuple(weight.shape)}; CAM is defined for GAP followed by a linear (or 1x1 conv) layer"
            )
        return weight[:, :, 0, 0]  # (C, K)
    if weight.dim() != 2:
        raise ValueError(f"class_activation_map: weight must be (C, K) or (C, K, 1, 1), got {tuple(weight.shape)}")
    return weight


def class_activation_map(
    features: torch.Tensor,
    weight: torch.Tensor,
    classes: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class activation maps (Zhou et al., CVPR 2016): ``CAM_c(x, y) = sum_k w_k^c f_k(x, y)``.

    Because GAP and the linear layer commute, the spatial mean of ``CAM_c`` is the class score. With ``bias``
    the bias of each class is added to every location, so that the mean equals the score *including* the bias.

    Args:
        features: (B, K, h, w) last feature maps before GAP.
        weight: (C, K) classifier weight, or a (C, K, 1, 1) 1x1 convolution weight.
        classes: (B,) long, the class to explain for each sample.
        bias: optional (C,) classifier bias.

    Returns:
        (B, h, w) raw (un-normalised) maps, in the dtype of ``features``.
    """
    if features.dim() != 4:
        raise ValueError(f"class_activation_map: features must be (B, K, h, w), got {tuple(features.shape)}")
    w = _linear_weight(weight)
    if w.shape[1] != features.shape[1]:
        raise ValueError(
            f"class_activation_map: the classifier takes {w.shape[1]} channels but the features have "
            f"{features.shape[1]}; hook the layer whose output is pooled into this classifier"
        )
    classes = torch.as_tensor(classes, device=features.device).long().reshape(-1)
    if classes.numel() != features.shape[0]:
        raise ValueError(f"class_activation_map: {classes.numel()} classes for a batch of {features.shape[0]}")
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= w.shape[0]):
        raise ValueError(f"class_activation_map: class indices must be in [0, {w.shape[0]}), got {classes.tolist()}")
    w_b = w.to(features.dtype)[classes]  # (B, K)
    cam = torch.einsum("bkhw,bk->bhw", features, w_b)  # (B, h, w)
    if bias is not None:
        cam = cam + bias.to(features.dtype)[classes][:, None, None]  # (B, h, w)
    return cam


def gap_scores(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Class scores of a GAP + linear head: ``s_c = sum_k w_k^c mean_xy f_k(x, y) (+ b_c)``.

    Args:
        features: (B, K, h, w).
        weight: (C, K) or (C, K, 1, 1).
        bias: optional (C,).

    Returns:
        (B, C) scores.
    """
    pooled = reduce(features, "b k h w -> b k", "mean")
    scores = pooled @ _linear_weight(weight).to(features.dtype).t()  # (B, C)
    return scores if bias is None else scores + bias.to(features.dtype)


def _resolve(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    """A submodule by dotted name (negative indices allowed, e.g. ``blocks.-1.norm1``) or the module itself."""
    if isinstance(layer, nn.Module):
        return layer
    module = model
    for part in [p for p in layer.split(".") if p]:
        if part.lstrip("-").isdigit() and isinstance(module, nn.Sequential | nn.ModuleList):
            if not -len(module) <= int(part) < len(module):
                raise _no_such_module(model, layer)
            module = module[int(part)]
        elif isinstance(getattr(module, part, None), nn.Module):
            module = getattr(module, part)
        else:
            raise _no_such_module(model, layer)
    return module


def _no_such_module(model: nn.Module, layer: str) -> ValueError:
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.4)
    return ValueError(
        f"no submodule named {layer!r} in {type(model).__name__}; "
        f"{'did you mean ' + ', '.join(close) + '? ' if close else ''}"
        f"list them with [n for n, _ in model.named_modules()]"
    )


def _logits_of(output: Any) -> torch.Tensor:
    """The class scores in a model output: a tensor, or a dict with ``logits`` / ``logits_ego``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        for key in ("logits", "logits_ego"):
            if key in output:
                return output[key]
        raise KeyError(f"the model output dict has no 'logits' or 'logits_ego' key (keys: {sorted(output)})")
    raise TypeError(f"expected the model to return logits (a tensor or a dict), got {type(output).__name__}")


class CAM:
    """Class activation maps (Zhou et al., CVPR 2016) for any network ending in GAP and a linear/1x1-conv head.

    ``CAM_c = sum_k w_k^c f_k``, with ``f`` the output of ``target_layer`` (or, when it is None, the input of
    ``fc``, which must then be a (B, K, h, w) map as for our ``aff_fc``) and ``w`` the weight of ``fc``. Hooks
    live only during :meth:`__call__`.

    Examples:
        ``CAM(torchvision.models.resnet18(), target_layer="layer4", fc="fc")``, the same for a timm ResNet,
        and ``CAM(GrounderForCAM(grounder), target_layer=None, fc="grounder.aff_fc")`` for our model.

    Args:
        model: the network; called as ``model(images)`` and returning logits (or a dict with ``logits``).
        target_layer: name or module whose output is pooled into ``fc``; None to hook the input of ``fc``.
        fc: name or module of the classifier (``nn.Linear`` or 1x1 ``nn.Conv2d``).
        use_bias: add the classifier bias to the maps (then ``map.mean() == logit``).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | nn.Module | None = "layer4",
        fc: str | nn.Module = "fc",
        use_bias: bool = True,
    ) -> None:
        self.model = model
        self.fc = _resolve(model, fc)
        if not isinstance(self.fc, nn.Linear | nn.Conv2d):
            raise TypeError(f"CAM: fc must be nn.Linear or a 1x1 nn.Conv2d, got {type(self.fc).__name__}")
        _linear_weight(self.fc.weight)  # validates a conv head is 1x1
        self.target_layer = None if target_layer is None else _resolve(model, target_layer)
        self.use_bias = use_bias
        self.last_logits: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, classes: torch.Tensor | Sequence[int] | int | None = None) -> torch.Tensor:
        """Compute raw CAMs.

        Args:
            images: (B, 3, H, W) model input.
            classes: (B,) classes to explain, one int for all, or None for each sample's predicted class.

        Returns:
            (B, h, w) raw maps at the feature resolution; ``self.last_logits`` holds the (B, C) model output.
        """
        captured: list[torch.Tensor] = []
        if self.target_layer is None:
            handle = self.fc.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        else:
            handle = self.target_layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            logits = _logits_of(self.model(images))
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError("CAM: the hooked layer did not run during the forward pass; check target_layer/fc")
        features = captured[-1]  # a shared head (exo and ego) runs twice: the last call is the one explained
        if not isinstance(features, torch.Tensor) or features.dim() != 4:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(
                f"CAM: the hooked features must be (B, K, h, w), got {shape}; for a ViT use explain() with "
                f"reshape_transform='vit', CAM needs a GAP + linear head on a feature grid"
            )
        self.last_logits = logits
        if classes is None:
            classes = logits.argmax(dim=-1)
        elif isinstance(classes, int):
            classes = torch.full((features.shape[0],), classes, dtype=torch.long)
        bias = self.fc.bias if self.use_bias else None
        return class_activation_map(features, self.fc.weight, torch.as_tensor(classes), bias)


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


# ----------------------------------------------------------------------------------------------------- targets
class AffordanceTarget:
    """A ``pytorch_grad_cam`` target: the score of one class (pre-softmax logit).

    Called on one sample's model output: logits (C,), a batch (B, C), or a dict with ``logits`` /
    ``logits_ego``.

    Args:
        class_index: the affordance (class) index to explain.
    """

    def __init__(self, class_index: int) -> None:
        self.class_index = int(class_index)

    def __call__(self, output: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        logits = _logits_of(output)
        if not 0 <= self.class_index < logits.shape[-1]:
            raise IndexError(f"AffordanceTarget: class {self.class_index} outside [0, {logits.shape[-1]})")
        return logits[..., self.class_index]

    def __repr__(self) -> str:
        return f"AffordanceTarget({self.class_index})"


class GrounderForCAM(nn.Module):
    """Our grounder as an image classifier ``images (b, 3, H, W) -> ego logits (b, C)`` for ``pytorch_grad_cam``.

    It calls ``Grounder.predict(images, labels)["logits"]`` with autograd on: a ``torch.no_grad`` decorator on
    ``predict`` is bypassed (``inspect.unwrap``), because gradient CAMs need gradients. Layers of a frozen
    backbone still get gradients since :func:`explain` makes the input require them.

    Args:
        grounder: a ``models.grounder.Grounder``.
        labels: passed to ``predict`` (text-gated models use the label's text feature); None for label-free.
    """

    def __init__(self, grounder: nn.Module, labels: torch.Tensor | list[str] | None = None) -> None:
        super().__init__()
        self.grounder = grounder
        self.labels = labels
        self.num_prefix_tokens = getattr(getattr(grounder, "backbone", grounder), "num_prefix_tokens", None)

    def _labels_for(self, batch: int) -> torch.Tensor | list | None:
        labels = self.labels
        if labels is None:
            return None
        items = labels.reshape(-1).tolist() if isinstance(labels, torch.Tensor) else list(labels)
        if len(items) == batch:
            return labels
        # Score-CAM feeds batches of masked copies of one image: one shared label can follow them.
        if len(set(items)) == 1:
            return labels.reshape(-1)[:1].expand(batch) if isinstance(labels, torch.Tensor) else items[:1] * batch
        raise ValueError(
            f"GrounderForCAM: {len(items)} labels for a batch of {batch}; give one label per image, or one label "
            f"shared by all (Score-CAM runs batches of masked copies of a single image)"
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        predict = inspect.unwrap(type(self.grounder).predict)
        labels = self._labels_for(images.shape[0])
        with torch.enable_grad():
            out = predict(self.grounder, images, labels) if labels is not None else predict(self.grounder, images)
        logits = out["logits"]
        if torch.is_grad_enabled() and not logits.requires_grad and images.requires_grad:
            raise RuntimeError(
                "GrounderForCAM: Grounder.predict returned logits without a gradient (it runs under no_grad or "
                "inference_mode inside); gradient CAMs need predict's body to keep autograd, use method 'cam' "
                "or 'eigencam' instead"
            )
        return logits  # (b, C)


# ------------------------------------------------------------------------------------------- gradient methods
METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcampp": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
    "scorecam": "ScoreCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
}
"""CAM methods by name -> class name in ``pytorch_grad_cam`` (see :func:`method_class`); :func:`explain` also takes
``"cam"`` (our :class:`CAM`). Class names rather than classes because importing grad-cam costs seconds."""

_GRADIENT_METHODS = frozenset({"gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigengradcam"})


def method_class(name: str) -> type:
    """The ``pytorch_grad_cam`` class of a method of :data:`METHODS`."""
    if name not in METHODS:
        raise ValueError(f"unknown CAM method {name!r}; choose one of {sorted([*METHODS, 'cam'])}")
    import pytorch_grad_cam  # imported lazily: it pulls in matplotlib and scipy

    return getattr(pytorch_grad_cam, METHODS[name])


def _targets_for(targets: Any, batch: int) -> list[Callable] | None:
    if targets is None:
        return None
    if isinstance(targets, int | np.integer):
        return [AffordanceTarget(int(targets))] * batch
    if isinstance(targets, torch.Tensor):
        targets = targets.reshape(-1).tolist()
    out = [AffordanceTarget(int(t)) if isinstance(t, int | np.integer) else t for t in targets]
    if len(out) != batch:
        raise ValueError(f"explain: {len(out)} targets for a batch of {batch}; give one per image (or one int)")
    return out


def explain(
    model: nn.Module,
    images: torch.Tensor,
    method: str,
    target_layers: Sequence[str | nn.Module | None],
    targets: Any = None,
    reshape_transform: Callable | str | None = None,
    fc: str | nn.Module = "fc",
) -> np.ndarray:
    """Explain a classifier's decision with a CAM method, at the input resolution.

    Args:
        model: the network, ``model(images) -> (B, C)`` logits (wrap our grounder in :class:`GrounderForCAM`).
        images: (B, 3, H, W) input.
        method: a key of :data:`METHODS` (``gradcam``, ``gradcampp``, ``scorecam``, ...) or ``"cam"``.
        target_layers: names or modules; for a ViT usually ``blocks.-1.norm1`` with ``reshape_transform="vit"``.
            ``"cam"`` uses the first one (None there means the input of ``fc``).
        targets: None (each image's predicted class), one class index, a (B,) list/tensor of indices, or
            callables such as :class:`AffordanceTarget`.
        reshape_transform: a callable (tokens -> grid), ``"vit"`` to build :func:`vit_reshape_transform` for
            this call, or None for CNN feature maps.
        fc: the classifier of ``"cam"``.

    Returns:
        (B, H, W) float32 maps, each min-max normalised to [0, 1]. The gradient methods apply a ReLU first, as
        their papers do; ``"cam"`` is min-max normalised raw (negative evidence is shown as low values).

    Note:
        ``pytorch_grad_cam`` puts the model in eval mode and zeroes its gradients; the previous train/eval mode
        is restored here.
    """
    if images.dim() != 4:
        raise ValueError(f"explain: images must be (B, 3, H, W), got {tuple(images.shape)}")
    method = method.lower()
    if method != "cam" and method not in METHODS:
        raise ValueError(f"explain: unknown method {method!r}; choose one of {sorted([*METHODS, 'cam'])}")
    if not target_layers:
        raise ValueError("explain: give at least one target layer")
    out_hw = images.shape[-2:]

    if method == "cam":
        layer = target_layers[0]
        cams = CAM(model, target_layer=layer, fc=fc)(images, _class_indices(targets, images.shape[0]))
        if reshape_transform is not None:
            logger.debug("explain: reshape_transform is not used by 'cam'")
        cams = F.interpolate(cams[:, None].float(), size=out_hw, mode="bilinear", align_corners=False)[:, 0]
        return normalize_minmax(cams).cpu().numpy().astype(np.float32)  # (B, H, W)

    layers = [_resolve(model, layer) for layer in target_layers]
    own_transform = isinstance(reshape_transform, str)
    if own_transform:
        if reshape_transform != "vit":
            raise ValueError(f"explain: reshape_transform must be a callable, 'vit' or None, got {reshape_transform!r}")
        reshape_transform = vit_reshape_transform(model)
    was_training = model.training
    device = next(model.parameters()).device
    # A frozen backbone's activations need an input that requires grad to get gradients (and hooks) at all.
    x = images.detach().to(device).clone().requires_grad_(method in _GRADIENT_METHODS)
    cam_obj = method_class(method)(model=model, target_layers=layers, reshape_transform=reshape_transform)
    try:
        with torch.enable_grad():
            try:
                result = cam_obj(input_tensor=x, targets=_targets_for(targets, images.shape[0]))
            except (TypeError, IndexError, AttributeError) as e:
                if method in _GRADIENT_METHODS and not cam_obj.activations_and_grads.gradients:
                    raise RuntimeError(
                        f"explain: no gradient reached the target layers {list(target_layers)} (they run under "
                        f"no_grad, e.g. a frozen backbone of the grounder); pick a layer after it (aff_proj, "
                        f"aff_ego_proj) or a gradient-free method (scorecam, eigencam, cam)"
                    ) from e
                raise
    finally:
        # Not grad-cam's context manager: its __exit__ swallows IndexError (and prints).
        cam_obj.activations_and_grads.release()
        if own_transform:
            reshape_transform.remove()
        model.train(was_training)
    return np.nan_to_num(np.asarray(result, dtype=np.float32))  # (B, H, W)


def _class_indices(targets: Any, batch: int) -> torch.Tensor | None:
    if targets is None:
        return None
    if isinstance(targets, int | np.integer):
        return torch.full((batch,), int(targets), dtype=torch.long)
    if isinstance(targets, torch.Tensor):
        return targets.reshape(-1).long()
    return torch.tensor([t.class_index if isinstance(t, AffordanceTarget) else int(t) for t in targets])


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
    modules = {name: _resolve(model, name) for name in names}
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


# ------------------------------------------------------------------------------------------ boxes (WSOL style)
def cam_to_boxes(
    cam: np.ndarray | torch.Tensor, threshold: float = 0.5, max_boxes: int = 1
) -> list[tuple[int, int, int, int]]:
    """Boxes around the connected regions of a map above ``threshold`` times its maximum, largest first.

    Args:
        cam: (H, W) map (any non-negative scale).
        threshold: fraction of the map's maximum that a pixel must reach (>=).
        max_boxes: how many boxes to return at most.

    Returns:
        Up to ``max_boxes`` boxes ``(x0, y0, x1, y1)`` in pixel-edge coordinates (``x1``/``y1`` exclusive), ordered
        by component area (largest first); empty for a map whose maximum is not positive.
    """
    arr = cam.detach().cpu().float().numpy() if isinstance(cam, torch.Tensor) else np.asarray(cam, np.float32)
    if arr.ndim != 2:
        raise ValueError(f"cam_to_boxes: cam must be (H, W), got {arr.shape}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"cam_to_boxes: threshold is a fraction of the maximum in [0, 1], got {threshold}")
    peak = float(np.nanmax(arr)) if arr.size else 0.0
    if not peak > 0.0:
        return []
    mask = (arr >= threshold * peak).astype(np.uint8)  # (H, W)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    comps = sorted(range(1, n), key=lambda i: -int(stats[i, cv2.CC_STAT_AREA]))  # label 0 is the background
    boxes = []
    for i in comps[:max_boxes]:
        x, y = int(stats[i, cv2.CC_STAT_LEFT]), int(stats[i, cv2.CC_STAT_TOP])
        boxes.append((x, y, x + int(stats[i, cv2.CC_STAT_WIDTH]), y + int(stats[i, cv2.CC_STAT_HEIGHT])))
    return boxes


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when both are empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


# --------------------------------------------------------------------------------------------------------- CLI
_TV_ARCHS = ("resnet18", "resnet34", "resnet50")


def _build_classifier(arch: str, weights: str | None, num_classes: int, image_size: int) -> nn.Module:
    """A torchvision ResNet or any timm model, with random weights unless a state-dict file is given."""
    if arch in _TV_ARCHS:
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    else:
        import timm

        kwargs: dict[str, Any] = {"num_classes": num_classes}
        if "vit" in arch or "deit" in arch:
            kwargs.update(img_size=image_size, dynamic_img_size=True)
        model = timm.create_model(arch, pretrained=False, **kwargs)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"--weights: no such file {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
            state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            logger.warning("weights %s: %d missing, %d unexpected keys", path, len(missing), len(unexpected))
    return model.eval()


def _default_layer(model: nn.Module) -> str:
    if hasattr(model, "layer4"):
        return "layer4"
    if hasattr(model, "blocks"):
        return "blocks.-1.norm1"
    raise ValueError("no default target layer for this model: pass --layer NAME")


def _read_image(path: str | Path, size: int) -> tuple[np.ndarray, torch.Tensor]:
    """Read an image as (uint8 RGB at size x size, (1, 3, size, size) ImageNet-normalised tensor)."""
    from datasets.images import denormalize, read_image, to_tensor

    tensor = to_tensor(read_image(path), size)  # (3, S, S)
    return denormalize(tensor), tensor[None]


_METHOD_TITLES = {
    "cam": "CAM",
    "gradcam": "Grad-CAM",
    "gradcampp": "Grad-CAM++",
    "scorecam": "Score-CAM",
    "xgradcam": "XGrad-CAM",
    "layercam": "Layer-CAM",
    "eigencam": "Eigen-CAM",
    "hirescam": "HiResCAM",
    "eigengradcam": "EigenGrad-CAM",
}


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m utils.cam",
        description="Write a side-by-side picture of CAM methods for one image, for a torchvision/timm classifier "
        "or (with --checkpoint) a panel of every internal map of our grounder.",
    )
    p.add_argument("--image", required=True, help="image file to explain")
    p.add_argument("--out", required=True, help="PNG to write (folders are created)")
    p.add_argument(
        "--arch",
        default="resnet18",
        help="resnet18|resnet34|resnet50 (torchvision) or any timm name, e.g. vit_small_patch16_224 (default resnet18)",
    )
    p.add_argument("--weights", default=None, help="state-dict file (.pth/.safetensors); random weights without it")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier width (1000 for ImageNet weights)")
    p.add_argument(
        "--methods",
        default="cam,gradcam,gradcampp,scorecam",
        help=f"comma-separated, from {','.join(_METHOD_TITLES)} (default cam,gradcam,gradcampp,scorecam)",
    )
    p.add_argument("--layer", default=None, help="target layer name (default layer4 for ResNets, blocks.-1.norm1)")
    p.add_argument("--class-index", type=int, default=None, help="class to explain (default: the predicted one)")
    p.add_argument("--image-size", type=int, default=224, help="input side length (default 224)")
    p.add_argument("--colormap", default="jet", help="colour map name (default jet)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--checkpoint", default=None, help="our grounder's checkpoint: draw its panel instead")
    p.add_argument("--affordance", default=None, help="with --checkpoint: the affordance name to ground")
    p.add_argument(
        "--exo",
        nargs="+",
        default=None,
        metavar="IMAGE",
        help="with --checkpoint: exocentric images of the affordance (people using the object); the panel then also "
        "shows their gt_aff_cam and the part-prototype similarity maps with their scores",
    )
    return p


def _methods_picture(args: argparse.Namespace) -> np.ndarray:
    from utils.viz import add_label, append_colorbar, make_grid, overlay

    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in _METHOD_TITLES]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; choose from {sorted(_METHOD_TITLES)}")
    device = torch.device(args.device)
    model = _build_classifier(args.arch, args.weights, args.num_classes, args.image_size).to(device)
    rgb, x = _read_image(args.image, args.image_size)
    x = x.to(device)
    layer = args.layer or _default_layer(model)
    is_vit = hasattr(model, "patch_embed")
    with torch.no_grad():
        probs = torch.softmax(_logits_of(model(x)).float(), dim=-1)[0]
    cls = int(probs.argmax()) if args.class_index is None else args.class_index
    if not 0 <= cls < probs.numel():
        raise ValueError(f"--class-index {cls} outside [0, {probs.numel()})")

    tiles = [rgb]
    titles = ["input"]
    for method in methods:
        if method == "cam" and is_vit:
            raise ValueError("--methods cam needs a GAP + linear head on a feature grid (a CNN); drop it for a ViT")
        cam = explain(
            model,
            x,
            method,
            [layer] if method != "cam" else [args.layer or _default_layer(model)],
            targets=cls,
            reshape_transform="vit" if is_vit else None,
        )[0]
        tiles.append(overlay(rgb, cam, args.colormap))
        titles.append(_METHOD_TITLES[method])
    grid = make_grid([tiles], col_labels=titles)
    weights = f"weights {Path(args.weights).name}" if args.weights else "RANDOM weights (no --weights)"
    title = f"{args.arch} @ {layer}, class {cls} (p={float(probs[cls]):.2f}), {weights}"
    return add_label(append_colorbar(grid, args.colormap), title)


def _grounder_panel(args: argparse.Namespace) -> np.ndarray:
    from utils.checkpoint import build_model_from_checkpoint
    from utils.viz import model_panel

    if not args.affordance:
        raise ValueError("--checkpoint needs --affordance NAME (one of the model's class names)")
    model, cfg, class_names = build_model_from_checkpoint(args.checkpoint, device=args.device)
    if args.affordance not in class_names:
        raise ValueError(f"--affordance {args.affordance!r} is not a class of this checkpoint: {class_names}")
    _, x = _read_image(args.image, cfg.data.image_size)
    x = x.to(args.device)
    if not args.exo:
        out = model.predict(x, labels=[args.affordance])
        return model_panel(x[0], out, class_names, args.affordance, colormap=args.colormap)
    # With exocentric images, one forward pass as in training: the exo CAMs and the part prototypes join the panel.
    exo = torch.cat([_read_image(path, cfg.data.image_size)[1] for path in args.exo])  # (n, 3, S, S)
    label = torch.tensor([class_names.index(args.affordance)], device=x.device)
    model.eval()
    with torch.no_grad():
        out = model({"exo": exo[None].to(x.device), "ego": x, "label": label})  # exo (1, n, 3, S, S)
    return model_panel(x[0], out, class_names, args.affordance, exo=exo, colormap=args.colormap)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m utils.cam --image X --out out.png [--arch ...] [--methods ...]``."""
    args = _build_parser().parse_args(argv)
    if args.exo and not args.checkpoint:
        raise ValueError("--exo needs --checkpoint (exocentric images only enter our grounder's panel)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from utils.viz import save_png

    picture = _grounder_panel(args) if args.checkpoint else _methods_picture(args)
    path = save_png(args.out, picture)
    print(f"wrote {path} ({picture.shape[1]}x{picture.shape[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
