"""Picture layout: title bars, colour bars, side-by-side rows and labelled grids of RGB pictures.

Every function takes pictures in any format :func:`utils.viz.draw.to_uint8_image` accepts and returns an RGB
``uint8`` (H, W, 3) array. Text is drawn with OpenCV's Hershey font; a title too wide for its picture first shrinks
its font, then wraps on spaces, and a word that still does not fit is cut and ends in ``..``. :func:`make_grid` lays
tiles out with optional row and column labels, :func:`add_label` puts a title above one picture,
:func:`append_colorbar` adds the colour scale of a heatmap to its right.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from utils.viz.draw import colorize, resize_image, to_uint8_image

__all__ = ["add_label", "append_colorbar", "colorbar", "hstack", "make_grid"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX


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
