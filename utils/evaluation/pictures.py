"""Pictures of an evaluation: prediction | GT triptychs of spread-out test images, and the worst and best by KLD."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.evaluation.evaluate import EvalResult
from utils.evaluation.scores import ImageRecord

__all__ = [
    "write_pictures",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------- pictures
def _spread(n: int, total: int) -> list[int]:
    """n positions spread evenly over range(total) (all of them when n >= total)."""
    if n >= total:
        return list(range(total))
    return sorted({round(x) for x in np.linspace(0, total - 1, n)})


def _stack_rows(rows: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Pad labelled tiles at the bottom (white) so that every tile has the same height."""
    h = max(t.shape[0] for row in rows for t in row)
    return [[np.pad(t, ((0, h - t.shape[0]), (0, 0), (0, 0)), constant_values=255) for t in row] for row in rows]


def write_pictures(
    result: EvalResult,
    dataset: Dataset,
    out_dir: str | Path,
    n: int = 8,
    n_extremes: int = 6,
    tile: int = 192,
) -> list[Path]:
    """Write N triptychs (image | prediction overlay | GT overlay) and a grid of the worst and best images by KLD.

    Each triptych is titled with the affordance, the object and the image's KLD, SIM and NSS. The triptych images
    are spread evenly over the dataset (which is ordered by affordance and object), so they cover many classes.

    Args:
        result: what :func:`evaluate` returned on ``dataset`` (with ``keep_size`` not None).
        dataset: the evaluated test set (images and GT maps are read again from it).
        out_dir: folder for ``triptych_<index>_<affordance>_<object>.png`` and ``worst_best_kld.png``.
        n: number of triptychs (0: none).
        n_extremes: images in each of the worst and best rows of the grid (0: no grid).
        tile: side of each picture tile in pixels.

    Returns:
        The paths written.
    """
    import cv2  # pictures only: the metric path does not need OpenCV

    from utils.viz.draw import overlay, save_png, to_uint8_image
    from utils.viz.layout import add_label, make_grid

    if result.maps is None:
        raise ValueError("write_pictures: the result kept no maps; run evaluate(..., keep_size=112) to draw them")
    if len(result.records) != len(result.maps):
        raise ValueError(f"write_pictures: {len(result.records)} records but {len(result.maps)} kept maps")
    out_dir = Path(out_dir)
    written: list[Path] = []

    def tiles_for(pos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, ImageRecord]:
        rec = result.records[pos]
        item = dataset[rec.index]
        image = item["image"]  # (3, S, S) normalised
        base = cv2.resize(to_uint8_image(image), (tile, tile), interpolation=cv2.INTER_AREA)  # (tile, tile, 3)
        pred = result.maps[pos].float() / 255.0  # (k, k)
        gt = torch.as_tensor(item["gt"]).float().clamp(0, 1)  # (E, E)
        return base, overlay(base, pred), overlay(base, gt), rec

    for pos in _spread(n, len(result.records)) if n > 0 else []:
        base, pred_ov, gt_ov, rec = tiles_for(pos)
        row = _stack_rows([[add_label(base, "image"), add_label(pred_ov, "prediction"), add_label(gt_ov, "GT")]])
        title = f"{rec.affordance} / {rec.object}   KLD {rec.kld:.3f}  SIM {rec.sim:.3f}  NSS {rec.nss:.3f}"
        picture = add_label(make_grid(row), title)
        written.append(save_png(out_dir / f"triptych_{rec.index:05d}_{rec.affordance}_{rec.object}.png", picture))

    k = min(n_extremes, len(result.records) // 2) if n_extremes > 0 else 0
    if k > 0:
        order = sorted(range(len(result.records)), key=lambda i: result.records[i].kld)
        groups = {"worst": order[::-1][:k], "best": order[:k]}
        rows, labels = [], []
        for name, positions in groups.items():
            pred_row, gt_row = [], []
            for pos in positions:
                _, pred_ov, gt_ov, rec = tiles_for(pos)
                pred_row.append(add_label(pred_ov, f"{rec.affordance}/{rec.object}\nKLD {rec.kld:.3f}"))
                gt_row.append(add_label(gt_ov, f"SIM {rec.sim:.3f} NSS {rec.nss:.3f}"))
            rows += [pred_row, gt_row]
            labels += [f"{name}: prediction", f"{name}: GT"]
        picture = add_label(make_grid(_stack_rows(rows), row_labels=labels), f"worst and best {k} images by KLD")
        written.append(save_png(out_dir / "worst_best_kld.png", picture))
    logger.info("wrote %d picture(s) to %s", len(written), out_dir)
    return written
