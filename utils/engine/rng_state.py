"""The random states a resumed run needs to continue as if it had never stopped.

:func:`get_rng_state` captures the Python, numpy and torch (CPU and every CUDA device) generators as tensors and plain
values, so that a checkpoint holding them still loads with ``torch.load(..., weights_only=True)``;
:func:`set_rng_state` puts them back, restoring the CUDA generators only when as many devices are visible as when
they were saved.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_state", "set_rng_state"]

logger = logging.getLogger(__name__)


def get_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and every CUDA device) random states, as ``weights_only``-loadable values."""
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": list(cuda),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by :func:`get_rng_state` (CUDA only when the device count matches)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            logger.warning(
                "checkpoint holds %d CUDA RNG states but %d devices are visible: CUDA RNG not restored",
                len(cuda),
                torch.cuda.device_count(),
            )
