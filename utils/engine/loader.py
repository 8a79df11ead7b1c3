"""The training data loader: seeded shuffling, full batches, reproducible workers and epochs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from datasets.loader import resolve_num_workers
from models.outputs import Features
from utils.config import Config
from utils.engine.distributed import DistInfo
from utils.engine.runtime import seed_worker

__all__ = [
    "SeededShuffleSampler",
    "build_train_loader",
    "move_batch",
    "set_loader_epoch",
]

logger = logging.getLogger(__name__)


def _mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (so that seeds (0, 1) and (1, 0) give unrelated streams)."""
    return int(np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class SeededShuffleSampler(Sampler[int]):
    """Shuffle indices with a generator seeded by ``(seed, epoch)`` alone (call :meth:`set_epoch` every epoch).

    The order of an epoch does not depend on the global RNG, so a run resumed at an epoch boundary sees the same
    batches as an uninterrupted one. The single-process counterpart of ``DistributedSampler(seed=...)``.
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.num_samples, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_samples


def build_train_loader(
    dataset: Dataset,
    cfg: Config,
    dist: DistInfo,
    device: torch.device,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """The training loader: seeded shuffling (distributed or not), full batches only unless ``train.drop_last`` is
    off, seeded workers.

    An item depends on (seed, epoch, index) only (the dataset's epoch lives in shared memory), so the workers are
    kept from one epoch to the next. On CUDA, batches come in pinned memory and each worker prepares two ahead.

    Raises:
        ValueError: the dataset cannot fill a single batch on every process.
    """
    bs = cfg.train.batch_size
    if dist.enabled:
        sampler: Sampler[int] = DistributedSampler(
            dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
    else:
        sampler = SeededShuffleSampler(len(dataset), seed=cfg.seed)
    per_process = len(dataset) // dist.world_size
    if per_process < bs:
        raise ValueError(
            f"the training set has {len(dataset)} samples, {per_process} per process, fewer than train.batch_size="
            f"{bs}: lower train.batch_size or use fewer processes"
        )
    workers = resolve_num_workers(cfg.data.num_workers)
    return DataLoader(
        dataset,
        batch_size=bs,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        drop_last=cfg.train.drop_last,  # BatchNorm and the per-batch k-means want full batches
        pin_memory=device.type == "cuda",
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(cfg.seed),
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
    )


def set_loader_epoch(loader: DataLoader, epoch: int, seed: int) -> None:
    """Make ``epoch``'s data a function of (seed, epoch): sampler order, dataset pairing, worker seeds."""
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(_mix_seed(seed, epoch, 1))


def move_batch(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of a batch moved to ``device`` (non-blocking from pinned memory), cached features also cast to
    float32; other values kept as they are."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
        elif isinstance(v, Features):
            v = v.to(device, torch.float32)
        out[k] = v
    return out
