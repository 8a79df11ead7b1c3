"""How much reduced JPEG decoding saves, and what it changes: ``python -m datasets.decode_benchmark``.

Writes photo-like JPEGs of AGD20K-like sizes (smooth colour fields, shaded shapes with edges, fine texture and
sensor noise, quality 90), then times decode + transform per image with full-size decoding and with the reduced
decoding the datasets use (``read_image(path, min_side=...)``), and measures the pixel difference it makes after
the transform (uint8 images, after the resize and crop, before normalisation).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from datasets.images import center_resize, random_crop, random_flip, read_image, resize_shorter

__all__ = ["main", "make_photo", "measure"]


def make_photo(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A photo-like uint8 BGR image: no solid colours, edges at several scales, texture and noise."""
    grid = rng.uniform(40, 220, size=(4, 5, 3)).astype(np.float32)
    img = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)  # (H, W, 3) smooth lighting and colour
    scale = min(height, width)
    for _ in range(int(rng.integers(6, 12))):  # shaded objects with sharp outlines
        mask = np.zeros((height, width), np.uint8)
        center = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        axes = (int(rng.uniform(0.05, 0.3) * scale), int(rng.uniform(0.05, 0.3) * scale))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
        shade = np.linspace(rng.uniform(0.6, 1.0), rng.uniform(1.0, 1.4), width, dtype=np.float32)[None, :, None]
        color = rng.uniform(20, 235, size=3).astype(np.float32) * shade  # (1, W, 3)
        alpha = mask.astype(np.float32)[..., None] / 255.0
        img = img * (1 - alpha) + color * alpha
    for _ in range(int(rng.integers(20, 40))):  # thin structures: twigs, cables, printed text strokes
        p0 = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        p1 = (p0[0] + int(rng.normal(0, 0.15 * scale)), p0[1] + int(rng.normal(0, 0.15 * scale)))
        cv2.line(img, p0, p1, rng.uniform(0, 255, size=3).tolist(), int(rng.integers(1, 4)), cv2.LINE_AA)
    texture = np.zeros((height, width), np.float32)
    for sigma, amplitude in ((4.0, 20.0), (1.5, 14.0), (0.7, 8.0)):  # surface texture at three scales
        noise = rng.normal(0, amplitude, size=(height, width)).astype(np.float32)
        texture += cv2.GaussianBlur(noise, (0, 0), sigma) * math.sqrt(sigma)
    img += texture[..., None] + rng.normal(0, 3, size=img.shape).astype(np.float32)  # then sensor noise
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _train_uint8(img: np.ndarray, resize_size: int, crop: int, seed: int) -> np.ndarray:
    """The geometric part of ``train_transform`` (the normalisation is linear, so the uint8 difference tells)."""
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(random_flip(random_crop(resize_shorter(img, resize_size), crop, rng), rng))


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)  # the best run: background load only ever adds time


def measure(paths: Sequence[Path], resize_size: int, crop: int, image_size: int, repeats: int = 5) -> dict:
    """Per-image milliseconds and pixel differences, full vs reduced decoding, train and test transforms.

    Returns:
        {"train": {...}, "test": {...}}, each with ``full_ms``, ``reduced_ms`` (means over images of the best
        of ``repeats`` runs), ``speedup``, ``mean_abs_diff`` and ``max_abs_diff`` (0-255 scale).
    """
    out = {}
    for name, min_side in (("train", resize_size), ("test", image_size)):
        if name == "train":
            transforms = [lambda img, seed=i: _train_uint8(img, resize_size, crop, seed) for i in range(len(paths))]
        else:
            transforms = [lambda img: center_resize(img, image_size)] * len(paths)
        full_ms, reduced_ms, diffs, max_diff = [], [], [], 0
        for path, transform in zip(paths, transforms):
            full = lambda p=path, t=transform: t(read_image(p))  # noqa: E731
            reduced = lambda p=path, t=transform, m=min_side: t(read_image(p, min_side=m))  # noqa: E731
            full_ms.append(1000 * _time(full, repeats))
            reduced_ms.append(1000 * _time(reduced, repeats))
            diff = np.abs(full().astype(np.int16) - reduced().astype(np.int16))
            diffs.append(float(diff.mean()))
            max_diff = max(max_diff, int(diff.max()))
        mean_full, mean_reduced = statistics.fmean(full_ms), statistics.fmean(reduced_ms)
        out[name] = {
            "min_side": min_side,
            "full_ms": round(mean_full, 3),
            "reduced_ms": round(mean_reduced, 3),
            "speedup": round(mean_full / mean_reduced, 2) if mean_reduced > 0 else math.inf,
            "mean_abs_diff": round(statistics.fmean(diffs), 3),
            "max_abs_diff": max_diff,
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Write the test JPEGs into a temporary folder, measure each size, print a JSON report."""
    parser = argparse.ArgumentParser(prog="python -m datasets.decode_benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="640x480,1280x960", help="WxH list (AGD20K photos: mostly 640x480)")
    parser.add_argument("--images", type=int, default=20, help="JPEGs per size (usual: 20)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (usual: 90)")
    parser.add_argument("--resize-size", type=int, default=256, help="training shorter side (SPEC: 256)")
    parser.add_argument("--crop", type=int, default=224, help="training crop (SPEC: 224)")
    parser.add_argument("--image-size", type=int, default=224, help="test input side (SPEC: 224)")
    parser.add_argument("--repeats", type=int, default=5, help="timings per image; the fastest counts")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (1: as in one DataLoader worker)")
    args = parser.parse_args(argv)
    cv2.setNumThreads(args.threads)
    rng = np.random.default_rng(0)
    report = {"threads": args.threads, "quality": args.quality, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            w, h = (int(v) for v in size.lower().split("x"))
            paths = []
            for i in range(args.images):
                path = Path(tmp) / f"{size}_{i:03d}.jpg"
                cv2.imwrite(str(path), make_photo(h, w, rng), [cv2.IMWRITE_JPEG_QUALITY, args.quality])
                paths.append(path)
            report["results"][size] = measure(paths, args.resize_size, args.crop, args.image_size, args.repeats)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
