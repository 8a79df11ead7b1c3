"""Pictures: heatmap overlays, labelled grids, colour bars, and the panel of every internal map of the model.

Every function returns (or takes) an RGB ``uint8`` array of shape (H, W, 3), the one picture format of this
repository; :func:`save_png` is the only place that converts to OpenCV's BGR. Images come in three forms and
:func:`to_uint8_image` accepts all of them: ``uint8`` (H, W, 3) RGB, float (H, W, 3) in [0, 1], or a torch
(3, H, W) ImageNet-normalised tensor (what the data loaders return), which is de-normalised.

Maps (CAMs, attention, masks) are 2-d float arrays or tensors in [0, 1]; they are validated, never silently
rescaled, so that a picture cannot hide a bug upstream. Normalise with :func:`utils.maps.normalize_minmax` first.

Typical use (evaluation pictures, TensorBoard images)::

    from utils.viz.draw import overlay, add_label, make_grid, save_png
    tiles = [[overlay(image, pred), overlay(image, gt)]]
    save_png("out/sample.png", make_grid(tiles, col_labels=["prediction", "ground truth"]))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

__all__ = [
    "COLORMAPS",
    "Tile",
    "add_label",
    "append_colorbar",
    "colorbar",
    "colorize",
    "hstack",
    "make_grid",
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

_FONT = cv2.FONT_HERSHEY_SIMPLEX
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


# ------------------------------------------------------------------------------------------------------ labels
def _wrap(text: str, width: int, scale: float, thickness: int) -> list[str]:
    """Greedy word wrap to a pixel width; words that alone are too wide are cut and end in '..'."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split(" "):
            candidate = word if not current else f"{current} {word}"
            if cv2.getTextSize(candidate, _FONT, scale, thickness)[0][0] <= width or not current:
                current = candidate
            else:
                lines.append(current)
                current = word
        lines.append(current)
    fitted = []
    for line in lines:
        if cv2.getTextSize(line, _FONT, scale, thickness)[0][0] > width:
            while len(line) > 1 and cv2.getTextSize(line + "..", _FONT, scale, thickness)[0][0] > width:
                line = line[:-1]
            line += ".."
        fitted.append(line)
    return fitted


