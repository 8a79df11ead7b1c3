"""The speed and memory benchmark runs end to end and reports every number (timings are not asserted)."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_MODEL_ARGS

from utils.tools import benchmark

TINY = [*TINY_MODEL_ARGS, "data.image_size=32", "data.resize_size=36", "data.eval_size=32", "train.amp=off"]


def test_benchmark_writes_every_measurement(tmp_path, capsys, caplog, monkeypatch):
    out = tmp_path / "bench.json"
    monkeypatch.setattr(benchmark, "cpu_has_native_bf16", lambda: False)  # as on an AVX2-only CPU
    code = benchmark.main(
        ["--config", "configs/synthetic.yaml", "--device", "cpu", "--batch-size", "2", "--warmup", "0",
         "--repeats", "1", "--amp", "--out", str(out), *TINY]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["batch_size"] == 2 and report["image_size"] == 32
    assert set(report["results"]) == {"fp32", "bf16"}  # --amp adds the bf16 column beside fp32
    for column in report["results"].values():
        for key, _, _ in benchmark.ROWS:
            assert column[key] > 0, key
        # one training step runs the backbone on 1 + num_exo images per sample, plus the heads and backward
        assert column["train_step_s"] > 0 and column["backbone_step_images_s"] > 0
    printed = capsys.readouterr().out
    assert "training step (samples/s)" in printed and "target <= 1.6" in printed
    machine = report["machine"]  # the same environment record as a run's metrics.json
    assert machine["device"] == "cpu" and machine["device_name"] and machine["cpu_capability"]
    assert machine["torch"] == __import__("torch").__version__ and "training_policy" in machine
    assert f"{machine['cpu_capability']} kernels" in printed
    assert "bf16 is emulated" in caplog.text  # --amp where bf16 is slow says so before the long run


def test_benchmark_rejects_a_bad_override(tmp_path):
    from utils.config import ConfigError

    with pytest.raises(ConfigError, match=r"train\.batch_sz"):
        benchmark.main(["--config", "configs/synthetic.yaml", "--out", str(tmp_path / "b.json"), "train.batch_sz=2"])


def test_interleaved_timing_runs_each_function_once_per_round_and_rotates_the_order():
    calls: list[str] = []
    fns = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    times = benchmark.time_interleaved(fns, __import__("torch").device("cpu"), warmup=1, repeats=3)
    # one warm-up round in order, then three timed rounds, each starting one function later
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert set(times) == {"a", "b", "c"} and all(t >= 0 for t in times.values())
