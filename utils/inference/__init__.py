"""Using a trained grounder as a tool: a Python API, folder and video inference, a demo page, ONNX export.

- :mod:`utils.inference.predictor`: :class:`Predictor`, one call from a model file to heatmaps of any images;
- :mod:`utils.inference.image_inputs`: the image kinds ``Predictor.predict`` takes, converted to uint8 RGB;
- :mod:`utils.inference.loading`: recognises our checkpoints and LOCATE's released state dicts;
- :mod:`utils.inference.folder`: ``python -m utils.inference.folder`` over a folder of images or a video's frames;
- :mod:`utils.inference.sources` and :mod:`utils.inference.outputs`: its inputs (image files, video frames) and its
  outputs (overlays, maps, an overlay video, the manifest);
- :mod:`utils.inference.demo`: ``python -m utils.inference.demo``, an interactive page (Gradio, optional);
- :mod:`utils.inference.export`: ``python -m utils.inference.export``, the inference graph to ONNX, checked;
- :mod:`utils.inference.onnx_runner`: runs an exported graph with ONNX Runtime and numpy only (no torch).

The names below are imported on first use, so that ``onnx_runner`` can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["LoadedModel", "PredictionResult", "Predictor", "UnknownAffordanceError", "load_model"]

_HOMES = {
    "LoadedModel": "utils.inference.loading",
    "load_model": "utils.inference.loading",
    "PredictionResult": "utils.inference.predictor",
    "Predictor": "utils.inference.predictor",
    "UnknownAffordanceError": "utils.inference.predictor",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'utils.inference' has no attribute {name!r}")
