"""Tests for datasets.synthetic: a deterministic, AGD20K-shaped, learnable-but-honest world."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets import synthetic
from datasets.synthetic import (
    AFFORDANCE_PART,
    HELD_OUT_OBJECTS,
    MANIFEST_NAME,
    MARKER_NAME,
    OBJECT_SPECS,
    PART_TYPES,
    PARTIAL_NAME,
    DamagedWorldError,
    ForeignFilesError,
    ensure_world,
    generate_world,
    world_layout,
)
from datasets.synthetic.render import _render_job

TINY = dict(image_size=48, exo_per_folder=2, ego_per_folder=2, test_per_folder=2, progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), seed=0, **TINY)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers_different_seed_different(tmp_path, capsys):
    args = ["--seed", "3", "--image-size", "32", "--exo", "1", "--ego", "1", "--test", "1"]
    assert synthetic.main(["--out", str(tmp_path / "a"), *args]) == 0  # the CLI, in this process
    assert "ready" in capsys.readouterr().out
    assert json.loads((tmp_path / "a" / MARKER_NAME).read_text())["seed"] == 3
    kw = dict(image_size=32, exo_per_folder=1, ego_per_folder=1, test_per_folder=1, progress=False)
    b = _files(generate_world(tmp_path / "b", seed=3, workers=2, **kw))  # two worker processes
    a = _files(tmp_path / "a")
    assert len(a) > 200 and a == b
    # another seed: every file set differs (rendered in memory; writing a third world costs only disk time)
    for aff, obj in world_layout().seen_pairs:
        for kind in ("exo", "ego", "test"):
            x = _render_job((kind, aff, obj, 0, 3, 32))
            y = _render_job((kind, aff, obj, 0, 4, 32))
            assert all(x[k] != y[k] for k in x)


def test_layout_is_agd20k(world):
    layout = world_layout()
    classes = json.loads((world / "classes.json").read_text())
    assert classes == {"Seen": layout.seen_affordances, "Unseen": layout.unseen_affordances, "objects": layout.objects}
    for split, pairs, test_pairs in (
        ("Seen", layout.seen_pairs, layout.seen_pairs),
        ("Unseen", layout.unseen_train_pairs, layout.unseen_test_pairs),
    ):
        base = world / split
        for aff, obj in pairs:
            assert len(list((base / "trainset/exocentric" / aff / obj).glob("*.jpg"))) == 2
            assert len(list((base / "trainset/egocentric" / aff / obj).glob("*.jpg"))) == 2
            for img in (base / "trainset/egocentric" / aff / obj).glob("*.jpg"):
                part = cv2.imread(str(base / "masks/train_part" / aff / obj / f"{img.stem}.png"), cv2.IMREAD_GRAYSCALE)
                assert part is not None and part.shape == (48, 48) and part.max() == 255  # the part is visible
        for aff, obj in test_pairs:
            for img in (base / "testset/egocentric" / aff / obj).glob("*.jpg"):
                assert (base / "testset/GT" / aff / obj / f"{img.stem}.png").is_file()
                assert (base / "masks/object" / aff / obj / f"{img.stem}.png").is_file()
                assert (base / "masks/part" / aff / obj / f"{img.stem}.png").is_file()
        assert {p.name for p in (base / "trainset/exocentric").iterdir()} <= set(classes[split])
    img = cv2.imread(str(next((world / "Seen/trainset/exocentric").rglob("*.jpg"))))
    assert img.shape == (48, 48, 3)
    for name in ("README.txt", "contact_sheet.png", MARKER_NAME):
        assert (world / name).is_file()
    assert "seed" in (world / "README.txt").read_text()


def test_world_definition_is_sensible():
    layout = world_layout()
    assert 8 <= len(layout.seen_affordances) <= 12
    assert 12 <= len(layout.objects) <= 16
    assert set(layout.unseen_affordances) < set(layout.seen_affordances)  # a proper subset
    # several objects carry affordances on different parts, so the object alone never tells the part
    multi = [o for o, s in OBJECT_SPECS.items() if len({AFFORDANCE_PART[a] for a in s.affordances}) > 1]
    assert len(multi) >= 6
    # every affordance-bearing part type appears on at least two object categories
    for ptype in set(AFFORDANCE_PART.values()) - {"cap", "spout", "mattress", "seat"}:
        assert sum(ptype in s.part_types for s in OBJECT_SPECS.values()) >= 2, ptype
    assert set(HELD_OUT_OBJECTS) <= set(OBJECT_SPECS)


def test_unseen_test_objects_never_in_unseen_training(world):
    base = world / "Unseen"
    train_objs = {p.name for sub in ("exocentric", "egocentric") for p in (base / "trainset" / sub).glob("*/*")}
    test_objs = {p.name for p in (base / "testset/egocentric").glob("*/*")}
    assert test_objs == set(HELD_OUT_OBJECTS)
    assert not train_objs & test_objs
    unseen_affs = set(json.loads((world / "classes.json").read_text())["Unseen"])
    test_affs = {p.name for p in (base / "testset/egocentric").iterdir()}
    train_affs = {p.name for p in (base / "trainset/exocentric").iterdir()}
    assert test_affs <= train_affs == unseen_affs


def test_gt_peak_lies_inside_the_part(world):
    fractions = []
    for split in ("Seen", "Unseen"):
        for gt_path in sorted((world / split / "testset/GT").rglob("*.png")):
            rel = gt_path.relative_to(world / split / "testset/GT")
            gt = cv2.imread(str(gt_path), cv2.IMREAD_UNCHANGED)
            part = cv2.imread(str(world / split / "masks/part" / rel), cv2.IMREAD_UNCHANGED)
            obj = cv2.imread(str(world / split / "masks/object" / rel), cv2.IMREAD_UNCHANGED)
            assert gt.dtype == np.uint8 and gt.ndim == 2 and gt.max() == 255
            assert set(np.unique(part)) <= {0, 255} and part.any()
            assert not (part & ~obj).any()  # the part is inside the object
            y, x = np.unravel_index(int(np.argmax(gt)), gt.shape)
            assert part[y, x] == 255, f"GT peak off the part in {gt_path}"
            # a good share of the heat sits on the part (the blur spills some, as in AGD20K)
            fractions.append(gt[part > 0].astype(float).sum() / gt.astype(float).sum())
    assert len(fractions) == 2 * (len(world_layout().seen_pairs) + len(world_layout().unseen_test_pairs))
    assert min(fractions) > 0.25 and np.mean(fractions) > 0.45


def test_part_types_are_recognisable_across_objects():
    """The mean colour of an affordance part is nearest to its own part type's palette (parts stay learnable).

    Rendered in memory at 96 px and passed through the same JPEG encoding as the files (at 48 px JPEG chroma
    subsampling smears the thinnest parts into their outlines).
    """
    palette = {t: (np.asarray(p.color, float) + np.asarray(p.color2, float)) / 2 for t, p in PART_TYPES.items()}
    hits = total = 0
    for aff, obj in world_layout().seen_pairs:
        data = _render_job(("test", aff, obj, 0, 0, 96))
        img = cv2.cvtColor(cv2.imdecode(np.frombuffer(data["image"], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        part = cv2.imdecode(np.frombuffer(data["part"], np.uint8), cv2.IMREAD_GRAYSCALE)
        inner = cv2.erode(part, np.ones((3, 3), np.uint8)) > 0  # skip the dark outline
        rgb = img[inner].astype(float).mean(0)
        nearest = min(palette, key=lambda t: np.linalg.norm(palette[t] - rgb))
        hits += nearest == AFFORDANCE_PART[aff]
        total += 1
    assert total == len(world_layout().seen_pairs) and hits / total > 0.85


SMALL = dict(image_size=16, exo_per_folder=1, ego_per_folder=1, test_per_folder=1, progress=False)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> Path:
    """A 16-px world with one image per folder, to be copied by the tests that change it."""
    return generate_world(tmp_path_factory.mktemp("small") / "w", seed=0, **SMALL)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _no_writes(monkeypatch) -> None:
    """Make any attempt to write a world fail the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the world was written again")

    monkeypatch.setattr(synthetic.generate, "_write", forbidden)


