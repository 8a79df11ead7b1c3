"""test.py end to end on a tiny synthetic world: baselines, a freshly initialised model, single-image inference."""

from __future__ import annotations

import importlib.util
import json
import runpy
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, tiny_config_file


@pytest.fixture(scope="module")
def world(tiny_world: Path, fresh_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's tiny world, a config that generates it (test.py reuses it) and a fresh checkpoint."""
    base = tmp_path_factory.mktemp("tiny")
    overrides = {"eval": {"batch_size": 8}, "output": {"dir": str(base / "run")}}
    cfg_path = tiny_config_file(base / "tiny.yaml", tiny_world, ("Seen", "Unseen"), overrides)
    return {"base": base, "config": cfg_path, "checkpoint": fresh_checkpoint, "world": tiny_world}


def _num_test_images(world_root: Path, split: str) -> int:
    return len(list((world_root / split / "testset" / "GT").rglob("*.png")))


@pytest.mark.parametrize("baseline", ["center", "uniform", "object"])
def test_baselines_write_metrics(script, world, baseline, capsys) -> None:
    argv = ["--config", str(world["config"]), "--baseline", baseline, "--viz", "1", "--no-progress"]
    assert script.main(argv) == 0
    out = world["base"] / "run" / f"baseline-{baseline}"  # default: <output.dir>/baseline-<name>
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["baseline"] == baseline and metrics["checkpoint"] is None
    assert set(metrics["results"]) == {"Seen", "Unseen"}
    assert metrics["config"]["data"]["eval_size"] == 32
    for split, res in metrics["results"].items():
        assert res["num_images"] == _num_test_images(world["world"], split)
        assert all(np.isfinite(res[m]) for m in ("KLD", "SIM", "NSS"))
        assert sum(d["count"] for d in res["per_affordance"].values()) == res["num_images"]
        assert sum(d["count"] for d in res["per_object"].values()) == res["num_images"]
        assert res["zero_gt"] == 0
        assert len(json.loads((out / split / "per_image.json").read_text())) == res["num_images"]
        pictures = sorted(p.name for p in (out / split / "pictures").glob("*.png"))
        assert "worst_best_kld.png" in pictures and any(p.startswith("triptych_") for p in pictures), pictures
    printed = capsys.readouterr().out
    assert "overall" in printed and "Seen test" in printed and "metrics:" in printed


def test_fresh_model_checkpoint_with_pictures(script, world, tmp_path) -> None:
    out = tmp_path / "eval"
    argv = ["--checkpoint", str(world["checkpoint"]), "--viz", "2", "--out", str(out), "--no-progress"]
    assert script.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(world["checkpoint"].resolve())
    assert list(metrics["results"]) == ["Seen"]  # the checkpoint's split
    seen = metrics["results"]["Seen"]
    assert seen["num_images"] == _num_test_images(world["world"], "Seen")
    assert 0 < seen["SIM"] < 1 and seen["KLD"] > 0
    assert metrics["config"]["model"]["backbone"]["kwargs"]["embed_dim"] == 32  # the resolved (checkpoint) config
    pictures = sorted(p.name for p in (out / "Seen" / "pictures").glob("*.png"))
    assert len(pictures) == 3 and "worst_best_kld.png" in pictures
    assert cv2.imread(str(out / "Seen" / "pictures" / "worst_best_kld.png")) is not None
    # Default output folder: next to the checkpoint; --config names the data, the model comes from the checkpoint.
    assert (
        script.main(["--config", str(world["config"]), "--checkpoint", str(world["checkpoint"]), "--no-progress"]) == 0
    )
    assert (world["checkpoint"].parent / "test-last" / "metrics.json").is_file()


def test_unreadable_test_images_are_listed_and_the_rest_scored(script, world, tmp_path, capsys) -> None:
    root = tmp_path / "world"
    shutil.copytree(world["world"] / "Seen", root / "Seen")
    shutil.copy(world["world"] / "classes.json", root / "classes.json")
    images = sorted((root / "Seen" / "testset" / "egocentric").rglob("*.jpg"))
    cut, corrupt = images[0], images[3]
    cut.write_bytes(cut.read_bytes()[:150])  # truncated: left out when the test set is built
    corrupt.write_bytes(b"\xff\xd8" + b"\x17" * 400 + b"\xff\xd9")  # whole container, fails when decoded
    cfg = tmp_path / "cfg.yaml"  # the copied world without the generator (it would refuse a damaged world)
    cfg.write_text(
        world["config"].read_text().replace(str(world["world"]), str(root)).replace("enabled: true", "enabled: false")
    )
    out = tmp_path / "eval"
    argv = ["--config", str(cfg), "--checkpoint", str(world["checkpoint"]), "--split", "Seen", "--out", str(out)]
    assert script.main([*argv, "--viz", "1", "--num-workers", "1", "--no-progress"]) == 0
    seen = json.loads((out / "metrics.json").read_text())["results"]["Seen"]
    assert seen["num_images"] == len(images) - 2 and all(np.isfinite(seen[m]) for m in ("KLD", "SIM", "NSS"))
    assert [u.split(": ", 1)[0] for u in seen["unreadable"]] == [str(cut), str(corrupt)]
    assert "truncated JPEG" in seen["unreadable"][0] and "Could not decode" in seen["unreadable"][1]
    per_image = json.loads((out / "Seen" / "per_image.json").read_text())
    assert len(per_image) == len(images) - 2 and {str(cut), str(corrupt)}.isdisjoint(r["path"] for r in per_image)
    assert "2 unreadable test image(s) left out of the means" in capsys.readouterr().out


def test_single_image_inference(script, world, tmp_path, capsys) -> None:
    image = next((world["world"] / "Seen" / "testset" / "egocentric" / "hold").rglob("*.jpg"))
    out = tmp_path / "pred"
    ckpt = str(world["checkpoint"])
    assert script.main(["--checkpoint", ckpt, "--image", str(image), "--affordance", "hold", "--out", str(out)]) == 0
    heat = np.load(out / f"{image.stem}_hold.npy")
    size = cv2.imread(str(image)).shape[:2]  # the map comes at the image's own resolution
    assert heat.shape == size and heat.min() >= 0 and heat.max() <= 1 + 1e-6
    assert cv2.imread(str(out / f"{image.stem}_hold.png")) is not None

    assert script.main(["--checkpoint", ckpt, "--image", str(image), "--out", str(out)]) == 0
    top = json.loads((out / f"{image.stem}_top3.json").read_text())
    assert len(top["affordances"]) == 3 and top["probs"] == sorted(top["probs"], reverse=True)
    assert np.load(out / f"{image.stem}_top3.npy").shape == (3, *size)
    printed = capsys.readouterr().out
    assert "top-3 affordances" in printed and top["affordances"][0] in printed

    with pytest.raises(SystemExit, match=r"unknown affordance 'hodl'\. Did you mean 'hold'\?.*cut_with"):
        script.main(["--checkpoint", ckpt, "--image", str(image), "--affordance", "hodl", "--out", str(out)])


def test_help_and_argument_errors(script, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--config",
        "--checkpoint",
        "--baseline",
        "--split",
        "--out",
        "--viz",
        "--batch-size",
        "--num-workers",
        "--amp",
        "--image",
        "--affordance",
        "--per-object",
        "data.eval_size",
    ):
        assert option in text, option
    with pytest.raises(SystemExit):
        script.parse_args([])  # neither a checkpoint nor a baseline
    assert "give --checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args(["--baseline", "center", "--image", "x.jpg"])
    assert "--image needs --checkpoint" in capsys.readouterr().err


def test_clear_errors_without_traceback(script, world, tmp_path, capsys) -> None:
    assert script.main(["--checkpoint", str(tmp_path / "missing.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    argv = ["--config", str(world["config"]), "--baseline", "center", "--out", str(tmp_path), "data.eval_sise=32"]
    assert script.main(argv) == 2
    assert "data.eval_size" in capsys.readouterr().err  # the closest valid key


@pytest.mark.parametrize("name", ["test.py", "train.py"])
def test_scripts_run_main_only_as_programs(name: str, monkeypatch, capsys) -> None:
    # A command line that main() would act on at once: print the help and exit.
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    spec = importlib.util.spec_from_file_location(f"wsag_import_check_{name[:-3]}", REPO / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # loading it (as a notebook or a test would) runs nothing
    assert capsys.readouterr().out == ""
    assert callable(module.main) and callable(module.parse_args)
    with pytest.raises(SystemExit) as exit_info:  # run as a program, the same file calls main()
        runpy.run_path(str(REPO / name), run_name="__main__")
    assert exit_info.value.code == 0
    assert f"usage: {name}" in capsys.readouterr().out
