"""The evaluation loop (docs/protocol.md): predictions for a test set, KLD/SIM/NSS per image, means, pictures, a table.

Anything that maps a test batch to heatmaps is evaluated the same way, a trained model as well as a baseline
(``utils.evaluation.baselines``)::

    result = evaluate(model_predict_fn(model, eval_size=224), test_set)
    print(format_table(result.summary))                         # utils.evaluation.scores
    write_pictures(result, test_set, "runs/x/pictures", n=8)   # utils.evaluation.pictures

Per image, the prediction is upsampled (bilinear) to the GT size and min-max normalised
(``utils.evaluation.metrics.prepare_prediction``), then scored against the GT
(``utils.evaluation.metrics.compute_metrics``); the
overall numbers are plain means over all images, as in the published code (``utils.evaluation.scores.Evaluator``).
Metric time is measured apart from the model's time (``EvalResult.metric_seconds``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from utils.engine.runtime import amp_context, resolve_amp_dtype
from utils.evaluation.metrics import prepare_prediction
from utils.evaluation.scores import Evaluator, ImageRecord

__all__ = [
    "EvalResult",
    "PredictFn",
    "evaluate",
    "model_predict_fn",
]

logger = logging.getLogger(__name__)

PredictFn = Callable[[dict[str, Any]], torch.Tensor]
_CHUNK = 8  # images prepared and scored together (cache-sized float64 temporaries)


@dataclass
class EvalResult:
    """What :func:`evaluate` returns."""

    summary: dict[str, Any]
    """``Evaluator.summary()``: overall, per-affordance and per-object means, counts, all-zero GT count."""
    records: list[ImageRecord]
    """Per-image scores, in dataset order."""
    maps: torch.Tensor | None = None
    """(N, k, k) uint8 predictions (prepared, scaled to 0..255, area-downsampled to ``keep_size``) for pictures."""
    metric_seconds: float = 0.0
    """Time spent in prediction preparation and the metrics (not the model, not data loading)."""
    model_seconds: float = 0.0
    """Time spent in ``predict_fn``."""
    total_seconds: float = 0.0
    """Wall time of the whole loop (data loading included)."""
    eval_size: tuple[int, int] = (0, 0)
    """(H, W) at which predictions and GT were compared (the GT size)."""

    def record_dicts(self) -> list[dict[str, Any]]:
        """Per-image records as plain dicts (for JSON)."""
        return [asdict(r) for r in self.records]

    def timing(self) -> dict[str, float]:
        """Seconds spent in the model, the metrics and in total (JSON-serialisable)."""
        return {"model": self.model_seconds, "metrics": self.metric_seconds, "total": self.total_seconds}


def model_predict_fn(model: Any, eval_size: int) -> PredictFn:
    """The protocol's prediction of a grounder, for :func:`evaluate`: the label channel of its map on the patch grid,
    bilinear *straight* to ``eval_size`` × ``eval_size``, min-max normalised.

    Training-time evaluation and ``test.py`` both use it, so that a checkpoint scores the same in both. Going
    through the network's input size first (two bilinear passes) is not the protocol: it smooths the map, and on the
    synthetic job (96-pixel inputs, 224-pixel GT) it moved Seen KLD by 0.013.
    """
    size = (int(eval_size), int(eval_size))

    def predict_fn(batch: dict[str, Any]) -> torch.Tensor:
        extra = {"depth": batch["depth"]} if "depth" in batch else {}  # AGD20K-Depth maps, with data.depth_root
        return model.predict(batch["image"], batch["label"], output_size=size, **extra).maps

    return predict_fn


@contextlib.contextmanager
def _intra_op_threads(n: int | None) -> Iterator[None]:
    """Temporarily run torch CPU ops with ``n`` intra-op threads (None: leave the setting alone)."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_maps(maps: Any, b: int, paths: Sequence[str], readable: torch.Tensor | None = None) -> torch.Tensor:
    """The (B, h, w) float maps; raises on a wrong shape or on NaN/inf for a readable image."""
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"evaluate: predict_fn must return a (B, h, w) tensor, got {type(maps).__name__}")
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]  # (B, h, w)
    if maps.dim() != 3 or maps.shape[0] != b:
        raise ValueError(
            f"evaluate: predict_fn must return (B, h, w) maps with B = {b} (one map per image for its label), got "
            f"{tuple(maps.shape)}"
        )
    finite = torch.isfinite(maps).flatten(1).all(dim=1)  # (B,)
    if readable is not None:
        finite = finite | ~readable.to(finite.device)  # an unreadable image's map is never scored
    if not bool(finite.all()):
        bad = [paths[i] for i in torch.nonzero(~finite).flatten().tolist()]
        raise ValueError(f"evaluate: predict_fn returned NaN/inf maps for {bad[:5]}; check the model or checkpoint")
    return maps.float()


