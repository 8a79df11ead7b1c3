"""Fault cases: every failure says what was expected, what was found and what to do, or is a counted,
logged skip, and nothing is lost. Cases already covered elsewhere (wrong root, unknown class folders, missing GT,
unreadable training images in the dataset, truncated/foreign checkpoints, backbone files with wrong keys, NaN
losses, interrupted writes by exception) are not repeated here; this file covers what crosses module boundaries:
test.py and train.py end to end, hostile checkpoints, huge images, SIGKILL during training.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import WORLD, tiny_run_args

import train
from datasets.agd20k import AGD20KTrain
from utils.config import ConfigError
from utils.engine.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint
from utils.evaluation.metrics import compute_metrics, prepare_prediction

REPO = Path(__file__).resolve().parents[1]


def tiny(world: Path, out: Path, *extra: str) -> list[str]:
    """The session's tiny run (conftest), one step per epoch and evaluated only at the end."""
    return tiny_run_args(world, out, "train.max_steps_per_epoch=1", "eval.every=0", *extra)


@pytest.fixture(scope="module")
def world(tiny_world: Path) -> Path:
    """The session's tiny synthetic world (Seen and Unseen); copy it before changing it."""
    return tiny_world


@pytest.fixture(scope="module")
def checkpoint(fresh_checkpoint: Path) -> Path:
    """A freshly initialised tiny model saved as a checkpoint (inference needs no training)."""
    return fresh_checkpoint


def _copy(world: Path, dst: Path) -> Path:
    return Path(shutil.copytree(world, dst / "w"))


def _predict(script, checkpoint: Path, image: Path, out: Path, *extra: str) -> int:
    return script.main(["--checkpoint", str(checkpoint), "--image", str(image), "--out", str(out), *extra])


# ============================================================================================== data
def test_missing_split_folder_fails_before_training_any_split(world: Path, tmp_path: Path) -> None:
    root = _copy(world, tmp_path)
    shutil.rmtree(root / "Unseen")
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match=r"(?s)Missing: Unseen/.*Expected layout.*trainset/"):
        train.main(tiny(root, out, "data.splits=[Seen, Unseen]", "data.synthetic.enabled=false"))
    assert not (out / "Seen").exists()  # Seen was not trained (and then lost its time) before Unseen failed


def test_empty_class_folder_is_warned_about_and_ignored(world: Path, tmp_path: Path, caplog) -> None:
    root = _copy(world, tmp_path)
    full = AGD20KTrain(root, "Seen", num_exo=2, image_size=32, resize_size=36)
    empty = root / "Seen/trainset/exocentric/hold/knife"
    for f in empty.iterdir():
        f.unlink()
    (empty / "notes.txt").write_text("not an image")  # a non-image file does not make the folder non-empty
    with caplog.at_level(logging.WARNING, logger="datasets.agd20k"):
        ds = AGD20KTrain(root, "Seen", num_exo=2, image_size=32, resize_size=36)
    assert f"Empty exocentric folder (no images): {empty}" in caplog.text
    assert ("hold", "knife") not in ds.folders and len(ds) == len(full) - WORLD["exo_per_folder"]
    assert torch.isfinite(ds[0]["exo"]).all()


def test_unreadable_images_never_stop_an_epoch(world: Path, tmp_path: Path, caplog) -> None:
    root = _copy(world, tmp_path)
    bad = []
    for folder in sorted((root / "Seen/trainset/exocentric").glob("*/*")):
        victim = sorted(folder.glob("*.jpg"))[0]  # each folder keeps one readable image
        victim.write_bytes(victim.read_bytes()[:200])  # truncated mid-file
        (folder / "Thumbs.db").write_bytes(b"\x00junk")  # non-image files are never read
        bad.append(victim)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="datasets.agd20k"):
        assert train.main(tiny(root, out, "data.synthetic.enabled=false", "train.max_steps_per_epoch=2")) == 0
    assert "Skipping unreadable training image" in caplog.text and "truncated JPEG" in caplog.text
    assert "Thumbs.db" not in caplog.text
    assert load_checkpoint(out / "Seen" / "last.pth")["step"] == 2  # both steps ran


