"""DataLoader helpers: how many worker processes this machine can feed, and how fast a loader delivers.

Nothing here builds a loader; the caller keeps its own ``DataLoader`` arguments.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import torch

__all__ = [
    "available_cpus",
    "clamp_num_workers",
    "default_num_workers",
    "measure_loader_rate",
    "resolve_num_workers",
]

logger = logging.getLogger(__name__)

_warned: set[tuple[int, int]] = set()  # (requested, available) pairs already warned about in this process


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one (Linux; also what ``taskset`` and
    container cpusets restrict), else ``os.cpu_count()``; at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_num_workers(max_workers: int = 8) -> int:
    """A DataLoader worker count for this process: one CPU left for the main process, at most ``max_workers``.

    0 (load in the main process) on a single CPU. More than about 8 workers rarely helps one GPU and costs memory.
    """
    if max_workers < 0:
        raise ValueError(f"max_workers must be >= 0, got {max_workers}")
    return min(max_workers, available_cpus() - 1)


def clamp_num_workers(requested: int) -> int:
    """``requested`` workers, lowered to :func:`available_cpus` with one warning per process and value.

    More workers than CPUs only adds processes that wait for each other (PyTorch also warns about it, once per
    loader, hence every epoch); the clamped count avoids both.

    Raises:
        ValueError: ``requested`` is negative.
    """
    if requested < 0:
        raise ValueError(f"num_workers must be >= 0 (0 loads in the main process), got {requested}")
    cpus = available_cpus()
    if requested <= cpus:
        return requested
    if (requested, cpus) not in _warned:
        _warned.add((requested, cpus))
        logger.warning(
            "num_workers=%d but this process may use %d CPU(s): using %d DataLoader workers. Set data.num_workers "
            "to at most %d to silence this.",
            requested,
            cpus,
            cpus,
            cpus,
        )
    return cpus


def _count(batch: Any) -> tuple[int, int]:
    """(samples, decoded images) in one collated batch.

    A training batch holds ``exo`` (B, n, 3, S, S) and ``ego`` (B, 3, S, S): n + 1 images per sample; a test batch
    ``image`` (B, 3, S, S); otherwise the first tensor's leading dimension counts the samples.
    """
    if isinstance(batch, dict):
        if "exo" in batch:
            b, n = batch["exo"].shape[:2]
            return b, b * (n + ("ego" in batch))
        if "image" in batch:
            return len(batch["image"]), len(batch["image"])
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for value in batch:
            if isinstance(value, torch.Tensor):
                return len(value), len(value)
    if isinstance(batch, torch.Tensor):
        return len(batch), len(batch)
    raise TypeError(f"cannot count the samples of a {type(batch).__name__} batch; expected a dict, tuple or tensor")


def measure_loader_rate(loader: Iterable, max_batches: int | None = None, warmup: int = 1) -> dict[str, float]:
    """Time a DataLoader alone (no model): samples/s and decoded images/s once the workers are running.

    The first ``warmup`` batches are timed apart (``startup_s``: worker start and their first batches), the rate
    is measured on the batches after them, up to ``max_batches`` batches in all (default: one full pass).

    Args:
        loader: any iterable of collated batches; for a training set, call ``set_epoch`` first as training does.
        max_batches: stop after this many batches (warmup included).
        warmup: batches left out of the rate.

    Returns:
        ``samples_per_s``, ``images_per_s`` (a training sample is n exocentric + 1 egocentric image),
        ``samples``, ``images`` and ``batches`` measured, ``seconds`` they took and ``startup_s``.

    Raises:
        ValueError: the loader gave no batch after the warmup (measure more batches, or lower ``warmup``).
    """
    if warmup < 0 or (max_batches is not None and max_batches <= warmup):
        raise ValueError(f"need warmup >= 0 and max_batches > warmup, got warmup={warmup}, max_batches={max_batches}")
    samples = images = batches = 0
    start = time.perf_counter()
    timed_from = start
    for i, batch in enumerate(loader):
        if i < warmup:
            timed_from = time.perf_counter()
        else:
            s, m = _count(batch)
            samples, images, batches = samples + s, images + m, batches + 1
        if max_batches is not None and i + 1 >= max_batches:
            break
    end = time.perf_counter()
    if batches == 0:
        raise ValueError(f"the loader gave no batch after the {warmup} warmup batch(es); measure a longer run")
    seconds = end - timed_from
    return {
        "samples_per_s": samples / seconds,
        "images_per_s": images / seconds,
        "samples": float(samples),
        "images": float(images),
        "batches": float(batches),
        "seconds": seconds,
        "startup_s": timed_from - start,
    }


def resolve_num_workers(requested: int) -> int:
    """The worker count a configuration asks for: -1 picks :func:`default_num_workers`, other values are clamped
    to the usable CPUs (:func:`clamp_num_workers`)."""
    return default_num_workers() if requested == -1 else clamp_num_workers(requested)
