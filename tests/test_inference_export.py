"""Tests of utils/inference/export.py and onnx_runner.py: the ONNX graph agrees with PyTorch and runs without torch."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_world import make_tiny_run

from utils.inference import Predictor
from utils.inference.export import InferenceGraph, benchmark, check_onnx, export_onnx, main

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # fp32, as the exporter's check demands


def _require(module: str) -> None:
    """Skip without the optional package; under CI (which installs requirements-dev.txt) its absence is a failure."""
    if importlib.util.find_spec(module) is None:
        reason = f"{module} is not installed: pip install -r requirements-export.txt"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the ONNX tests, but {reason}")
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def _onnx_installed() -> None:
    _require("onnx")
    _require("onnxruntime")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    return make_tiny_run(tmp_path_factory.mktemp("export"))


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((40, 50), (32, 32), (20, 70))]


def test_graph_of_all_classes_matches_pytorch_and_the_predictor(run, tmp_path) -> None:
    from utils.inference.onnx_runner import OnnxPredictor, preprocess

    predictor = Predictor.from_checkpoint(run["checkpoint"], device="cpu")
    graph = InferenceGraph(predictor.model, 32, with_maps=True)
    path = export_onnx(graph, tmp_path / "all.onnx", metadata={"note": "test"})
    diffs = check_onnx(graph, path, batches=(1, 3))  # 3 != the traced 2: the batch axis is dynamic
    assert set(diffs) == {"cams", "logits", "maps"} and max(diffs.values()) < TOLERANCE, diffs
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["class_names"] == run["class_names"] and meta["image_size"] == 32 and meta["affordance"] is None
    assert meta["outputs"] == ["cams", "logits", "maps"] and meta["note"] == "test" and meta["grid"] == [4, 4]

    runner = OnnxPredictor(path, threads=1)
    images = _images()
    from datasets.images import to_tensor

    np.testing.assert_array_equal(preprocess(images[0], 32, meta["mean"], meta["std"]), to_tensor(images[0], 32))
    maps, probs = runner.predict(images, affordance="hold")
    expected = predictor.predict(images, affordance="hold")
    np.testing.assert_allclose(probs, expected.probs, atol=TOLERANCE)
    for got, want in zip(maps, expected.maps):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=TOLERANCE)
    top1, _ = runner.predict(images)  # default: each image's most probable class
    top = predictor.predict(images, top_k=1)
    for got, want in zip(top1, top.maps):
        np.testing.assert_allclose(got, want[0], atol=TOLERANCE)
    with pytest.raises(ValueError, match="unknown affordance 'grasp'; valid names: cut_with"):
        runner.predict(images, affordance="grasp")


def test_cli_exports_one_class_checks_and_times_it(run, tmp_path, capsys) -> None:
    from utils.inference.onnx_runner import OnnxPredictor

    out = tmp_path / "hold.onnx"
    argv = ["--checkpoint", str(run["checkpoint"]), "--out", str(out), "--affordance", "Hold"]
    assert main([*argv, "--benchmark", "1", "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "max |difference|: heatmap" in printed and "(within 0.0001)" in printed and "ONNX Runtime" in printed
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["affordance"] == "hold" and report["outputs"] == ["heatmap", "cam", "logits"]
    assert max(report["export_report"]["max_abs_diff"].values()) < TOLERANCE
    rates = report["export_report"]["benchmark"]
    assert rates["torch_images_per_s"] > 0 and rates["onnxruntime_images_per_s"] > 0

    runner = OnnxPredictor(out)
    maps, _ = runner.predict(_images())
    expected = Predictor.from_checkpoint(run["checkpoint"], device="cpu").predict(_images(), "hold").maps
    for got, want in zip(maps, expected):
        np.testing.assert_allclose(got, want, atol=TOLERANCE)
    with pytest.raises(ValueError, match="exported for 'hold' only"):
        runner.predict(_images(), affordance="pour")

    assert main([*argv[:-2], "--affordance", "hodl"]) == 2
    assert "Did you mean 'hold'?" in capsys.readouterr().err
    assert main([*argv, "--tolerance", "0"]) == 1  # a check that fails says so in the exit status
    assert "EXCEEDS 0" in capsys.readouterr().out


def test_text_gated_graphs_bake_the_text_feature(run, tmp_path) -> None:
    """BiT-Align's gate depends on the class: one-class graphs bake its text feature (or a phrase's), the graph of
    all classes conditions on the ungated prediction as Grounder.predict does."""
    from models.build import build_model
    from models.text import OpenClipTextEncoder
    from utils.config import load_config
    from utils.inference.onnx_runner import OnnxPredictor

    cfg = load_config(
        run["config"], ["model.text.encoder=learned", "model.saliency=bitalign", "model.text_gating=true"]
    )
    torch.manual_seed(1)
    model = build_model(cfg, run["class_names"]).eval()
    model.text = OpenClipTextEncoder(run["class_names"], 32, text_cfg={"width": 32, "layers": 1, "heads": 2})
    predictor = Predictor(model, 32, "cpu", open_vocabulary=True)
    for query in ("hold", "grasp the handle"):
        graph = InferenceGraph(model, 32, query)
        path = export_onnx(graph, tmp_path / f"{query.replace(' ', '_')}.onnx")
        assert max(check_onnx(graph, path).values()) < TOLERANCE
        maps, _ = OnnxPredictor(path).predict(_images())
        for got, want in zip(maps, predictor.predict(_images(), affordance=query).maps):
            np.testing.assert_allclose(got, want, atol=TOLERANCE)
    graph = InferenceGraph(model, 32)
    path = export_onnx(graph, tmp_path / "all.onnx")
    assert max(check_onnx(graph, path).values()) < TOLERANCE
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cams, _ = graph(x)
    torch.testing.assert_close(cams, model.predict(x, None).ego_pred.float(), atol=1e-5, rtol=0)


def test_the_runner_needs_no_torch(tmp_path) -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); import utils.inference.onnx_runner; "
        "assert 'torch' not in sys.modules, 'onnx_runner pulled in torch'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_dynamo_exporter(run, tmp_path) -> None:
    _require("onnxscript")
    predictor = Predictor.from_checkpoint(run["checkpoint"], device="cpu")
    graph = InferenceGraph(predictor.model, 32)
    path = export_onnx(graph, tmp_path / "dynamo.onnx", exporter="dynamo")
    assert max(check_onnx(graph, path).values()) < TOLERANCE
    rates = benchmark(graph, path, batch=2, iters=1, warmup=1)
    assert rates["onnxruntime_images_per_s"] > 0