def _text_block(
    text: str,
    width: int,
    font_scale: float,
    color: tuple[int, int, int],
    background: tuple[int, int, int],
    min_scale: float = 0.35,
) -> np.ndarray:
    """Render centred text into an RGB block of the given width (height follows from the lines)."""
    thickness = 1
    scale = font_scale
    margin = 4
    # Shrink the font until every line fits on one row, down to min_scale; then wrap.
    while scale > min_scale and any(
        cv2.getTextSize(line, _FONT, scale, thickness)[0][0] > width - 2 * margin for line in text.split("\n")
    ):
        scale = max(min_scale, scale - 0.05)
    lines = _wrap(text, max(1, width - 2 * margin), scale, thickness)
    (_, text_h), baseline = cv2.getTextSize("Ag", _FONT, scale, thickness)
    line_h = text_h + baseline + 3
    block = np.empty((line_h * len(lines) + 2 * margin, width, 3), dtype=np.uint8)
    block[:] = background
    for i, line in enumerate(lines):
        line_w = cv2.getTextSize(line, _FONT, scale, thickness)[0][0]
        x = max(margin, (width - line_w) // 2)
        y = margin + i * line_h + text_h + 1
        cv2.putText(block, line, (x, y), _FONT, scale, color, thickness, cv2.LINE_AA)
    return block


def add_label(
    img: np.ndarray | torch.Tensor,
    text: str,
    font_scale: float = 0.5,
    color: tuple[int, int, int] = (0, 0, 0),
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Put a title bar above an image.

    The font shrinks (down to 0.35) for long titles and then wraps on spaces; ``\\n`` starts a new line.

    Args:
        img: image in any format of :func:`to_uint8_image`.
        text: the title.
        font_scale: OpenCV Hershey font scale (0.5 is about 11 px tall).
        color: RGB text colour.
        background: RGB colour of the bar.

    Returns:
        ``uint8`` (H + bar, W, 3) RGB.
    """
    rgb = to_uint8_image(img)
    bar = _text_block(text, rgb.shape[1], font_scale, color, background)
    return np.concatenate([bar, rgb], axis=0)  # (bar + H, W, 3)


def colorbar(
    height: int,
    colormap: str | int = "jet",
    labels: Sequence[str] = ("0", "1"),
    width: int = 16,
    font_scale: float = 0.45,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """A vertical colour bar, high values at the top, with tick labels to its right.

    Args:
        height: total height in pixels.
        colormap: colour map name (see :func:`colorize`).
        labels: tick labels from the bottom (value 0) to the top (value 1), evenly spaced; at least two.
        width: width of the coloured strip.
        font_scale: font scale of the labels.
        background: RGB background.

    Returns:
        ``uint8`` (height, W, 3) RGB, W wide enough for the labels.
    """
    if height < 8:
        raise ValueError(f"colorbar: height must be at least 8 pixels, got {height}")
    if len(labels) < 2:
        raise ValueError(f"colorbar: give at least two labels (bottom and top), got {list(labels)}")
    (_, text_h), _ = cv2.getTextSize("0", _FONT, font_scale, 1)
    pad = text_h // 2 + 5  # room for the half of the top and bottom labels that sticks out of the strip
    strip_h = max(2, height - 2 * pad)
    ramp = np.linspace(1.0, 0.0, strip_h, dtype=np.float32)[:, None].repeat(width, axis=1)  # (strip_h, width)
    label_w = max(cv2.getTextSize(str(t), _FONT, font_scale, 1)[0][0] for t in labels)
    out = np.empty((height, width + label_w + 10, 3), dtype=np.uint8)
    out[:] = background
    out[pad : pad + strip_h, 2 : 2 + width] = colorize(ramp, colormap)
    cv2.rectangle(out, (2, pad), (1 + width, pad + strip_h - 1), (60, 60, 60), 1)
    for i, text in enumerate(labels):
        y = pad + strip_h - 1 - round(i * (strip_h - 1) / (len(labels) - 1))  # (bottom ... top)
        cv2.line(out, (2 + width, y), (5 + width, y), (60, 60, 60), 1)
        cv2.putText(out, str(text), (8 + width, y + text_h // 2), _FONT, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def hstack(
    images: Sequence[np.ndarray], pad: int = 4, background: tuple[int, int, int] = (255, 255, 255)
) -> np.ndarray:
    """Place RGB images side by side, top-aligned, with ``pad`` pixels between them."""
    rgbs = [to_uint8_image(im) for im in images]
    if not rgbs:
        raise ValueError("hstack: no images given")
    height = max(im.shape[0] for im in rgbs)
    width = sum(im.shape[1] for im in rgbs) + pad * (len(rgbs) - 1)
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = background
    x = 0
    for im in rgbs:
        out[: im.shape[0], x : x + im.shape[1]] = im
        x += im.shape[1] + pad
    return out


def append_colorbar(
    img: np.ndarray, colormap: str | int = "jet", labels: Sequence[str] = ("0", "1"), pad: int = 4
) -> np.ndarray:
    """Add a colour bar to the right of a picture, as tall as the picture."""
    rgb = to_uint8_image(img)
    return hstack([rgb, colorbar(rgb.shape[0], colormap, labels)], pad=pad)


def make_grid(
    rows: Sequence[Sequence[np.ndarray | torch.Tensor | None]],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    pad: int = 4,
    tile_size: tuple[int, int] | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    font_scale: float = 0.5,
) -> np.ndarray:
    """Lay tiles out in a grid, with optional row labels (left) and column labels (top).

    Args:
        rows: a list of rows, each a list of images (any format of :func:`to_uint8_image`); rows may differ
            in length, and ``None`` leaves a blank cell. Tiles that are already labelled (taller) keep their
            aspect ratio only if ``tile_size`` is None and they all share one size.
        row_labels: one label per row, written to the left of it.
        col_labels: one label per column, written above the first row.
        pad: pixels between tiles and around the grid.
        tile_size: (H, W) every tile is resized to; default the size of the first tile.
        background: RGB colour of the padding.
        font_scale: font scale of the labels.

    Returns:
        ``uint8`` RGB picture.
    """
    tiles = [[None if t is None else to_uint8_image(t) for t in row] for row in rows]
    first = next((t for row in tiles for t in row if t is not None), None)
    if first is None:
        raise ValueError("make_grid: no tiles given (every row is empty or None)")
    if row_labels is not None and len(row_labels) != len(tiles):
        raise ValueError(f"make_grid: {len(row_labels)} row labels for {len(tiles)} rows")
    n_cols = max(len(row) for row in tiles)
    if col_labels is not None and len(col_labels) > n_cols:
        raise ValueError(f"make_grid: {len(col_labels)} column labels for {n_cols} columns")
    th, tw = tile_size if tile_size is not None else first.shape[:2]

    row_label_w = 0
    if row_labels:
        longest = max(cv2.getTextSize(line, _FONT, font_scale, 1)[0][0] for t in row_labels for line in t.split("\n"))
        row_label_w = min(longest + 12, max(tw, 96))  # long labels wrap rather than widen the grid without end

    header = None
    if col_labels:
        blocks = [_text_block(t, tw, font_scale, (0, 0, 0), background) for t in col_labels]
        hh = max(b.shape[0] for b in blocks)
        header = np.empty((hh, row_label_w + (pad if row_label_w else 0) + n_cols * (tw + pad) - pad, 3), np.uint8)
        header[:] = background
        x0 = row_label_w + (pad if row_label_w else 0)
        for j, b in enumerate(blocks):
            header[: b.shape[0], x0 + j * (tw + pad) : x0 + j * (tw + pad) + tw] = b

    bands = []
    for i, row in enumerate(tiles):
        band = np.empty((th, n_cols * (tw + pad) - pad, 3), dtype=np.uint8)
        band[:] = background
        for j, t in enumerate(row):
            if t is not None:
                band[:, j * (tw + pad) : j * (tw + pad) + tw] = resize_image(t, (th, tw))
        if row_label_w:
            block = _text_block(row_labels[i], row_label_w, font_scale, (0, 0, 0), background)
            label = np.empty((th, row_label_w, 3), dtype=np.uint8)
            label[:] = background
            bh = min(th, block.shape[0])
            y = (th - bh) // 2
            label[y : y + bh] = block[:bh]
            band = hstack([label, band], pad=pad, background=background)
        bands.append(band)

    parts = ([header] if header is not None else []) + bands
    width = max(p.shape[1] for p in parts)
    height = sum(p.shape[0] for p in parts) + pad * (len(parts) + 1)
    out = np.empty((height, width + 2 * pad, 3), dtype=np.uint8)
    out[:] = background
    y = pad
    for p in parts:
        out[y : y + p.shape[0], pad : pad + p.shape[1]] = p
        y += p.shape[0] + pad
    return out


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
