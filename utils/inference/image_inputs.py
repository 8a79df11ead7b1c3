"""Image inputs of the Python API: what counts as one image, a batch or a list, and conversion to uint8 RGB.

:func:`as_rgb` turns a numpy array (grayscale, RGB or RGBA; uint8, uint16 or float in [0, 1]) or a PIL image into
the uint8 (H, W, 3) RGB array the predictor resizes and normalises, with an error that says what was expected for
anything else. :func:`as_image_list` splits what a caller passes to ``Predictor.predict`` (a path, an array, a PIL
image, a (3, H, W) tensor, a (B, ...) batch or a list of them) into a list of single images; torch tensors stay
tensors, since the predictor resizes them on the device.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

__all__ = ["as_image_list", "as_rgb"]


def as_rgb(image: Any) -> np.ndarray:
    """A numpy array or PIL image as uint8 RGB (H, W, 3).

    Accepts (H, W) grayscale, (H, W, 1|3|4) with uint8, uint16 or float values (float in [0, 1]); the alpha channel
    is dropped. Channels are taken as RGB: convert OpenCV's BGR first (``cv2.cvtColor(img, cv2.COLOR_BGR2RGB)``).

    Raises:
        TypeError: not an array or PIL image.
        ValueError: an unusable shape, dtype or value range (the message says what is expected).
    """
    if _is_pil(image):
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array or PIL image, got {type(image).__name__}")
    arr = image
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[..., :3] if arr.shape[2] == 4 else arr
    elif arr.ndim != 2:
        raise ValueError(
            f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}; channel-first arrays "
            "(3, H, W) should be passed as torch tensors or transposed with arr.transpose(1, 2, 0)"
        )
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = np.round(arr.astype(np.float32) / 257.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < -1e-3 or hi > 1 + 1e-3 or not np.isfinite([lo, hi]).all():
            raise ValueError(
                f"a float image must hold values in [0, 1], found [{lo:.3g}, {hi:.3g}]; pass uint8 (0-255) pixels or "
                "divide by 255"
            )
        arr = np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"unsupported pixel type {arr.dtype}; expected uint8, uint16 or float in [0, 1]")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if min(arr.shape[:2]) < 1:
        raise ValueError(f"an empty image of shape {image.shape}")
    return np.ascontiguousarray(arr)


def _is_pil(x: Any) -> bool:
    return type(x).__module__.startswith("PIL.") and hasattr(x, "convert")


def _is_single(x: Any) -> bool:
    """Whether ``x`` is one image (not a batch or list of images)."""
    if isinstance(x, str | os.PathLike) or _is_pil(x):
        return True
    if isinstance(x, np.ndarray):
        return x.ndim in (2, 3)
    if isinstance(x, torch.Tensor):
        return x.dim() == 3
    return False


def as_image_list(images: Any) -> list[Any]:
    """One image, a batch array/tensor, or a list of images -> a list of single images."""
    if _is_single(images):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return list(images.unbind(0))
    if isinstance(images, list | tuple):
        bad = [type(x).__name__ for x in images if not _is_single(x)]
        if bad:
            raise TypeError(
                f"expected each image to be a path, a numpy (H, W[, C]) array, a PIL image or a (C, H, W) tensor; "
                f"got {bad[:5]}"
            )
        return list(images)
    raise TypeError(
        f"expected an image (path, numpy array, PIL image, tensor), a (B, ...) batch or a list of images, got "
        f"{type(images).__name__}"
    )
