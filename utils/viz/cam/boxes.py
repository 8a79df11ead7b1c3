"""Weakly supervised localisation boxes from a map, and their overlap."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np
import torch

__all__ = [
    "box_iou",
    "cam_to_boxes",
]

logger = logging.getLogger(__name__)


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