def test_manifest_lists_every_file_and_a_complete_world_is_reused(small_world, tmp_path, monkeypatch, caplog):
    manifest = json.loads((small_world / MANIFEST_NAME).read_text())
    files = {k: len(v) for k, v in _files(small_world).items() if k not in (MARKER_NAME, MANIFEST_NAME)}
    assert manifest["files"] == files and len(files) > 200
    assert manifest["params"] == json.loads((small_world / MARKER_NAME).read_text())
    assert not (small_world / PARTIAL_NAME).exists()
    root = _copy(small_world, tmp_path / "w")
    (root / "Seen" / "my_notes.txt").write_text("reusing never touches other files")
    _no_writes(monkeypatch)
    with caplog.at_level(logging.INFO, logger="datasets.synthetic"):
        assert ensure_world(root, seed=0, **SMALL) == root
    assert "already present" in caplog.text and f"{len(files)} files checked" in caplog.text


def test_damaged_world_is_reported_never_regenerated_silently(small_world, tmp_path, monkeypatch, capsys):
    root = _copy(small_world, tmp_path / "w")
    jpg = next(iter(sorted((root / "Seen/testset/egocentric").rglob("*.jpg"))))
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])  # a truncated image
    gt = next(iter(sorted((root / "Seen/testset/GT").rglob("*.png"))))
    gt.unlink()  # a deleted GT map
    with monkeypatch.context() as m:
        _no_writes(m)
        with pytest.raises(DamagedWorldError) as err:
            ensure_world(root, seed=0, **SMALL)
    msg = str(err.value)
    assert "2 of its" in msg and jpg.relative_to(root).as_posix() in msg and gt.relative_to(root).as_posix() in msg
    assert f"expected {len(data)}" in msg and "(missing)" in msg
    assert "delete the folder" in msg and "--regenerate" in msg and "regenerate=True" in msg
    assert jpg.read_bytes() == data[: len(data) // 2] and not gt.exists()  # nothing was touched
    args = ["--out", str(root), "--seed", "0", "--image-size", "16", "--exo", "1", "--ego", "1", "--test", "1"]
    assert synthetic.main(args) == 2 and "damaged" in capsys.readouterr().err  # the CLI says it too
    assert synthetic.main([*args, "--regenerate"]) == 0  # asked for: the same bytes as before
    assert _files(root) == _files(small_world)


def test_many_damaged_files_are_quoted_with_a_count(small_world, tmp_path):
    root = _copy(small_world, tmp_path / "w")
    gts = sorted((root / "Seen/testset/GT").rglob("*.png"))
    for p in gts:
        p.unlink()
    with pytest.raises(DamagedWorldError, match=rf"{len(gts)} of its .* and {len(gts) - 5} more"):
        ensure_world(root, seed=0, **SMALL)


def test_world_with_other_parameters_is_regenerated_and_says_why(small_world, tmp_path, caplog):
    root = _copy(small_world, tmp_path / "w")
    with caplog.at_level(logging.INFO, logger="datasets.synthetic"):
        ensure_world(root, seed=1, **SMALL)
    assert "other parameters (seed 0 -> 1)" in caplog.text
    assert json.loads((root / MARKER_NAME).read_text())["seed"] == 1
    assert ensure_world(root, seed=1, **SMALL) == root  # and now it is complete
    kw = {**SMALL, "exo_per_folder": 2}
    ensure_world(root, seed=1, **kw)  # more files: the old manifest's files are replaced, nothing is left over
    assert set(_files(root)) == set(json.loads((root / MANIFEST_NAME).read_text())["files"]) | {
        MARKER_NAME,
        MANIFEST_NAME,
    }


def test_interrupted_generation_is_cleaned_up_and_regenerated(small_world, tmp_path, monkeypatch, caplog):
    root = _copy(small_world, tmp_path / "w")
    calls = []

    def dies_midway(job):
        calls.append(job)
        if len(calls) > 30:
            raise KeyboardInterrupt
        return _render_job(job)

    with monkeypatch.context() as m:
        m.setattr(synthetic.generate, "_render_job", dies_midway)
        with pytest.raises(KeyboardInterrupt):
            generate_world(root, seed=2, **SMALL)
    assert (root / PARTIAL_NAME).is_file() and not (root / MARKER_NAME).exists()
    with caplog.at_level(logging.INFO, logger="datasets.synthetic"):
        ensure_world(root, seed=2, **SMALL)
    assert "interrupted" in caplog.text and not (root / PARTIAL_NAME).exists()
    assert ensure_world(root, seed=2, **SMALL) == root


def test_foreign_files_make_it_refuse_even_when_asked_to_regenerate(small_world, tmp_path, monkeypatch):
    root = _copy(small_world, tmp_path / "w")
    (root / "Seen" / "trainset" / "notes.txt").write_text("mine")
    _no_writes(monkeypatch)
    for regenerate in (False, True):
        with pytest.raises(ForeignFilesError, match=r"did not write .*\(1\): Seen/trainset/notes\.txt"):
            ensure_world(root, seed=1, regenerate=regenerate, **SMALL)  # other parameters: would regenerate
    with pytest.raises(ForeignFilesError, match="notes"):
        generate_world(root, seed=0, **SMALL)
    assert (root / "Seen" / "trainset" / "notes.txt").read_text() == "mine"
    assert json.loads((root / MARKER_NAME).read_text())["seed"] == 0

    real_data = tmp_path / "agd"  # no marker at all: every entry is foreign, even an empty folder tree
    (real_data / "Seen" / "trainset").mkdir(parents=True)
    with pytest.raises(ForeignFilesError, match="Seen/"):
        ensure_world(real_data, **SMALL)
    (real_data / "Seen" / "trainset" / "a.jpg").write_bytes(b"x")
    with pytest.raises(ForeignFilesError, match=r"Seen/trainset/a\.jpg.*nothing was changed"):
        generate_world(real_data, **SMALL)
    assert (real_data / "Seen" / "trainset" / "a.jpg").read_bytes() == b"x"


def test_missing_or_empty_folder_is_generated(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    with caplog.at_level(logging.INFO, logger="datasets.synthetic"):
        ensure_world(tmp_path / "empty", **SMALL)
        ensure_world(tmp_path / "new", **SMALL)
    assert "the folder is empty" in caplog.text and "the folder does not exist" in caplog.text
    assert (tmp_path / "empty" / MARKER_NAME).is_file() and (tmp_path / "new" / MANIFEST_NAME).is_file()


def test_world_without_manifest_is_checked_whole_then_reused(small_world, tmp_path, monkeypatch, caplog):
    root = _copy(small_world, tmp_path / "w")
    (root / MANIFEST_NAME).unlink()  # as a world written before manifests existed
    _no_writes(monkeypatch)
    with caplog.at_level(logging.INFO, logger="datasets.synthetic"):
        ensure_world(root, seed=0, **SMALL)
    assert "every file checked whole" in caplog.text
    assert (root / MANIFEST_NAME).read_bytes() == (small_world / MANIFEST_NAME).read_bytes()
    (root / MANIFEST_NAME).unlink()
    jpg = next(iter(sorted((root / "Seen/trainset/exocentric").rglob("*.jpg"))))
    jpg.write_bytes(jpg.read_bytes()[:-40])  # cut short: no end-of-image marker
    with pytest.raises(DamagedWorldError, match=r"truncated JPEG"):
        ensure_world(root, seed=0, **SMALL)


def test_bad_parameters_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        generate_world(tmp_path / "bad", image_size=8, progress=False)
    with pytest.raises(ValueError, match="must all be >= 1"):
        generate_world(tmp_path / "bad", exo_per_folder=0, progress=False)
