"""Run logs: atomic JSON files, the per-epoch JSON-lines log, the TensorBoard writer."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "JsonlLog",
    "make_writer",
    "write_json",
]

logger = logging.getLogger(__name__)


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (temporary file + ``os.replace``), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


class JsonlLog:
    """``log.jsonl``: one JSON object per epoch, appended and flushed (a crash loses at most the current line)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def truncate_after(self, epoch: int) -> None:
        """Drop lines of epochs after ``epoch`` (1-based), e.g. written after the checkpoint a run resumes from."""
        if not self.path.is_file():
            return
        kept = [ln for ln in self.read() if int(ln.get("epoch", 0)) <= epoch]
        self.path.write_text("".join(json.dumps(r, default=_json_default) + "\n" for r in kept))

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one line."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(dict(record), default=_json_default) + "\n")
            fh.flush()

    def read(self) -> list[dict[str, Any]]:
        """Every line, parsed (an unfinished last line is skipped)."""
        if not self.path.is_file():
            return []
        out = []
        for ln in self.path.read_text().splitlines():
            try:
                out.append(json.loads(ln))
            except json.JSONDecodeError:
                continue
        return out


def make_writer(log_dir: Path, enabled: bool, purge_step: int | None = None) -> Any | None:
    """A TensorBoard SummaryWriter in ``log_dir`` (None when disabled); ``purge_step`` drops a crashed tail."""
    if not enabled:
        return None
    from torch.utils.tensorboard import SummaryWriter  # local: importing tensorboard costs a second

    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
