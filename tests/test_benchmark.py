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
    assert "training step on cached features (samples/s)" in printed and "target >= 0.95" in printed
    assert "target inference / backbone floor" in printed  # every checkable target is printed, met or not
    assert set(report["targets"]) == {"inference / backbone floor"}
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


LOCATE = {
    "train_step": {"samples_per_s": 0.5},
    "test_forward_b16": {"images_per_s": 4.0},
    "test_forward_b1": {"images_per_s": 2.0},
}


def test_schedule_arithmetic_on_hand_made_rates():
    from utils.tools.schedule import schedule_times

    rates = {
        "train_e2e_samples_per_s": 2.0,
        "train_e2e_cached_samples_per_s": 8.0,
        "cache_build_images_per_s": 10.0,
        "cache_bytes_per_image": 2**30 / 1000,
    }
    counts = {"train_samples": 1000, "train_images": 1200, "test_images": 100}
    s = schedule_times(rates, 50.0, 4, epochs=15, counts=counts, locate=benchmark._read_locate_dict(LOCATE))
    assert s["epoch_s"] == 1000 / 2 + 100 / 50 and s["epoch_cached_s"] == 1000 / 8 + 100 / 50
    assert s["schedule_s"] == 15 * 502 and s["schedule_cached_s"] == 1200 / 10 + 15 * 127
    assert s["locate_schedule_s"] == 15 * (1000 / 0.5 + 100 / 2.0)
    assert s["speedup_cached_vs_locate"] == s["locate_schedule_s"] / s["schedule_cached_s"]
    assert abs(s["cache_disk_gib"] - 1.2) < 1e-12
    text = benchmark.format_schedule(s)
    assert "LOCATE's public code" in text and "with the cache" in text


def test_schedule_measures_the_real_pipeline_on_agd20k_like_jpegs(tmp_path, capsys):
    from utils.tools.schedule import make_agd20k_like

    root = make_agd20k_like(tmp_path / "tree", affordances=2, objects=1, exo=3, ego=1, test=1)
    jpegs = sorted(root.glob("Seen/trainset/exocentric/*/*/*.jpg"))
    assert len(jpegs) == 6 and len(list(root.glob("Seen/testset/GT/*/*/*.png"))) == 2
    import cv2

    assert min(cv2.imread(str(jpegs[0])).shape[:2]) >= 480  # AGD20K's sizes, not 224
    locate = tmp_path / "locate.json"
    locate.write_text(json.dumps(LOCATE))
    out = tmp_path / "bench.json"
    code = benchmark.main(
        ["--config", "configs/synthetic.yaml", "--device", "cpu", "--batch-size", "2", "--warmup", "0",
         "--repeats", "1", "--schedule", "--schedule-steps", "1", "--schedule-exo", "2", "--views", "2",
         "--locate-json", str(locate), "--out", str(out), *TINY, "data.num_workers=0", "train.batch_size=2"]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    for key in ("loader_samples_per_s", "train_e2e_samples_per_s", "train_e2e_cached_samples_per_s"):
        assert report["schedule_rates"][key] > 0, key
    assert report["schedule"]["schedule_cached_s"] > 0 and "speedup_vs_locate" in report["schedule"]
    assert set(report["targets"]) >= {"inference vs LOCATE", "schedule speedup_cached_vs_locate"}
    assert "AGD20K Seen-sized schedule" in capsys.readouterr().out


def test_locate_json_without_its_rates_fails_clearly(tmp_path):
    bad = tmp_path / "locate.json"
    bad.write_text(json.dumps({"train_step": {}}))
    with pytest.raises(ValueError, match=r"expected train_step\.samples_per_s"):
        benchmark._read_locate(str(bad))
