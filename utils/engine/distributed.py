"""Multi-process training with the standard launcher (``torchrun --nproc_per_node N train.py ...``).

One process needs no launcher: without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) every helper here is a no-op and
:func:`init_distributed` returns a single-process :class:`DistInfo`. Under ``torchrun`` the usual environment
variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) select the process; the
backend is NCCL on CUDA and Gloo on the CPU. Rank 0 alone logs, writes files and evaluates; the others wait at a
:func:`barrier`.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from utils.engine.runtime import select_device

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "unwrap_model",
    "wrap_ddp",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among ``world_size`` processes and its rank on this node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs, writes files and evaluates."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer; it is set by torchrun") from e


def init_distributed(device_spec: str = "auto", timeout_s: float = 1800.0) -> tuple[DistInfo, torch.device]:
    """Join the process group started by ``torchrun`` (if any) and pick this process's device.

    Args:
        device_spec: ``auto | cpu | cuda | cuda:N`` (``train.device``). Under the launcher on CUDA, each process
            takes ``cuda:LOCAL_RANK`` whatever index the spec names.
        timeout_s: how long collective operations wait for the other processes.

    Returns:
        The process's :class:`DistInfo` and its device.

    Raises:
        ValueError: malformed launcher variables, or more processes on a node than it has CUDA devices.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = select_device(device_spec)
    if world_size <= 1:
        return DistInfo(), device
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size}); launch with torchrun")
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible: launch at "
                "most that many processes per node (--nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    info = DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)
    logger.info(
        "distributed: rank %d/%d (local %d), backend %s, device %s", rank, world_size, local_rank, backend, device
    )
    return info, device


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process)."""
    return not is_distributed() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def cleanup_distributed() -> None:
    """Leave the process group (a no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process (e.g. the run folder chosen by rank 0); identity in one process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over the processes (the same keys on every process); identity in one process."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def wrap_ddp(model: nn.Module, device: torch.device, find_unused_parameters: bool = True) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel when a process group is active, else return it unchanged.

    ``find_unused_parameters`` defaults to True because the prototype loss skips parameters in the warm-up epoch
    (and in any batch where no sample has a prototype).
    """
    if not is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or torch.compile) wrapper."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model
