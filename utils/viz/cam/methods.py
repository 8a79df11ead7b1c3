"""CAM (Zhou et al., CVPR 2016) and the gradient / perturbation CAMs of the grad-cam package, behind one call."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import reduce
from torch import nn

from utils.maps import normalize_minmax
from utils.viz.cam.targets import AffordanceTarget, logits_of
from utils.viz.cam.vit import vit_reshape_transform

__all__ = [
    "CAM",
    "METHODS",
    "class_activation_map",
    "explain",
    "gap_scores",
    "method_class",
    "resolve_layer",
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


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
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
        self.fc = resolve_layer(model, fc)
        if not isinstance(self.fc, nn.Linear | nn.Conv2d):
            raise TypeError(f"CAM: fc must be nn.Linear or a 1x1 nn.Conv2d, got {type(self.fc).__name__}")
        _linear_weight(self.fc.weight)  # validates a conv head is 1x1
        self.target_layer = None if target_layer is None else resolve_layer(model, target_layer)
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
            logits = logits_of(self.model(images))
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

    layers = [resolve_layer(model, layer) for layer in target_layers]
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
                if len(cam_obj.activations_and_grads.activations) < len(layers):
                    raise RuntimeError(
                        f"explain: a target layer of {list(target_layers)} never ran in the forward pass, so there "
                        "is nothing to explain there (the grounder's backbone stops inside its last block when the "
                        "descriptors are the keys: only that block's norm1 and attn.qkv run); pick a layer that runs, "
                        "e.g. blocks.-1.norm1 or an earlier block"
                    ) from e
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
