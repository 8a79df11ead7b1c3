"""Run folders: a new run's folder, the folder a --resume continues, finished splits, when to evaluate."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from utils.config import SPLITS, Config

__all__ = [
    "eval_due",
    "new_run_dir",
    "resume_run_dir",
    "split_finished",
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


def new_run_dir(cfg: Any, runs_root: Path = Path("runs")) -> Path:
    """``output.dir``, or a new ``runs/<output.name>-<YYYYmmdd-HHMMSS>`` folder (suffixed if it exists)."""
    if cfg.output.dir:
        return Path(cfg.output.dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = runs_root / f"{cfg.output.name}-{stamp}"
    i = 1
    while run.exists():  # two runs started in the same second
        run = runs_root / f"{cfg.output.name}-{stamp}-{i}"
        i += 1
    return run


def split_finished(split_dir: Path, epochs: int) -> bool:
    """True when ``split_dir`` holds the report of a run trained for at least ``epochs`` epochs."""
    path = split_dir / "metrics.json"
    if not path.is_file():
        return False
    try:
        done = json.loads(path.read_text())["model"]["last_epoch"]["epoch"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return False
    return int(done) >= epochs
