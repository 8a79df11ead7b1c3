"""How long the evaluation protocol alone takes: ``python -m utils.tools.metrics_benchmark`` scores random maps against
AGD20K-like GT maps (no model), as many as a test split holds."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from utils.evaluation.evaluate import EvalResult, evaluate

__all__ = [
    "benchmark_metrics",
    "main",
]

logger = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------------------- benchmark
class _RandomTestSet(Dataset):
    """In-memory test items with AGD20K-like GT maps, for timing the metric path alone.

    Each GT is a few Gaussian blobs around random points (as AGD20K's are made from annotated points), scaled to a
    maximum of 1 and quantised to 8 bits as a PNG would be, so it is mostly zero with smooth blobs.
    """

    def __init__(self, n: int, size: int, seed: int = 0, max_points: int = 5) -> None:
        g = torch.Generator().manual_seed(seed)
        points = torch.rand(n, max_points, 2, generator=g) * size  # (n, P, 2) (y, x)
        used = torch.arange(max_points) < torch.randint(1, max_points + 1, (n, 1), generator=g)  # (n, P)
        sigma = size * (0.03 + 0.06 * torch.rand(n, max_points, generator=g))  # (n, P) 7-20 px at 224
        coords = torch.arange(size, dtype=torch.float32)
        dy = (coords[None, None, :] - points[..., 0:1]) ** 2  # (n, P, size)
        dx = (coords[None, None, :] - points[..., 1:2]) ** 2
        two_var = 2 * sigma[..., None] ** 2  # (n, P, 1)
        self.gt = torch.zeros(n, size, size)
        for i in range(max_points):  # a few blobs: each a separable Gaussian, batched over images
            blob = torch.exp(-dy[:, i, :, None] / two_var[:, i, :, None]) * torch.exp(
                -dx[:, i, None, :] / two_var[:, i, :, None]
            )
            self.gt += blob * used[:, i, None, None]
        self.gt /= self.gt.flatten(1).amax(dim=1)[:, None, None]
        self.gt = torch.round(self.gt * 255) / 255  # 8-bit PNG levels: the tails become exact zeros

    def __len__(self) -> int:
        return len(self.gt)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"gt": self.gt[i], "label": 0, "affordance": "a", "object": "o", "path": f"{i}.png"}


def benchmark_metrics(num_images: int = 1675, size: int = 224, grid: int = 14, batch_size: int = 32) -> EvalResult:
    """Time :func:`evaluate` on random (grid x grid) predictions and AGD20K-like GT maps, model-free.

    ``EvalResult.metric_seconds`` is the time of the protocol alone (upsampling, min-max, KLD, SIM, NSS), for
    ``num_images`` images at ``size`` x ``size`` (the AGD20K Seen test set: 1,675 images at 224).
    """
    data = _RandomTestSet(num_images, size)
    g = torch.Generator().manual_seed(1)
    return evaluate(
        lambda b: torch.rand(len(b["gt"]), grid, grid, generator=g),
        data,
        batch_size=batch_size,
        progress=False,
        keep_size=None,
        desc="benchmark",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m utils.tools.metrics_benchmark``: print the metric time of a Seen-sized test set."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m utils.tools.metrics_benchmark", description="Time the evaluation protocol."
    )
    p.add_argument("--images", type=int, default=1675, help="Number of test images (AGD20K Seen: 1675).")
    p.add_argument("--size", type=int, default=224, help="Evaluation size (the protocol: 224).")
    p.add_argument("--grid", type=int, default=14, help="Side of the predicted maps before upsampling (ViT-S/16: 14).")
    p.add_argument("--batch-size", type=int, default=32, help="Images per batch.")
    p.add_argument("--repeats", type=int, default=3, help="Timed runs; the best is reported.")
    args = p.parse_args(argv)
    runs = [benchmark_metrics(args.images, args.size, args.grid, args.batch_size) for _ in range(args.repeats)]
    times = [r.metric_seconds for r in runs]
    print(
        f"metric time for {args.images} images at {args.size}x{args.size} (from {args.grid}x{args.grid} maps, batch "
        f"{args.batch_size}, metrics on 1 thread): best {min(times):.3f} s, runs "
        + ", ".join(f"{t:.3f}" for t in times)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
