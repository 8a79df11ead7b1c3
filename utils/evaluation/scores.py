"""Score aggregation: per-image KLD/SIM/NSS records, their means, and the plain-text table of a summary.

:class:`Evaluator` keeps one :class:`ImageRecord` per scored test image (with its affordance and object) and
summarises them as plain means over images, overall and per affordance and per object, as the published code does;
images with an all-zero GT map count in every mean with all three scores 0 and are listed apart.
:func:`format_table` lays such a summary out as a plain-text table. The loop that produces the scores is
:func:`utils.evaluation.evaluate.evaluate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from utils.evaluation.metrics import compute_metrics

__all__ = ["METRICS", "Evaluator", "ImageRecord", "format_table"]

METRICS = ("KLD", "SIM", "NSS")
"""Metric names as they appear in summaries; KLD is lower-is-better, SIM and NSS higher-is-better."""


@dataclass
class ImageRecord:
    """The scores of one test image."""

    index: int
    """Index of the image in the evaluated dataset."""
    path: str
    affordance: str
    object: str
    kld: float
    sim: float
    nss: float
    zero_gt: bool
    """The GT map is all zero (scores are then defined as 0, see ``utils.evaluation.metrics``)."""


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _group_means(records: Sequence[ImageRecord], key: str) -> dict[str, dict[str, float | int | None]]:
    groups: dict[str, list[ImageRecord]] = {}
    for r in records:
        groups.setdefault(getattr(r, key), []).append(r)
    return {
        name: {
            "KLD": _mean([r.kld for r in rs]),
            "SIM": _mean([r.sim for r in rs]),
            "NSS": _mean([r.nss for r in rs]),
            "count": len(rs),
        }
        for name, rs in sorted(groups.items())
    }


class Evaluator:
    """Accumulates per-image KLD/SIM/NSS with their affordance and object, and summarises them.

    Use :meth:`update` with prepared predictions and GT maps, or :meth:`add` with values computed elsewhere.
    Images with an all-zero GT count in every mean (with KLD = SIM = NSS = 0, as the published code scores
    them) and are reported in ``summary()["zero_gt"]``.
    """

    def __init__(self) -> None:
        self.records: list[ImageRecord] = []

    def __len__(self) -> int:
        return len(self.records)

    def reset(self) -> None:
        """Forget every image."""
        self.records.clear()

    def update(
        self,
        pred: torch.Tensor,
        gt: torch.Tensor,
        affordances: Sequence[str],
        objects: Sequence[str],
        paths: Sequence[str] | None = None,
        indices: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Score a batch and record it.

        Args:
            pred: (B, H, W) predictions already prepared (``utils.evaluation.metrics.prepare_prediction``).
            gt: (B, H, W) GT maps in [0, 1].
            affordances: B affordance names.
            objects: B object names.
            paths: B image paths (default empty strings).
            indices: B dataset indices (default: continuing from the images recorded so far).

        Returns:
            The batch's ``{"kld", "sim", "nss"}``, each float64 (B,).
        """
        if pred.dim() != 3:
            raise ValueError(f"Evaluator.update: expected pred (B, H, W), got {tuple(pred.shape)}")
        values = compute_metrics(pred, gt)
        zero_gt = gt.flatten(1).amax(dim=1) <= 0  # (B,)
        self.add(values["kld"], values["sim"], values["nss"], affordances, objects, paths, indices, zero_gt)
        return values

    def add(
        self,
        kld: torch.Tensor | Sequence[float],
        sim: torch.Tensor | Sequence[float],
        nss: torch.Tensor | Sequence[float],
        affordances: Sequence[str],
        objects: Sequence[str],
        paths: Sequence[str] | None = None,
        indices: Sequence[int] | None = None,
        zero_gt: torch.Tensor | Sequence[bool] | None = None,
    ) -> None:
        """Record per-image values computed elsewhere (all sequences of length B)."""
        klds, sims, nsss = (torch.as_tensor(v, dtype=torch.float64).flatten().tolist() for v in (kld, sim, nss))
        b = len(klds)
        paths = list(paths) if paths is not None else [""] * b
        indices = [int(i) for i in indices] if indices is not None else list(range(len(self), len(self) + b))
        zeros = torch.as_tensor(zero_gt).flatten().tolist() if zero_gt is not None else [False] * b
        lengths = {len(sims), len(nsss), len(affordances), len(objects), len(paths), len(indices), len(zeros)}
        if lengths != {b}:
            raise ValueError(
                f"Evaluator.add: every argument needs one entry per image; got {b} KLD values and lengths "
                f"{sorted(lengths)} for the others"
            )
        bad = [p or str(i) for p, i, *v in zip(paths, indices, klds, sims, nsss) if not all(map(math.isfinite, v))]
        if bad:
            raise ValueError(f"Evaluator.add: non-finite metric values for images {bad[:5]}; check the predictions")
        for row in zip(indices, paths, affordances, objects, klds, sims, nsss, zeros):
            i, p, a, o, k, s, n, z = row
            self.records.append(ImageRecord(i, str(p), str(a), str(o), k, s, n, bool(z)))

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary.

        Returns:
            ``{"num_images", "KLD", "SIM", "NSS", "zero_gt", "zero_gt_paths", "per_affordance", "per_object"}``
            (:func:`utils.evaluation.evaluate.evaluate` adds ``unreadable``, the test files left out);
            the overall values are plain means over images (None when nothing was recorded); ``per_affordance``
            and ``per_object`` map each name (sorted) to ``{"KLD", "SIM", "NSS", "count"}``.
        """
        rs = self.records
        return {
            "num_images": len(rs),
            "KLD": _mean([r.kld for r in rs]),
            "SIM": _mean([r.sim for r in rs]),
            "NSS": _mean([r.nss for r in rs]),
            "zero_gt": sum(r.zero_gt for r in rs),
            "zero_gt_paths": [r.path for r in rs if r.zero_gt],
            "per_affordance": _group_means(rs, "affordance"),
            "per_object": _group_means(rs, "object"),
        }


# ------------------------------------------------------------------------------------------------------ table
def format_table(summary: dict[str, Any], per_object: bool = False, title: str = "") -> str:
    """A plain-text table: the overall means, then one row per affordance (and per object when asked).

    Args:
        summary: ``Evaluator.summary()`` / ``EvalResult.summary``.
        per_object: add the per-object rows.
        title: a first line (e.g. the split and checkpoint).

    Returns:
        The table, lines joined by newlines (no trailing newline).
    """

    def fmt(v: float | None) -> str:
        return f"{v:8.4f}" if v is not None else f"{'-':>8}"

    def row(name: str, d: dict[str, Any], count: int) -> str:
        return f"{name:<20}" + "".join(fmt(d.get(m)) for m in METRICS) + f"{count:>8d}"

    header = f"{'':<20}" + "".join(f"{m:>8}" for m in METRICS) + f"{'images':>8}"
    rule = "-" * len(header)
    lines = [title] if title else []
    lines += [header, rule, row("overall", summary, summary["num_images"])]
    if summary.get("zero_gt"):
        lines.append(f"  ({summary['zero_gt']} image(s) with an all-zero GT map, scored 0 and counted in the means)")
    if summary.get("unreadable"):
        lines.append(f"  ({len(summary['unreadable'])} unreadable test image(s) left out of the means, listed under "
                     "'unreadable' in metrics.json)")  # fmt: skip
    for section, key in [("affordance", "per_affordance"), ("object", "per_object")][: 2 if per_object else 1]:
        lines += [rule, f"per {section}:"]
        lines += [row(name, d, d["count"]) for name, d in summary.get(key, {}).items()]
    lines += [rule, "KLD: lower is better; SIM, NSS: higher is better (docs/protocol.md, plain means over images)."]
    return "\n".join(lines)