def test_all_zero_gt_gives_defined_counted_metrics(script, world: Path, tmp_path: Path, capsys) -> None:
    root = _copy(world, tmp_path)
    gt = sorted((root / "Seen/testset/GT").rglob("*.png"))[0]
    cv2.imwrite(str(gt), np.zeros((40, 40), np.uint8))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{root: {root}, splits: [Seen], eval_size: 32, num_workers: 0}}\ndevice: cpu\n")
    out = tmp_path / "eval"
    assert script.main(["--config", str(cfg), "--baseline", "center", "--out", str(out), "--no-progress"]) == 0
    seen = json.loads((out / "metrics.json").read_text())["results"]["Seen"]
    assert seen["zero_gt"] == 1 and seen["num_images"] == len(list((root / "Seen/testset/GT").rglob("*.png")))
    assert all(np.isfinite(seen[m]) for m in ("KLD", "SIM", "NSS"))
    records = json.loads((out / "Seen/per_image.json").read_text())
    (record,) = [r for r in records if r["zero_gt"]]
    assert Path(record["path"]).stem == gt.stem and record["affordance"] == gt.parent.parent.name
    assert (record["kld"], record["sim"], record["nss"]) == (0.0, 0.0, 0.0)  # the defined answer, not NaN


# ======================================================================================== checkpoints
class _RunsCode:
    """Pickles as a call of ``exec``: unpickling it with full pickle runs arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).write_text('code ran')",))


def test_a_checkpoint_can_never_run_code(script, world: Path, checkpoint: Path, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    zip_file, legacy = tmp_path / "evil.pth", tmp_path / "evil_legacy.pth"
    torch.save({"format": CHECKPOINT_FORMAT, "model": {}, "x": _RunsCode(marker)}, zip_file)
    with legacy.open("wb") as fh:
        pickle.dump({"format": CHECKPOINT_FORMAT, "x": _RunsCode(marker)}, fh, protocol=2)  # torch's legacy format

    proof = tmp_path / "proof"  # the payload is real: a full unpickling does run it
    torch.save(_RunsCode(proof), tmp_path / "proof.pth")
    torch.load(tmp_path / "proof.pth", weights_only=False)
    assert proof.read_text() == "code ran"

    for path in (zip_file, legacy):
        with pytest.raises(
            CheckpointError,
            match=rf"cannot read checkpoint .*{path.name}.*Unsupported global.*exec.*nothing in the file was run",
        ):
            load_checkpoint(path)
        assert _predict(script, path, tmp_path / "x.jpg", tmp_path / "o") == 2
        assert f"cannot read checkpoint {path}" in capsys.readouterr().err
        with pytest.raises(CheckpointError):
            train.main([*tiny(world, tmp_path / "run"), "--resume", str(path)])
    assert not marker.exists(), "unpickling a checkpoint ran code"


def test_test_py_refuses_a_checkpoint_of_another_configuration(
    script, world: Path, checkpoint: Path, tmp_path: Path, capsys
):
    cfg = tmp_path / "other.yaml"
    cfg.write_text(
        f"data: {{root: {world}, image_size: 32, eval_size: 32}}\n"
        "model:\n  backbone: {kwargs: {img_size: 32, patch_size: 8, embed_dim: 48, depth: 2, num_heads: 2}, "
        "descriptor: token}\n  cls_heads: [0, 1]\ndevice: cpu\n"
    )
    assert script.main(["--config", str(cfg), "--checkpoint", str(checkpoint), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "different model configuration" in err
    assert "model.backbone.descriptor: checkpoint 'key' vs now 'token'" in err
    assert "model.backbone.kwargs" in err and "'embed_dim': 48" in err
    assert "Traceback" not in err


# ================================================================================== inference inputs
def _write(path: Path, array: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), array)
    return path


@pytest.mark.parametrize(
    ("kind", "array"),
    [
        ("gray", np.tile(np.arange(30, dtype=np.uint8) * 8, (20, 1))),  # (20, 30)
        ("rgba", np.dstack([np.full((20, 30, 3), 90, np.uint8), np.zeros((20, 30), np.uint8)])),
        ("16bit", np.tile(np.arange(30, dtype=np.uint16)[None, :, None] * 2000, (20, 1, 3))),
        ("5x5", np.random.default_rng(0).integers(0, 255, (5, 5, 3), dtype=np.uint8)),  # smaller than a patch
    ],
)
def test_unusual_images_give_finite_maps(
    script, checkpoint: Path, tmp_path: Path, kind: str, array: np.ndarray
) -> None:
    image = _write(tmp_path / f"{kind}.png", array)
    assert _predict(script, checkpoint, image, tmp_path, "--affordance", "hold") == 0
    heat = np.load(tmp_path / f"{kind}_hold.npy")
    assert heat.shape == array.shape[:2] and np.isfinite(heat).all()
    assert heat.min() >= 0 and heat.max() <= 1 + 1e-6
    assert _predict(script, checkpoint, image, tmp_path) == 0  # label-free: the top-3 maps
    top = np.load(tmp_path / f"{kind}_top3.npy")
    assert top.shape == (3, *array.shape[:2]) and np.isfinite(top).all()


def test_bad_inference_paths_say_what_to_do(script, checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert _predict(script, checkpoint, tmp_path / "nope.jpg", tmp_path, "--affordance", "hold") == 2
    err = capsys.readouterr().err
    assert f"--image {tmp_path / 'nope.jpg'}: no such file" in err and "Traceback" not in err
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture")
    assert _predict(script, checkpoint, text, tmp_path, "--affordance", "hold") == 2
    err = capsys.readouterr().err
    assert "Could not decode" in err and "notes.jpg" in err and "Delete or replace it" in err
    assert not list(tmp_path.glob("notes*.npy"))


_MEMORY_PROBE = """
import importlib.util, resource, sys
sys.path.insert(0, {repo!r})
spec = importlib.util.spec_from_file_location("probe_test_script", {script!r})
ts = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ts)
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
for image in sys.argv[1:]:
    before = peak_mb()
    assert ts.main(["--checkpoint", {ckpt!r}, "--image", image, "--out", {out!r}, "--affordance", "hold"]) == 0
    print("GROWTH", image, peak_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux only")
def test_huge_image_is_shrunk_while_decoding(script, checkpoint: Path, tmp_path: Path) -> None:
    h, w = 6000, 8000
    float32_copy_mb = h * w * 3 * 4 / 2**20  # 549 MiB: what a full-size float conversion would cost
    row = (np.arange(w, dtype=np.uint16) * 7 % 256).astype(np.uint8)
    big = np.empty((h, w, 3), np.uint8)
    big[:] = row[None, :, None]  # a cheap, compressible picture
    jpg = _write(tmp_path / "huge.jpg", big)
    png = _write(tmp_path / "huge.png", big)
    del big
    small = _write(tmp_path / "small.png", np.full((40, 40, 3), 128, np.uint8))  # warm-up: imports, model, caches
    out = tmp_path / "out"
    code = _MEMORY_PROBE.format(repo=str(REPO), script=str(REPO / "test.py"), ckpt=str(checkpoint), out=str(out))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(small), str(jpg), str(png)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    growth = {
        Path(line.split()[1]).name: float(line.split()[2]) for line in proc.stdout.splitlines() if "GROWTH" in line
    }
    # A JPEG is decoded at reduced scale: even a full-size uint8 decode (1/4 of the float copy) would fail this.
    assert growth["huge.jpg"] < float32_copy_mb / 4, growth
    # Other formats are decoded at full size in uint8 (libpng) and shrunk at once, never converted to float.
    assert growth["huge.png"] < float32_copy_mb * 0.75, growth
    for name in ("huge.jpg", "huge.png"):
        heat = np.load(out / f"{Path(name).stem}_hold.npy")
        side = script.MAX_IMAGE_SIDE
        assert heat.shape == (side * h // w, side) and np.isfinite(heat).all()


# ================================================================================ interrupted training
def _tmp_files(split_dir: Path) -> list[Path]:
    return sorted(split_dir.glob(".*.tmp"))


def _wait_for(predicate, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(
                f"train.py ended (rc {proc.returncode}) before the awaited moment:\n{proc.stderr.read()}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for train.py")
        time.sleep(0.02)


@pytest.mark.timeout(150)
def test_sigkill_at_any_moment_leaves_a_resumable_last_pth(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    split_dir = out / "Seen"
    args = tiny(world, out, "train.epochs=8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    rng = np.random.default_rng()

    # 1. killed at a random moment once a checkpoint exists (mid-step, mid-write or mid-log, whatever comes)
    cmd = [sys.executable, str(REPO / "train.py"), *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (split_dir / "last.pth").is_file(), proc, 90)
    time.sleep(float(rng.uniform(0.0, 0.2)))
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    first = load_checkpoint(split_dir / "last.pth")
    assert 1 <= first["epoch"] <= 8

    # 2. resumed, then killed inside a checkpoint write (the test hook holds the temporary file open for 2 s)
    env["WSAG_TEST_CHECKPOINT_WRITE_DELAY"] = "2"
    proc = subprocess.Popen(
        [*cmd, "--resume", "auto"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if first["epoch"] < 8:
        left_by_first_kill = set(_tmp_files(split_dir))  # a kill mid-write leaves one (removed on resume)
        _wait_for(lambda: bool(set(_tmp_files(split_dir)) - left_by_first_kill), proc, 90)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        stray = _tmp_files(split_dir)
        assert stray and all(p.name.startswith(".last.pth.") for p in stray)  # killed mid-write, leftover kept
        second = load_checkpoint(split_dir / "last.pth")  # the previous checkpoint, whole
        assert second["epoch"] >= first["epoch"]
        assert second["format"] == CHECKPOINT_FORMAT
    else:  # the first kill came after the last epoch: the resume has nothing left to train
        assert proc.wait(90) == 0

    # 3. `--resume auto` finishes the run; the unfinished write is removed, never read
    assert train.main([*args, "--resume", "auto"]) == 0
    final = load_checkpoint(split_dir / "last.pth")
    assert (final["epoch"], final["step"]) == (8, 8)
    assert _tmp_files(split_dir) == []
    assert json.loads((split_dir / "metrics.json").read_text())["model"]["last_epoch"]["epoch"] == 8
    epochs = [json.loads(x)["epoch"] for x in (split_dir / "log.jsonl").read_text().splitlines() if x.strip()]
    assert epochs == list(range(1, 9))  # one line per epoch: nothing lost, nothing doubled


# ================================================================================= numerical faults
def test_metrics_are_never_nan_on_edge_inputs() -> None:
    rng = np.random.default_rng(0)
    cases = []
    for size in (1, 2, 7):
        shape = (size, size)
        for pred in (np.zeros(shape), np.ones(shape), np.full(shape, 1e-30), rng.random(shape)):
            for gt in (np.zeros(shape), np.ones(shape), rng.random(shape), (rng.random(shape) > 0.9) * 1.0):
                cases.append((pred, gt))
    for pred, gt in cases:
        p = prepare_prediction(torch.from_numpy(pred)[None], pred.shape)  # min-max: constant maps too
        m = compute_metrics(p, torch.from_numpy(gt)[None])
        for name, value in m.items():
            assert torch.isfinite(value).all(), (name, pred, gt)
    # a 1x1 map upsampled to the evaluation size
    up = prepare_prediction(torch.tensor([[[0.3]]]), 32)
    assert up.shape == (1, 32, 32) and torch.isfinite(up).all()


# ===================================================================================== configuration
@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.batch_size=-1", r"train\.batch_size=-1 is invalid: expected a positive integer"),
        ("data.num_exo=0", r"data\.num_exo=0 is invalid"),
        ("data.image_size=30", r"data\.image_size=30 is invalid: expected a multiple of the patch size 8.*=24"),
        ("model.backbone.name=vit_smal_patch16_224", r"not a timm model\. Closest: vit_small_patch16_224"),
    ],
)
def test_nonsense_configuration_fails_before_any_work(world: Path, tmp_path: Path, override: str, pattern: str):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=pattern):
        train.main([*tiny(world, out), override])
    assert not out.exists()  # no run folder, no checkpoint