def evaluate(
    predict_fn: PredictFn,
    dataset: Dataset,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    amp: str = "off",
    keep_size: int | None = 112,
    desc: str = "evaluate",
    metric_threads: int | None = 1,
) -> EvalResult:
    """Run ``predict_fn`` over a test set and score every image with KLD, SIM and NSS (docs/protocol.md).

    Args:
        predict_fn: ``predict_fn(batch) -> (B, h, w)`` heatmaps, one per image for its label, at any resolution
            (the patch grid or full size). ``batch`` is the collated test batch (``image`` (B, 3, S, S), ``gt``
            (B, E, E), ``label``, ``affordance``, ``object``, ``path``, and the masks when the dataset has them),
            its tensors already on ``device``. Called under ``torch.no_grad()``.
        dataset: a test set whose items hold ``image``, ``gt``, ``affordance``, ``object``, ``path``
            (``datasets.agd20k.AGD20KTest``). Items with ``readable`` False (a file that failed to decode) are left
            out of the metrics, as are the files the dataset left out when it was built (its ``unreadable``
            list); both are listed in ``summary["unreadable"]`` ("path: reason") and logged once.
        batch_size: images per batch.
        num_workers: DataLoader workers (0 loads in this process).
        device: where ``predict_fn`` and the metrics run.
        progress: show a progress bar.
        amp: autocast policy for ``predict_fn``: ``off`` (fp32), ``bf16`` or ``auto`` (see
            ``utils.engine.runtime.resolve_amp_dtype``). The metrics always run in float64.
        keep_size: side of the predictions kept for :func:`write_pictures` (uint8, N·k² bytes); None keeps none.
        desc: progress-bar label.
        metric_threads: torch intra-op threads for the metrics on a CPU device (restored afterwards); None keeps
            the process setting. The metrics are many short float64 passes, each ending in a thread barrier: on a
            shared CPU a descheduled worker stalls every barrier (1,675 images took 15-50 s with 2 threads on our
            busy 2-core machine, 2 s with 1), so one thread is the robust default.

    Returns:
        :class:`EvalResult` with the summary, the per-image records, the kept maps and the timings.

    Raises:
        ValueError: no image could be scored (an empty dataset, or every image unreadable).
    """
    device = torch.device(device)
    amp_dtype = resolve_amp_dtype(amp, device)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    evaluator = Evaluator()
    kept: list[torch.Tensor] = []
    model_s = metric_s = 0.0
    eval_size = (0, 0)
    start = time.perf_counter()
    index = 0
    unreadable: dict[str, str] = {}  # path -> reason, for the files that failed to decode in the loop
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, disable=not progress, unit="batch", leave=False):
            batch = _to_device(batch, device)
            gt = batch["gt"]  # (B, E, E)
            b = gt.shape[0]
            paths = list(batch.get("path", [""] * b))
            readable = batch.get("readable")  # (B,) bool, or None for datasets without the flag
            problems = batch.get("problem", [""] * b)

            _sync(device)
            t0 = time.perf_counter()
            with amp_context(device, amp_dtype):
                maps = predict_fn(batch)  # unreadable items (zero images) go through too: batch shapes stay fixed
            maps = _check_maps(maps, b, paths, readable)
            _sync(device)
            t1 = time.perf_counter()
            eval_size = tuple(gt.shape[-2:])
            keep = list(range(b))
            if readable is not None and not bool(readable.all()):
                flags = readable.tolist()
                keep = [j for j in keep if flags[j]]
                unreadable.update({paths[j]: problems[j] or "could not be decoded" for j in range(b) if not flags[j]})
            smalls = []
            with _intra_op_threads(metric_threads if device.type == "cpu" else None):
                # A few images at a time keep the float64 maps in the CPU cache (see compute_metrics).
                for s in range(0, len(keep), _CHUNK):
                    rows = keep[s : s + _CHUNK]
                    sel = torch.as_tensor(rows, device=maps.device)
                    pred = prepare_prediction(maps[sel], eval_size)  # (b', E, E) float64 in [0, 1]
                    evaluator.update(
                        pred,
                        gt[sel.to(gt.device)],
                        [batch["affordance"][j] for j in rows],
                        [batch["object"][j] for j in rows],
                        [paths[j] for j in rows],
                        [index + j for j in rows],
                    )
                    if keep_size is not None:
                        smalls.append(
                            F.interpolate(pred[:, None].float(), size=(keep_size, keep_size), mode="area")[:, 0]
                        )
            _sync(device)
            metric_s += time.perf_counter() - t1
            model_s += t1 - t0

            if smalls:
                small = torch.cat(smalls)  # (B, k, k) in [0, 1]
                kept.append((small * 255 + 0.5).clamp(0, 255).to(torch.uint8).cpu())
            index += b
    total = time.perf_counter() - start
    left_out = _unreadable_list(dataset, unreadable)
    if len(evaluator) == 0:
        if left_out:
            raise ValueError(f"evaluate: no test image could be read ({len(left_out)} unreadable, e.g. {left_out[:3]})")
        raise ValueError(f"evaluate: the dataset is empty ({type(dataset).__name__} has no test images)")
    summary = evaluator.summary()
    summary["unreadable"] = left_out
    if left_out:
        logger.warning(
            "%s: %d unreadable test image(s) left out of the metrics (listed under 'unreadable'): %s%s",
            desc,
            len(left_out),
            "; ".join(left_out[:5]),
            f" and {len(left_out) - 5} more" if len(left_out) > 5 else "",
        )
    logger.info(
        "%s: %d images, KLD %.4f SIM %.4f NSS %.4f (metrics %.2f s, model %.2f s, total %.2f s)",
        desc,
        summary["num_images"],
        summary["KLD"],
        summary["SIM"],
        summary["NSS"],
        metric_s,
        model_s,
        total,
    )
    if summary["zero_gt"]:
        logger.info(
            "%d test image(s) have an all-zero GT map (scored 0): %s", summary["zero_gt"], summary["zero_gt_paths"]
        )
    return EvalResult(
        summary=summary,
        records=evaluator.records,
        maps=torch.cat(kept) if kept else None,
        metric_seconds=metric_s,
        model_seconds=model_s,
        total_seconds=total,
        eval_size=eval_size,
    )


def _unreadable_list(dataset: Dataset, in_loop: dict[str, str]) -> list[str]:
    """ "path: reason" of every file left out: the dataset's own list (built before the loop), then the loop's."""
    out = [str(u) for u in getattr(dataset, "unreadable", [])]
    seen = {u.split(": ", 1)[0] for u in out}
    return out + [f"{p}: {why}" for p, why in in_loop.items() if p not in seen]
