"""Tests of utils/inference/rates.py: every way in is timed on the same images, and the table names them."""

from __future__ import annotations

import importlib.util

import pytest
from inference_world import make_tiny_run

from utils.inference.rates import format_table, measure


@pytest.mark.slow
def test_every_way_in_is_timed(tmp_path) -> None:
    run = make_tiny_run(tmp_path / "run")
    onnx = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
    results = measure(run["checkpoint"], images=4, size=(48, 64), batch_size=2, test_py=1, onnx=onnx, threads=1)
    ways = ["predictor_batched", "predictor_single", "folder_in_process", "folder_command", "test_py_image"]
    for way in ways:
        assert results[way]["images_per_s"] > 0, way
    assert results["setup"]["torch_threads"] == 1 and results["setup"]["affordance"] == run["class_names"][0]
    table = format_table(results)
    assert "| python test.py --image, one process per image |" in table and "load average" in table
    if onnx:
        assert max(results["onnx_graph"]["max_abs_diff"].values()) < 1e-4
        assert "ONNX Runtime (preprocessed batch)" in table
