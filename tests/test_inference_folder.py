"""Tests of utils/inference/folder.py: a folder or a video's frames in batches, outputs, manifest, unreadable files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from inference_world import make_tiny_run

from utils.inference import Predictor
from utils.inference.folder import main


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    return make_tiny_run(tmp_path_factory.mktemp("folder"))


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def photos(tmp_path) -> dict[str, Path]:
    """Readable images of several sizes and formats, two damaged ones, a note, a sub-folder, a name clash."""
    root = tmp_path / "photos"
    files = {
        "a": _write(root / "a.jpg", _rgb(40, 60, 0)),
        "b": _write(root / "b.png", _rgb(33, 21, 1)),
        "clash_jpg": _write(root / "c.jpg", _rgb(30, 30, 2)),
        "clash_png": _write(root / "c.png", _rgb(30, 30, 3)),
        "nested": _write(root / "sub" / "d.jpg", _rgb(50, 20, 4)),
    }
    cut = _write(root / "cut.jpg", _rgb(40, 40, 5))
    cut.write_bytes(cut.read_bytes()[:200])  # truncated
    (root / "fake.png").write_text("not an image")
    (root / "notes.txt").write_text("a note")
    return {"root": root, "cut": cut, **files}


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_folder_writes_overlays_maps_and_a_manifest(run, photos, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["--checkpoint", str(run["checkpoint"]), "--input", str(photos["root"]), "--out", str(out)]
    assert main([*argv, "--affordance", "hold", "cut with", "--recursive", "--batch-size", "2", "--no-progress"]) == 0
    m = _manifest(out)
    assert m["counts"] == {"inputs": 7, "predicted": 5, "unreadable": 2, "ignored": 1}
    assert m["ignored"] == ["notes.txt"] and m["mode"] == "affordance" and m["affordances"] == ["hold", "cut_with"]
    assert [u.split(":")[0] for u in m["unreadable"]] == ["cut.jpg", "fake.png"]
    assert "truncated JPEG" in m["unreadable"][0] and "Could not decode" in m["unreadable"][1]
    assert m["timing"]["images_per_s"] > 0
    ok = {r["file"]: r for r in m["images"] if r["status"] == "ok"}
    assert sorted(ok) == ["a.jpg", "b.png", "c.jpg", "c.png", "sub/d.jpg"]

    predictor = Predictor.from_checkpoint(run["checkpoint"], device="cpu")
    names = {"a.jpg": "a", "b.png": "b", "c.jpg": "c_jpg", "c.png": "c_png", "sub/d.jpg": "sub__d"}
    for file, stem in names.items():
        rec = ok[file]
        image = cv2.cvtColor(cv2.imread(str(photos["root"] / file)), cv2.COLOR_BGR2RGB)
        assert (rec["height"], rec["width"]) == image.shape[:2]
        expected = predictor.predict(image, affordance=["hold", "cut_with"])
        assert [p["affordance"] for p in rec["predictions"]] == ["hold", "cut_with"]
        for k, p in enumerate(rec["predictions"]):
            assert p["overlay"] == f"{stem}_{p['affordance']}.png" and p["map"] == f"{stem}_{p['affordance']}.npy"
            heat = np.load(out / p["map"])
            assert heat.dtype == np.float16 and heat.shape == image.shape[:2]
            np.testing.assert_allclose(heat.astype(np.float32), expected.maps[0][k], atol=1e-3)
            assert cv2.imread(str(out / p["overlay"])).shape[:2] == image.shape[:2]
            j = predictor.class_names.index(p["affordance"])
            assert p["probability"] == pytest.approx(float(expected.probs[0, j]), abs=1e-5)
        assert rec["predicted"] == expected.predicted[0]

    rows = list(csv.DictReader((out / "manifest.csv").read_text().splitlines()))
    assert len(rows) == 5 * 2 + 2  # one row per (image, affordance), one per unreadable file
    bad = [r for r in rows if r["status"] == "unreadable"]
    assert [r["file"] for r in bad] == ["cut.jpg", "fake.png"] and all(r["error"] for r in bad)
    printed = capsys.readouterr().out
    assert "5 of 7 inputs predicted" in printed and "2 unreadable" in printed and "unreadable: cut.jpg" in printed


def test_top_k_without_affordance_and_one_npz(run, photos, tmp_path) -> None:
    out = tmp_path / "out"
    argv = ["--checkpoint", str(run["checkpoint"]), "--input", str(photos["root"]), "--out", str(out)]
    assert main([*argv, "--top-k", "2", "--maps", "npz", "--map-dtype", "float32", "--no-progress"]) == 0
    m = _manifest(out)
    assert m["mode"] == "top-2" and m["counts"]["predicted"] == 4  # not recursive: sub/d.jpg is not read
    maps = np.load(out / "maps.npz")
    for rec in (r for r in m["images"] if r["status"] == "ok"):
        preds = rec["predictions"]
        assert [p["rank"] for p in preds] == [1, 2] and preds[0]["affordance"] == rec["predicted"]
        assert preds[0]["probability"] >= preds[1]["probability"]
        for p in preds:
            key = p["map"].split(":", 1)[1]
            assert p["map"].startswith("maps.npz:") and maps[key].dtype == np.float32
            assert maps[key].shape == (rec["height"], rec["width"])
    assert not list(out.glob("*.npy"))


def test_nothing_readable_exits_1_and_bad_requests_exit_2(run, tmp_path, capsys) -> None:
    root = tmp_path / "broken"
    root.mkdir()
    (root / "x.jpg").write_bytes(b"\xff\xd8garbage")
    ckpt = ["--checkpoint", str(run["checkpoint"]), "--no-progress"]
    assert main([*ckpt, "--input", str(root), "--out", str(tmp_path / "o1")]) == 1
    assert _manifest(tmp_path / "o1")["counts"]["unreadable"] == 1
    assert "no readable image" in capsys.readouterr().err

    assert main([*ckpt, "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main([*ckpt, "--input", str(root), "--out", str(tmp_path / "o3"), "--affordance", "hodl"]) == 2
    assert "Did you mean 'hold'?" in capsys.readouterr().err
    (tmp_path / "one.jpg").write_bytes(b"")
    assert main([*ckpt, "--input", str(tmp_path / "one.jpg"), "--out", str(tmp_path / "o4")]) == 2
    assert "not a video" in capsys.readouterr().err
    (tmp_path / "fake.mp4").write_text("not a video")
    assert main([*ckpt, "--input", str(tmp_path / "fake.mp4"), "--out", str(tmp_path / "o5")]) == 2
    assert "cannot open video" in capsys.readouterr().err


def _video(path: Path, frames: int = 11) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 40))
    assert writer.isOpened()
    for i in range(frames):
        frame = np.zeros((40, 48, 3), np.uint8)
        frame[:, : 4 * i] = (40, 200, 90)  # a bar that grows frame by frame
        writer.write(frame)
    writer.release()
    return path


def test_video_frames_every_n_with_an_overlay_video(run, tmp_path) -> None:
    clip = _video(tmp_path / "clip.avi")
    out = tmp_path / "out"
    argv = ["--checkpoint", str(run["checkpoint"]), "--input", str(clip), "--out", str(out), "--no-progress"]
    assert main([*argv, "--affordance", "hold", "--every", "3", "--overlay-video"]) == 0
    m = _manifest(out)
    assert m["kind"] == "video" and [r["frame"] for r in m["images"]] == [0, 3, 6, 9]
    assert all(r["file"] == "clip.avi" and (r["height"], r["width"]) == (40, 48) for r in m["images"])
    assert (out / "frame_000009_hold.png").is_file() and np.load(out / "frame_000006_hold.npy").shape == (40, 48)
    cap = cv2.VideoCapture(str(out / m["overlay_video"]))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    ok, frame = cap.read()
    assert ok and frame.shape[:2] == (40, 48)
    cap.release()

    out2 = tmp_path / "out2"
    assert main([*argv[:-3], "--out", str(out2), "--no-progress", "--max-frames", "2", "--no-overlays"]) == 0
    m2 = _manifest(out2)
    assert [r["frame"] for r in m2["images"]] == [0, 1] and not list(out2.glob("*.png"))
