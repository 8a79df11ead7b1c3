"""Runtime plumbing: device selection, seeding, logging, and the mixed-precision policy."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "COMPILED_PARTS",
    "LOG_FORMAT",
    "amp_context",
    "compile_parts",
    "cpu_has_native_bf16",
    "environment_info",
    "package_version",
    "resolve_amp_dtype",
    "seed_everything",
    "seed_worker",
    "select_device",
    "setup_logging",
]

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def select_device(spec: str = "auto") -> torch.device:
    """Turn ``auto | cpu | cuda | cuda:N`` into a device; ``auto`` picks CUDA when present.

    Raises:
        ValueError: the spec is not one of the forms above, or asks for CUDA on a machine without it.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"device={spec!r} asks for CUDA but none is available here; use device=cpu or device=auto")
        index = int(spec[5:]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device={spec!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return torch.device(spec)
    raise ValueError(f"device={spec!r} is not one of auto, cpu, cuda, cuda:N")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices). Data pairing has its own (seed, epoch, index) generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive numpy/random seeds from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def setup_logging(run_dir: str | Path | None = None, level: int = logging.INFO, rank: int = 0) -> None:
    """Log to the console and, when ``run_dir`` is given, to ``run_dir/train.log`` (rank 0 only writes files).

    Safe to call more than once: handlers installed by an earlier call are replaced, not duplicated.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_wsag", False):
            root.removeHandler(h)
            h.close()
    root.setLevel(level if rank == 0 else logging.WARNING)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    console._wsag = True  # type: ignore[attr-defined]
    root.addHandler(console)
    if run_dir is not None and rank == 0:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(run_dir) / "train.log")
        fh.setFormatter(logging.Formatter(LOG_FORMAT))
        fh._wsag = True  # type: ignore[attr-defined]
        root.addHandler(fh)


def _cpuinfo() -> str:
    """The text of /proc/cpuinfo, or "" where there is none (macOS, Windows, a restricted container)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix units (AMX-BF16 or AVX512-BF16), where bf16 autocast pays off.

    On CPUs without them (e.g. AVX2-only machines) bf16 is emulated and slower than fp32, so ``amp=auto`` keeps fp32.
    """
    override = os.environ.get("WSAG_CPU_BF16")
    if override is not None:
        return override == "1"
    flags = _cpuinfo().split()
    return any(f in flags for f in ("amx_bf16", "avx512_bf16"))


def resolve_amp_dtype(policy: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` (``auto | bf16 | off``) on ``device``; None means fp32.

    ``auto`` chooses bf16 on CUDA devices that support it and on CPUs with native bf16 units, fp32 elsewhere.
    """
    if policy == "off":
        return None
    if policy == "bf16":
        return torch.bfloat16
    if policy != "auto":
        raise ValueError(f"train.amp={policy!r} is not one of auto, bf16, off")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def _cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows, else "cpu"."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def package_version(package: str) -> str:
    """The installed version of a distribution (its pip name), or "not installed"."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_info(device: torch.device, amp_dtype: torch.dtype | None) -> dict[str, str | int]:
    """What a run's numbers depend on besides its configuration: precision, device, CPU kernels, library versions.

    The same configuration and seed give different numbers under another precision (``train.amp=auto`` picks bf16
    only where the CPU or GPU has bf16 units) and can give slightly different ones under other kernels or versions,
    so every ``metrics.json`` records these beside the results.
    """
    import cv2  # the module actually imported, whichever wheel provides it (opencv-python, -headless, -contrib)

    info: dict[str, str | int] = {
        "precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, str(amp_dtype)),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,  # with its build tag (+cpu, +cu130, ...)
    }
    for package in ("timm", "numpy", "open-clip-torch"):
        info[package] = package_version(package)
    info["opencv"] = cv2.__version__
    return info


@contextlib.contextmanager
def amp_context(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op when ``dtype`` is None (fp32)."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


#: The parts of a grounder that run on fixed shapes, which torch.compile can fuse without recompiling.
COMPILED_PARTS = ("backbone", "aff_proj", "aff_exo_proj", "aff_ego_proj", "aff_fc")


def compile_parts(model: torch.nn.Module) -> torch.nn.Module:
    """Compile the fixed-shape parts of a grounder in place (``nn.Module.compile``: state-dict names unchanged).

    The part selection (k-means with data-dependent stopping, per-class banks) is left eager: compiling it recompiles
    for nearly every batch. Returns ``model``.
    """
    for name in COMPILED_PARTS:
        part = getattr(model, name, None)
        if part is not None:
            part.compile()
    return model
