"""Run folders: which folder a --resume continues, and when an evaluation is due."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from utils.config import SPLITS, Config

__all__ = [
    "eval_due",
    "resume_run_dir",
]

logger = logging.getLogger(__name__)


def resume_run_dir(spec: str | None, cfg: Config, splits: Sequence[str], runs_root: str | Path = "runs") -> Path | None:
    """The run folder a ``--resume`` continues (None: start a new one).

    ``--resume PATH`` continues the run holding ``PATH`` when it lies in a run's split folder
    (``<run>/<Split>/last.pth``), else ``output.dir`` or a new run folder; ``--resume auto`` continues ``output.dir``
    or the newest ``runs/<name>-*`` folder with a ``last.pth`` of any split.
    """
    if spec is None:
        return None
    if spec != "auto":
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"--resume {spec}: no such checkpoint file; pass a last.pth or --resume auto")
        if path.resolve().parent.name in SPLITS:
            return path.resolve().parent.parent
        return Path(cfg.output.dir) if cfg.output.dir else None
    if cfg.output.dir:
        return Path(cfg.output.dir)
    for run in sorted(Path(runs_root).glob(f"{cfg.output.name}-*"), key=lambda p: p.name, reverse=True):
        if any((run / s / "last.pth").is_file() for s in splits):
            return run
    logger.warning("--resume auto: no run folder runs/%s-* with a last.pth; starting a new run", cfg.output.name)
    return None


def eval_due(epoch: int, epochs: int, every: int) -> bool:
    """Evaluate after 0-based ``epoch``: every ``every`` epochs, and always after the last."""
    return epoch + 1 == epochs or (every > 0 and (epoch + 1) % every == 0)
