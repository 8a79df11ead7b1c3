"""The report of a trained split: evaluation of the final weights, baselines, last and test-selected epochs."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from datasets.loader import resolve_num_workers
from utils.config import Config
from utils.engine.distributed import unwrap_model

__all__ = [
    "TEST_SELECTED_NOTE",
    "evaluate_model",
    "final_report",
    "model_report",
]

logger = logging.getLogger(__name__)

TEST_SELECTED_NOTE = "selected on the test set, like the published numbers"


def model_report(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The honest and the test-selected numbers from the evaluation history (one entry per evaluated epoch).

    Returns:
        ``{"last_epoch": the last entry, "best_epoch_test_selected": the lowest-KLD entry with a note}``; the
        last epoch of the fixed schedule is the reported result, the other is for comparison with published numbers.
    """
    if not history:
        raise ValueError("no evaluation in the history: evaluate at least after the last epoch")
    last = dict(history[-1])
    best = dict(min(history, key=lambda r: (r["KLD"], r["epoch"])))
    best["note"] = TEST_SELECTED_NOTE
    return {"last_epoch": last, "best_epoch_test_selected": best}


def evaluate_model(
    model: nn.Module, test_set: Dataset, cfg: Config, device: torch.device, desc: str = "evaluate"
) -> dict[str, Any]:
    """Score the model's maps for each test image's label with KLD / SIM / NSS (docs/protocol.md).

    Returns:
        ``{"metrics": {"KLD", "SIM", "NSS"}, "result": utils.evaluation.EvalResult}``.
    """
    from utils.evaluation.evaluate import evaluate, model_predict_fn

    result = evaluate(
        model_predict_fn(unwrap_model(model), cfg.data.eval_size),
        test_set,
        batch_size=cfg.eval.batch_size,
        num_workers=resolve_num_workers(cfg.data.num_workers),
        device=device,
        progress=sys.stderr.isatty(),
        amp="off",  # reported numbers come from fp32 maps, as test.py's, whatever the training precision
        keep_size=112 if cfg.eval.viz else None,
        desc=desc,
    )
    metrics = {k: float(result.summary[k]) for k in ("KLD", "SIM", "NSS")}
    return {"metrics": metrics, "result": result}


def final_report(
    model: nn.Module,
    test_set: Dataset,
    cfg: Config,
    device: torch.device,
    history: list[dict[str, Any]],
    last: dict[str, Any] | None,
    split_dir: Path,
    epochs_done: int,
) -> dict[str, Any]:
    """The split's ``metrics.json``: last-epoch and test-selected numbers, baselines, per-class means, pictures.

    Args:
        model: the trained model.
        test_set: the split's test set.
        cfg: the configuration (``eval.baselines``, ``eval.viz``).
        history: one ``{"epoch", "KLD", "SIM", "NSS"}`` entry per evaluated epoch (appended to when ``last`` is
            None and the final epoch is missing).
        last: :func:`evaluate_model` of the final weights, or None to evaluate them now (a resumed, finished run).
        split_dir: where ``pictures/`` goes.
        epochs_done: epochs trained.
    """
    from utils.evaluation.baselines import build_baseline
    from utils.evaluation.evaluate import evaluate
    from utils.evaluation.pictures import write_pictures

    if last is None:
        last = evaluate_model(model, test_set, cfg, device, desc="evaluate final")
        if not history or history[-1]["epoch"] != epochs_done:
            history.append({"epoch": epochs_done, **last["metrics"]})
    summary = last["result"].summary
    baselines: dict[str, Any] = {}
    for name in cfg.eval.baselines:
        res = evaluate(
            build_baseline(name),
            test_set,
            batch_size=cfg.eval.batch_size,
            num_workers=resolve_num_workers(cfg.data.num_workers),
            device=device,
            progress=False,
            keep_size=None,
            desc=f"baseline {name}",
        )
        baselines[name] = {k: res.summary[k] for k in ("KLD", "SIM", "NSS", "num_images")}
    pictures: list[str] = []
    if cfg.eval.viz:
        paths = write_pictures(last["result"], test_set, split_dir / "pictures", n=cfg.eval.viz)
        pictures = [str(Path(p).relative_to(split_dir)) for p in paths]
    report = model_report(history)
    return {
        "model": report,
        "baselines": baselines,
        "per_affordance": summary["per_affordance"],
        "per_object": summary["per_object"],
        "images": summary["num_images"],
        "zero_gt": summary["zero_gt"],
        "unreadable": summary.get("unreadable", []),
        "epochs": epochs_done,
        "history": history,
        "eval_seconds": last["result"].timing(),
        "pictures": pictures,
    }
