"""Run an exported affordance graph with ONNX Runtime, numpy and OpenCV only: no torch, no training stack.

To deploy, copy this file, the ``.onnx`` graph and its ``.json`` sidecar (written by :mod:`utils.inference.export`)::

    from onnx_runner import OnnxPredictor          # or: from utils.inference.onnx_runner import OnnxPredictor
    runner = OnnxPredictor("locate_seen.onnx")
    maps, probs = runner.predict([rgb])            # rgb: (H, W, 3) uint8 RGB; maps[0]: (H, W) in [0, 1]

Preprocessing is the repository's test transform (resize to the graph's input size, area interpolation when
shrinking and bilinear when growing, ImageNet mean/std); each map is the graph's class map on the patch grid,
resized (bilinear) straight to the image's size and min-max normalised, as the PyTorch predictor does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["OnnxPredictor", "load_metadata", "preprocess"]

SIDECAR_FORMAT = "wsag-onnx-v1"


def load_metadata(onnx_path: str | Path) -> dict[str, Any]:
    """The sidecar ``<graph>.json`` of an exported graph (class names, input size, normalisation, outputs)."""
    path = Path(onnx_path).with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the sidecar of {onnx_path} is missing; it is written beside the graph by "
            "python -m utils.inference.export. Copy it along with the .onnx file."
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{path}: expected format {SIDECAR_FORMAT!r}, found {meta.get('format')!r}")
    return meta


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img
    interp = cv2.INTER_AREA if width * height < w * h else cv2.INTER_LINEAR  # as datasets.images does
    return cv2.resize(img, (width, height), interpolation=interp)


def preprocess(rgb: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, size, size) float32, ImageNet-normalised."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    x = _resize(rgb, size, size).astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # (H, W, 3) -> (3, H, W)


def _minmax(m: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    lo, hi = m.min(), m.max()
    return ((m - lo) / (hi - lo + eps)).astype(np.float32)


class OnnxPredictor:
    """Affordance heatmaps from an exported graph on the CPU (or any ONNX Runtime provider).

    Args:
        onnx_path: the ``.onnx`` file; its ``.json`` sidecar must sit beside it.
        threads: ONNX Runtime intra-op threads (None: its default, one per core).
        providers: ONNX Runtime execution providers (default: the CPU).
    """

    def __init__(self, onnx_path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None):
        import onnxruntime as ort

        self.meta = load_metadata(onnx_path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(onnx_path), options, providers=list(providers or ["CPUExecutionProvider"])
        )
        self.class_names: list[str] = list(self.meta["class_names"])
        self.image_size = int(self.meta["image_size"])
        self.affordance: str | None = self.meta.get("affordance")
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's raw outputs for a (b, 3, S, S) float32 normalised batch, by output name."""
        outputs = self.session.run(None, {"images": np.ascontiguousarray(batch, dtype=np.float32)})
        return dict(zip(self.output_names, outputs))

    def predict(
        self, images: Sequence[np.ndarray], affordance: str | None = None
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Heatmaps of (H, W, 3) uint8 RGB images at their own resolutions, and the class probabilities.

        Args:
            images: the images.
            affordance: for a graph of all classes, the class whose map to return (default: each image's most
                probable class); a one-class graph answers only for the class it was exported for.

        Returns:
            Per image an (H, W) float32 map in [0, 1], and the (N, C) probabilities.
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        size, mean, std = self.image_size, self.meta["mean"], self.meta["std"]
        out = self.run(np.stack([preprocess(im, size, mean, std) for im in images]))
        logits = out["logits"].astype(np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
        if "cam" in out:  # a one-class graph
            if affordance is not None and affordance != self.affordance:
                raise ValueError(
                    f"this graph was exported for '{self.affordance}' only, asked for '{affordance}'; export the "
                    "graph of all classes (no --affordance) to choose the class at run time"
                )
            grids = out["cam"]  # (b, h, w)
        else:
            cams = out["cams"]  # (b, C, h, w)
            if affordance is None:
                idx = probs.argmax(axis=1)
            elif affordance in self.class_names:
                idx = np.full(len(images), self.class_names.index(affordance))
            else:
                raise ValueError(f"unknown affordance '{affordance}'; valid names: {', '.join(self.class_names)}")
            grids = cams[np.arange(len(images)), idx]
        maps = [
            _minmax(cv2.resize(g.astype(np.float32), (im.shape[1], im.shape[0]), interpolation=cv2.INTER_LINEAR))
            for g, im in zip(grids, images)
        ]
        return maps, probs
