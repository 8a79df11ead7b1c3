"""Images/s of the ways in, measured on the same machine, model and images.

Usage::

    python -m utils.inference.rates --checkpoint CKPT --images 32 --test-py 3
    python -m utils.inference.rates --checkpoint CKPT --threads 1 --json rates.json

It writes ``--images`` photo-like JPEGs (``--size``, default 480x640) into a temporary folder and times, for one
affordance:

- ``predictor_batched``: :meth:`Predictor.predict` on the decoded images, ``--batch-size`` per forward pass;
- ``predictor_single``: the same images, one :meth:`Predictor.predict` call each;
- ``folder_in_process``: :func:`utils.inference.folder.run` on the folder (decoding, prediction, overlay PNGs, maps,
  manifest), the model already loaded;
- ``folder_command``: ``python -m utils.inference.folder`` as a new process, start-up included;
- ``test_py_image``: ``python test.py --image`` once per image for ``--test-py`` images, start-up included (what a
  user had before the Python API);
- with ONNX Runtime installed, the exported graph of all classes in ONNX Runtime beside the same graph in PyTorch
  (:func:`utils.inference.export.benchmark`, ``--batch-size`` images per call, on preprocessed tensors).

Threads: ``--threads`` sets torch's and ONNX Runtime's (and the subprocesses' ``OMP_NUM_THREADS``); default: torch's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["main", "measure"]

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


def _photos(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``n`` smooth random colour JPEGs (they compress and decode like photos, unlike white noise)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (size[0] // 16 + 1, size[1] // 16 + 1, 3), dtype=np.uint8)
        img = cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
        path = folder / f"photo_{i:04d}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 3) if seconds > 0 else float("inf")


def measure(
    checkpoint: str | Path,
    images: int = 32,
    size: tuple[int, int] = (480, 640),
    batch_size: int = 16,
    test_py: int = 3,
    onnx: bool = True,
    threads: int | None = None,
    config: str | None = None,
) -> dict[str, Any]:
    """Time every way in on the same images (see the module docstring); returns {name: {...images_per_s...}}.

    ``threads`` applies for the call only: torch's previous setting is restored afterwards.
    """
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _measure(checkpoint, images, size, batch_size, test_py, onnx, threads, config)
    finally:
        torch.set_num_threads(before)


def _measure(
    checkpoint: str | Path,
    images: int,
    size: tuple[int, int],
    batch_size: int,
    test_py: int,
    onnx: bool,
    threads: int | None,
    config: str | None,
) -> dict[str, Any]:
    import torch

    from datasets.images import read_image
    from utils.inference.folder import run as run_folder
    from utils.inference.predictor import Predictor

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    extra = ["--config", str(config)] if config else []
    predictor = Predictor.from_checkpoint(checkpoint, "cpu", config=config, batch_size=batch_size)
    affordance = predictor.class_names[0]
    results: dict[str, Any] = {
        "setup": {
            "checkpoint": str(checkpoint),
            "images": images,
            "size": list(size),
            "batch_size": batch_size,
            "affordance": affordance,
            "image_size": predictor.image_size,
            "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
    }
    with tempfile.TemporaryDirectory(prefix="wsag-rates-") as tmp:
        tmp_dir = Path(tmp)
        files = _photos(tmp_dir / "photos", images, size)
        rgbs = [read_image(p) for p in files]
        predictor.predict(rgbs[: min(2, images)], affordance)  # warm-up: first-call allocations

        t0 = time.perf_counter()
        predictor.predict(rgbs, affordance)
        results["predictor_batched"] = {"images_per_s": _rate(images, time.perf_counter() - t0)}

        t0 = time.perf_counter()
        for rgb in rgbs:
            predictor.predict(rgb, affordance)
        results["predictor_single"] = {"images_per_s": _rate(images, time.perf_counter() - t0)}

        t0 = time.perf_counter()
        run_folder(predictor, tmp_dir / "photos", tmp_dir / "out1", [affordance], batch_size=batch_size, progress=False)
        results["folder_in_process"] = {"images_per_s": _rate(images, time.perf_counter() - t0)}

        cmd = [sys.executable, "-m", "utils.inference.folder", "--checkpoint", str(checkpoint), "--no-progress"]
        cmd += ["--input", str(tmp_dir / "photos"), "--out", str(tmp_dir / "out2"), "--affordance", affordance]
        cmd += ["--batch-size", str(batch_size), *extra]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=3600)
        seconds = time.perf_counter() - t0
        results["folder_command"] = {"images_per_s": _rate(images, seconds), "seconds": round(seconds, 2)}

        if test_py > 0:
            t0 = time.perf_counter()
            for path in files[:test_py]:
                cmd = [sys.executable, str(REPO / "test.py"), "--checkpoint", str(checkpoint), "--image", str(path)]
                cmd += ["--affordance", affordance, "--out", str(tmp_dir / "out3"), *extra]
                subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
            seconds = (time.perf_counter() - t0) / test_py
            results["test_py_image"] = {"images_per_s": _rate(1, seconds), "seconds_per_image": round(seconds, 2)}

        if onnx:
            results.update(_onnx_rates(predictor, tmp_dir, batch_size))
    return results


def _onnx_rates(predictor: Any, tmp_dir: Path, batch_size: int) -> dict[str, Any]:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        logger.warning(
            "onnx / onnxruntime not installed: no ONNX Runtime rate (pip install -r requirements-export.txt)"
        )
        return {}
    from utils.inference.export import InferenceGraph, benchmark, check_onnx, export_onnx

    graph = InferenceGraph(predictor.model, predictor.image_size)
    path = export_onnx(graph, tmp_dir / "graph.onnx")
    diffs = check_onnx(graph, path)
    rates = benchmark(graph, path, batch=batch_size, iters=3, warmup=1)
    return {
        "onnx_graph": {
            "torch_images_per_s": rates["torch_images_per_s"],
            "onnxruntime_images_per_s": rates["onnxruntime_images_per_s"],
            "max_abs_diff": {k: float(f"{v:.3g}") for k, v in diffs.items()},
        }
    }


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table of :func:`measure`'s results."""
    s = results["setup"]
    lines = [
        f"{s['images']} JPEGs of {s['size'][0]}x{s['size'][1]}, network input {s['image_size']}, "
        f"batch {s['batch_size']}, torch threads {s['torch_threads']}, load average {s['load_average']}",
        "",
        "| way in | images/s |",
        "|---|---|",
    ]
    labels = {
        "predictor_batched": "Predictor.predict, batched (decoded images)",
        "predictor_single": "Predictor.predict, one image per call",
        "folder_in_process": "folder run (decode + predict + PNG/npy + manifest), model loaded",
        "folder_command": "python -m utils.inference.folder (new process, start-up included)",
        "test_py_image": "python test.py --image, one process per image",
    }
    for key, label in labels.items():
        if key in results:
            lines.append(f"| {label} | {results[key]['images_per_s']} |")
    if "onnx_graph" in results:
        g = results["onnx_graph"]
        lines.append(f"| exported graph in PyTorch (preprocessed batch) | {g['torch_images_per_s']} |")
        lines.append(f"| exported graph in ONNX Runtime (preprocessed batch) | {g['onnxruntime_images_per_s']} |")
        lines += ["", f"ONNX Runtime vs PyTorch max |difference|: {g['max_abs_diff']}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.inference.rates", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="A checkpoint of train.py, or a LOCATE state dict.")
    p.add_argument("--config", default=None, help="For a LOCATE state dict: the config of its architecture.")
    p.add_argument("--images", type=int, default=32, help="Images in the folder (32).")
    p.add_argument("--size", default="480x640", help="HxW of the generated JPEGs (480x640).")
    p.add_argument("--batch-size", type=int, default=16, help="Images per forward pass (16).")
    p.add_argument("--test-py", type=int, default=3, help="Images timed through test.py --image (3; 0 skips).")
    p.add_argument("--no-onnx", action="store_true", help="Skip the ONNX Runtime comparison.")
    p.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime / subprocess threads.")
    p.add_argument("--json", default=None, help="Also write the results to this JSON file.")
    args = p.parse_args(argv)
    from utils.engine.runtime import setup_logging

    setup_logging(None)
    h, w = (int(v) for v in args.size.lower().split("x"))
    results = measure(
        args.checkpoint, args.images, (h, w), args.batch_size, args.test_py, not args.no_onnx, args.threads, args.config
    )
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
