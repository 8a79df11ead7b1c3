"""Pictures: image conversion, map validation, colour maps, heatmap overlays and PNG output.

Every function returns (or takes) an RGB ``uint8`` array of shape (H, W, 3), the one picture format of this
repository; :func:`save_png` is the only place that converts to OpenCV's BGR. Images come in three forms and
:func:`to_uint8_image` accepts all of them: ``uint8`` (H, W, 3) RGB, float (H, W, 3) in [0, 1], or a torch
(3, H, W) ImageNet-normalised tensor (what the data loaders return), which is de-normalised.

Maps (CAMs, attention, masks) are 2-d float arrays or tensors in [0, 1]; they are validated, never silently
rescaled, so that a picture cannot hide a bug upstream. Normalise with :func:`utils.maps.normalize_minmax` first.
Labels, colour bars and grids are in :mod:`utils.viz.layout`.

Typical use (evaluation pictures, TensorBoard images)::

    from utils.viz.draw import overlay, save_png
    from utils.viz.layout import make_grid
    tiles = [[overlay(image, pred), overlay(image, gt)]]
    save_png("out/sample.png", make_grid(tiles, col_labels=["prediction", "ground truth"]))
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

__all__ = [
    "COLORMAPS",
    "Tile",
    "colorize",
    "overlay",
    "resize_image",
    "save_png",
    "to_uint8_image",
    "validate_cam",
]

logger = logging.getLogger(__name__)

# Same values as datasets.agd20k.IMAGENET_MEAN / IMAGENET_STD; repeated here so that the picture code
# imports nothing from the data package.
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "hot": cv2.COLORMAP_HOT,
    "parula": cv2.COLORMAP_PARULA,
    "bone": cv2.COLORMAP_BONE,
}
"""Colour maps by name; ``"gray"`` is also accepted and gives a grey ramp."""

_CAM_TOL = 1e-6  # float maps may overshoot [0, 1] by rounding; beyond this they were not normalised
Tile = np.ndarray


# --------------------------------------------------------------------------------------------------- conversions
def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"expected a numpy array or a torch tensor, got {type(x).__name__}")


def to_uint8_image(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Convert an image in any of the repository's formats to ``uint8`` (H, W, 3) RGB.

    Args:
        x: one of
            - numpy ``uint8`` (H, W, 3) RGB or (H, W) grey (returned as is / repeated to 3 channels);
            - numpy float (H, W, 3) or (H, W) in [0, 1];
            - torch (3, H, W) or (1, 3, H, W) float, ImageNet-normalised as the data loaders return it
              (de-normalised here), or a torch ``uint8`` (3, H, W).

    Returns:
        A new or the given ``uint8`` array of shape (H, W, 3).

    Raises:
        ValueError: for a shape or value range that is none of the above.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]  # (3, H, W)
        if t.dim() != 3 or t.shape[0] != 3:
            raise ValueError(
                f"to_uint8_image: a torch image must be (3, H, W) channels-first (ImageNet-normalised), got shape "
                f"{tuple(x.shape)}; for a batch pass one sample, e.g. images[0]"
            )
        if t.dtype == torch.uint8:
            return np.ascontiguousarray(t.permute(1, 2, 0).numpy())  # (H, W, 3)
        arr = t.float().permute(1, 2, 0).numpy()  # (H, W, 3)
        arr = arr * _IMAGENET_STD + _IMAGENET_MEAN
        return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    arr = _to_numpy(x)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)  # (H, W, 3)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        hint = " (channels-first numpy is not accepted: transpose to (H, W, 3))" if arr.ndim == 3 else ""
        raise ValueError(f"to_uint8_image: expected an (H, W, 3) RGB image, got shape {arr.shape}{hint}")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"to_uint8_image: expected uint8 or float in [0, 1], got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError("to_uint8_image: the float image holds NaN or inf values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -_CAM_TOL or hi > 1.0 + _CAM_TOL:
        raise ValueError(
            f"to_uint8_image: a float numpy image must lie in [0, 1], found [{lo:.4g}, {hi:.4g}]; divide 0..255 "
            f"images by 255, or pass the normalised torch (3, H, W) tensor to have it de-normalised"
        )
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def validate_cam(cam: np.ndarray | torch.Tensor, name: str = "cam") -> np.ndarray:
    """Check that a map is a finite 2-d array in [0, 1] and return it as float32 numpy (clipped to [0, 1]).

    Args:
        cam: (h, w) map, numpy or torch.
        name: how the map is called in the error message.

    Raises:
        ValueError: if it is not 2-d, holds NaN/inf, or leaves [0, 1] by more than 1e-6.
    """
    arr = _to_numpy(cam)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-d (h, w) map, got shape {tuple(arr.shape)}; select one sample and one class, "
            f"e.g. ego_pred[i, label]"
        )
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(arr.shape)})")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(arr)).sum())} NaN/inf values; it must be finite")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -_CAM_TOL or hi > 1.0 + _CAM_TOL:
        raise ValueError(
            f"{name} values must lie in [0, 1], found [{lo:.4g}, {hi:.4g}]; normalise it first, e.g. with "
            f"utils.maps.normalize_minmax"
        )
    return np.clip(arr, 0.0, 1.0)


def _colormap_id(colormap: str | int) -> int | None:
    if isinstance(colormap, int):
        return colormap
    key = colormap.lower()
    if key in ("gray", "grey"):
        return None
    if key not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {[*COLORMAPS, 'gray']}")
    return COLORMAPS[key]


def colorize(cam: np.ndarray | torch.Tensor, colormap: str | int = "jet") -> np.ndarray:
    """Colour a [0, 1] map with a colour map.

    Args:
        cam: (h, w) map in [0, 1] (validated as in :func:`validate_cam`).
        colormap: a name from :data:`COLORMAPS`, ``"gray"``, or an OpenCV ``COLORMAP_*`` constant.

    Returns:
        ``uint8`` (h, w, 3) RGB.
    """
    arr = validate_cam(cam)
    levels = (arr * 255.0 + 0.5).astype(np.uint8)  # (h, w)
    cmap = _colormap_id(colormap)
    if cmap is None:
        return np.repeat(levels[..., None], 3, axis=-1)  # (h, w, 3)
    return cv2.cvtColor(cv2.applyColorMap(levels, cmap), cv2.COLOR_BGR2RGB)


def resize_image(img: np.ndarray, size_hw: tuple[int, int], interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    h, w = size_hw
    if img.shape[:2] == (h, w):
        return img
    # INTER_AREA when shrinking avoids aliasing; bilinear (half-pixel centres, like align_corners=False) otherwise.
    if interpolation == cv2.INTER_LINEAR and h < img.shape[0] and w < img.shape[1]:
        interpolation = cv2.INTER_AREA
    return cv2.resize(img, (w, h), interpolation=interpolation)


def overlay(
    image: np.ndarray | torch.Tensor,
    cam: np.ndarray | torch.Tensor,
    colormap: str | int = "jet",
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend a coloured heatmap over an image.

    Args:
        image: the image in any format of :func:`to_uint8_image` (uint8/float HWC RGB, or a normalised
            torch (3, H, W) tensor).
        cam: (h, w) map in [0, 1], numpy or torch; resized (bilinear) to the image size.
        colormap: colour map name (see :func:`colorize`).
        alpha: weight of the heatmap; ``0`` gives the image, ``1`` the heatmap alone.

    Returns:
        ``uint8`` (H, W, 3) RGB.

    Raises:
        ValueError: for a map that is not 2-d, not finite or outside [0, 1], or ``alpha`` outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must be in [0, 1], got {alpha}")
    rgb = to_uint8_image(image)
    arr = validate_cam(cam)
    arr = np.clip(resize_image(arr, rgb.shape[:2], cv2.INTER_LINEAR), 0.0, 1.0)  # (H, W)
    heat = colorize(arr, colormap)
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * heat.astype(np.float32)
    return (out + 0.5).clip(0, 255).astype(np.uint8)


def save_png(path: str | Path, rgb: np.ndarray | torch.Tensor) -> Path:
    """Write an RGB picture to a PNG file, creating the parent folders.

    Args:
        path: destination (``.png`` is expected; other OpenCV extensions work too).
        rgb: picture in any format of :func:`to_uint8_image`.

    Returns:
        The path written.

    Raises:
        OSError: if OpenCV could not write the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(to_uint8_image(rgb), cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f"save_png: OpenCV could not write {path} (check the extension and that the folder is writable)")
    logger.debug("wrote %s", path)
    return path
