"""Atomic file writes: a file is either its previous content or the complete new one, never half written.

:func:`atomic_save` writes to a temporary file in the destination folder, flushes and fsyncs it, then
``os.replace``s it over the destination, so that an interrupted write leaves the previous file intact. A write killed
outright (SIGKILL, power loss) can leave a ``.<name>.<random>.tmp`` file beside it; loaders never read those (they
end in ``.tmp``, not ``.pth``) and :func:`remove_stale_temp_files` deletes them when a run resumes.

For tests only, the environment variable ``WSAG_TEST_CHECKPOINT_WRITE_DELAY`` (seconds) makes every write pause
between writing the temporary file and renaming it, so that a test can kill a process inside that window.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_save", "remove_stale_temp_files"]

logger = logging.getLogger(__name__)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, flush and fsync it, then ``os.replace`` it into place.

    If anything fails (a full disk, an interrupt), the temporary file is removed and ``path`` keeps its previous
    content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        delay = float(os.environ.get("WSAG_TEST_CHECKPOINT_WRITE_DELAY") or 0)  # tests: widen the kill window
        if delay > 0:
            time.sleep(delay)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # make the rename itself durable (best effort: not every file system lets a folder be fsynced)
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files that writes killed before their rename left in ``folder``; returns them.

    Only call it when no other process writes checkpoints into ``folder`` (a resuming run owns its folder).
    """
    removed = []
    for tmp in sorted(Path(folder).glob(".*.pth.*.tmp")):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    if removed:
        logger.warning(
            "removed %d unfinished checkpoint write(s) of an interrupted run: %s",
            len(removed),
            [p.name for p in removed],
        )
    return removed
