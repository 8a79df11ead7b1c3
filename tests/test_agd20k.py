"""Tests for datasets.agd20k: class lists, training pairs, the test set protocol and the dataset checker."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datasets.agd20k import (
    OBJECTS,
    SEEN_AFFORDANCES,
    UNSEEN_AFFORDANCES,
    AGD20KTest,
    AGD20KTrain,
    load_class_names,
    main,
    summarize,
)
from datasets.synthetic import generate_world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(
        tmp_path_factory.mktemp("world"),
        seed=0,
        image_size=48,
        exo_per_folder=3,
        ego_per_folder=2,
        test_per_folder=2,
        progress=False,
    )


def _copy(world: Path, tmp_path: Path) -> Path:
    """A modifiable copy of the Seen split (deleting files is slow on some disks: copy only what is needed)."""
    root = tmp_path / "copy"
    shutil.copytree(world / "Seen", root / "Seen")
    shutil.copy(world / "classes.json", root / "classes.json")
    return root


def _jpg(path: Path, size: int = 20, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack([xx * 5 + value, yy * 5, np.full_like(xx, value)], -1).clip(0, 255).astype(np.uint8)
    cv2.imwrite(str(path), img)
    return path


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), array)
    return path


def test_standard_class_lists():
    assert len(SEEN_AFFORDANCES) == 36 and len(UNSEEN_AFFORDANCES) == 25 and len(OBJECTS) == 50
    for names in (SEEN_AFFORDANCES, UNSEEN_AFFORDANCES, OBJECTS):
        assert list(names) == sorted(names) and len(set(names)) == len(names)
    assert set(UNSEEN_AFFORDANCES) < set(SEEN_AFFORDANCES)
    assert "write" not in UNSEEN_AFFORDANCES and "swing" in UNSEEN_AFFORDANCES


# ------------------------------------------------------------------------------------------------ class lists
def test_class_names_from_classes_json(world):
    classes = json.loads((world / "classes.json").read_text())
    assert load_class_names(world, "Seen") == classes["Seen"]
    assert load_class_names(world, "Unseen") == classes["Unseen"]


def test_class_names_standard_and_from_folders(tmp_path):
    agd = tmp_path / "agd"
    _jpg(agd / "Seen/trainset/exocentric/hold/knife/a.jpg")
    assert load_class_names(agd, "Seen") == list(SEEN_AFFORDANCES)  # AGD20K names: the published 36 classes
    custom = tmp_path / "custom"
    for aff in ("squeeze", "grasp"):
        _jpg(custom / f"Seen/trainset/exocentric/{aff}/sponge/a.jpg")
    assert load_class_names(custom, "Seen") == ["grasp", "squeeze"]


def test_unknown_folder_is_an_error_that_lists_it(tmp_path, world):
    agd = tmp_path / "agd"
    _jpg(agd / "Seen/trainset/exocentric/hold/knife/a.jpg")
    _jpg(agd / "Seen/testset/egocentric/hodl/knife/b.jpg")  # a typo
    with pytest.raises(ValueError, match=r"not in the class list.*testset/egocentric/hodl.*classes\.json"):
        load_class_names(agd, "Seen")
    root = _copy(world, tmp_path)
    (root / "classes.json").write_text(json.dumps({"Seen": ["hold", "cut_with"]}))
    with pytest.raises(ValueError, match=r"not in the class list.*kick"):
        AGD20KTrain(root, "Seen", image_size=32, resize_size=40)
    (root / "Unseen/trainset/exocentric/hold/knife").mkdir(parents=True)
    with pytest.raises(ValueError, match="no class list for split 'Unseen'"):
        load_class_names(root, "Unseen")
    with pytest.raises(ValueError, match=r"class_names argument.*open"):
        AGD20KTest(world, "Seen", class_names=["hold"])


def test_wrong_root_shows_the_layout(tmp_path, world):
    with pytest.raises(FileNotFoundError, match=r"(?s)Missing: Seen/trainset/exocentric/.*Expected layout.*GT/"):
        AGD20KTrain(tmp_path / "nowhere", "Seen")
    with pytest.raises(FileNotFoundError, match="looks like a split folder itself"):
        AGD20KTest(world / "Seen", "Seen")
    with pytest.raises(FileNotFoundError, match="Expected layout"):
        load_class_names(tmp_path, "Seen")


# ------------------------------------------------------------------------------------------------ training
def test_train_item_shapes_and_pairing(world):
    ds = AGD20KTrain(world, "Seen", num_exo=3, image_size=32, resize_size=40, seed=0)
    assert len(ds) == 3 * sum(1 for _ in (world / "Seen/trainset/exocentric").glob("*/*"))
    assert ds.class_names == json.loads((world / "classes.json").read_text())["Seen"]
    for index in (0, 7, len(ds) - 1):
        item = ds[index]
        assert item["exo"].shape == (3, 3, 32, 32) and item["exo"].dtype == torch.float32
        assert item["ego"].shape == (3, 32, 32) and item["ego"].dtype == torch.float32
        aff, obj = item["affordance"], item["object"]
        assert item["label"] == ds.class_names.index(aff)
        exo_dir = world / "Seen/trainset/exocentric" / aff / obj
        assert [Path(p).parent for p in item["exo_paths"]] == [exo_dir] * 3  # partners from the anchor's folder
        assert len(set(item["exo_paths"])) == 3  # folder of 3 images: anchor + 2 distinct partners
        assert Path(item["ego_path"]).parent == world / "Seen/trainset/egocentric" / aff / obj
    assert ds.skipped == 0 and ds.ego_fallbacks == []
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["exo"].shape == (4, 3, 3, 32, 32) and batch["label"].dtype == torch.int64


def test_small_folder_repeats_images(world):
    ds = AGD20KTrain(world, "Seen", num_exo=5, image_size=32, resize_size=40)
    item = ds[0]
    assert item["exo"].shape[0] == 5 and len(item["exo_paths"]) == 5
    assert len({Path(p).parent for p in item["exo_paths"]}) == 1


def test_set_epoch_reproducibility_across_workers(world):
    ds = AGD20KTrain(world, "Seen", num_exo=2, image_size=32, resize_size=40, seed=5)
    ds.set_epoch(2)
    a = [ds[i] for i in range(6)]
    b = [ds[i] for i in range(6)]
    assert all(torch.equal(x["exo"], y["exo"]) and x["ego_path"] == y["ego_path"] for x, y in zip(a, b))
    ds.set_epoch(3)
    c = [ds[i] for i in range(6)]
    assert not all(torch.equal(x["exo"], y["exo"]) for x, y in zip(a, c))  # a new epoch, new pairs/crops
    other_seed = AGD20KTrain(world, "Seen", num_exo=2, image_size=32, resize_size=40, seed=6)
    other_seed.set_epoch(3)
    assert not all(torch.equal(x["ego"], other_seed[i]["ego"]) for i, x in enumerate(c))
    # two persistent workers load the same items as the main process, and follow set_epoch
    loader = DataLoader(ds, batch_size=6, num_workers=2, persistent_workers=True)
    batch = next(iter(loader))
    assert torch.equal(batch["exo"], torch.stack([x["exo"] for x in c]))
    assert torch.equal(batch["ego"], torch.stack([x["ego"] for x in c]))
    ds.set_epoch(2)
    batch = next(iter(loader))
    assert torch.equal(batch["exo"], torch.stack([x["exo"] for x in a]))
    del batch, loader  # shut the persistent workers down now, not at interpreter exit


def test_missing_ego_folder_falls_back_to_the_affordance(world, tmp_path, caplog):
    root = _copy(world, tmp_path)
    shutil.rmtree(root / "Seen/trainset/egocentric/hold/knife")
    with caplog.at_level(logging.WARNING, logger="datasets.agd20k"):
        ds = AGD20KTrain(root, "Seen", image_size=32, resize_size=40)
    assert ds.ego_fallbacks == ["hold/knife"]
    assert "no matching egocentric folder" in caplog.text
    index = next(i for i, (f, _) in enumerate(ds.samples) if ds.folders[f] == ("hold", "knife"))
    ego = Path(ds[index]["ego_path"])
    assert ego.parent.parent.name == "hold" and ego.parent.name != "knife"
    for obj_dir in list((root / "Seen/trainset/egocentric/hold").iterdir()):
        shutil.rmtree(obj_dir)
    with pytest.raises(ValueError, match=r"No egocentric training image at all for affordances \['hold'\]"):
        AGD20KTrain(root, "Seen", image_size=32, resize_size=40)


def test_unreadable_training_image_is_replaced(world, tmp_path, caplog):
    root = _copy(world, tmp_path)
    folder = root / "Seen/trainset/exocentric/hit/hammer"
    bad = sorted(folder.glob("*.jpg"))[0]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # truncated JPEG
    (folder / ".DS_Store").write_bytes(b"\x00\x01junk")  # non-image files are ignored, not samples
    (folder / "notes.txt").write_text("hello")
    ds = AGD20KTrain(root, "Seen", num_exo=3, image_size=32, resize_size=40)
    indices = [i for i, (f, _) in enumerate(ds.samples) if ds.folders[f] == ("hit", "hammer")]
    assert len(indices) == 3
    with caplog.at_level(logging.WARNING, logger="datasets.agd20k"):
        items = [ds[i] for i in indices]
    assert ds.skipped == 1 and "Skipping unreadable" in caplog.text
    for item in items:
        assert str(bad) not in item["exo_paths"]
        assert all(Path(p).parent == folder for p in item["exo_paths"])
        assert torch.isfinite(item["exo"]).all()
    again = AGD20KTrain(root, "Seen", num_exo=3, image_size=32, resize_size=40)
    assert [again[i]["exo_paths"] for i in indices] == [x["exo_paths"] for x in items]  # replacement is seeded


# ------------------------------------------------------------------------------------------------ test set
def test_test_item_and_gt_protocol(world):
    ds = AGD20KTest(world, "Seen", image_size=32, eval_size=40, with_masks=True)
    assert len(ds) == 2 * sum(1 for _ in (world / "Seen/testset/egocentric").glob("*/*"))
    assert ds.has_masks and ds.missing_gt == []
    item = ds[3]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["gt"].shape == (40, 40) and item["gt"].dtype == torch.float64
    assert float(item["gt"].min()) >= 0.0 and float(item["gt"].max()) <= 1.0
    assert item["label"] == ds.class_names.index(item["affordance"])
    gt_png = Path(item["path"].replace("/testset/egocentric/", "/testset/GT/")).with_suffix(".png")
    reference = cv2.resize(cv2.imread(str(gt_png), cv2.IMREAD_GRAYSCALE) / 255.0, (40, 40))  # docs/protocol.md
    np.testing.assert_allclose(item["gt"].numpy(), reference, atol=1e-6)
    for key in ("object_mask", "part_mask"):
        assert item[key].shape == (40, 40) and set(item[key].unique().tolist()) <= {0.0, 1.0}
    assert (item["part_mask"] <= item["object_mask"]).all() and item["part_mask"].sum() > 0
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["gt"].shape == (3, 40, 40)


def test_missing_gt_is_reported_not_dropped_silently(world, tmp_path, caplog):
    root = _copy(world, tmp_path)
    gone = sorted((root / "Seen/testset/GT/open/bottle").glob("*.png"))[0]
    gone.unlink()
    shutil.rmtree(root / "Seen/masks")
    with caplog.at_level(logging.WARNING, logger="datasets.agd20k"):
        ds = AGD20KTest(root, "Seen", with_masks=True)
    assert ds.missing_gt == [str(root / "Seen/testset/egocentric/open/bottle" / f"{gone.stem}.jpg")]
    assert "no GT map" in caplog.text
    assert len(ds) == len(AGD20KTest(world, "Seen")) - 1
    assert not ds.has_masks and "object_mask" not in ds[0]
    shutil.rmtree(root / "Seen/testset/GT")
    (root / "Seen/testset/GT").mkdir()
    with pytest.raises(ValueError, match="No test image with a GT map"):
        AGD20KTest(root, "Seen")


def test_unreadable_test_files_are_left_out_with_one_warning(world, tmp_path, caplog):
    root = _copy(world, tmp_path)
    images = sorted((root / "Seen/testset/egocentric").rglob("*.jpg"))
    cut, empty = images[0], images[5]
    cut.write_bytes(cut.read_bytes()[:300])  # truncated JPEG
    empty.write_bytes(b"")
    gt = sorted((root / "Seen/testset/GT").rglob("*.png"))[9]
    gt.write_bytes(gt.read_bytes()[:-30])  # truncated PNG (its image is fine)
    with caplog.at_level(logging.WARNING, logger="datasets.agd20k"):
        ds = AGD20KTest(root, "Seen", cache_dir=tmp_path / "cache")
    assert len(ds) == len(images) - 3
    assert ds.unreadable == [  # in the order of the items
        f"{cut}: truncated JPEG (no end-of-image marker)",
        f"{empty}: empty file",
        f"{gt}: truncated PNG (no IEND chunk)",
    ]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "3 test item(s)" in warnings[0].getMessage()
    assert str(cut) in warnings[0].getMessage() and "left out of the evaluation" in warnings[0].getMessage()
    assert {str(cut), str(empty)}.isdisjoint(p for p, *_ in ds.items)
    assert all(ds[i]["readable"] for i in range(len(ds)))


def test_file_that_fails_to_decode_is_flagged_not_raised(world, tmp_path, caplog):
    root = _copy(world, tmp_path)
    bad = sorted((root / "Seen/testset/egocentric").rglob("*.jpg"))[2]
    bad.write_bytes(b"\xff\xd8" + b"\x17" * 500 + b"\xff\xd9")  # whole container, corrupt content
    ds = AGD20KTest(root, "Seen", image_size=32, eval_size=40, with_masks=True)
    assert ds.unreadable == []  # it passes the structural check
    index = [p for p, *_ in ds.items].index(str(bad))
    with caplog.at_level(logging.WARNING, logger="datasets.agd20k"):
        item = ds[index]
    assert item["readable"] is False and "Could not decode" in item["problem"] and item["path"] == str(bad)
    assert item["image"].shape == (3, 32, 32) and not item["image"].any()
    assert item["gt"].shape == (40, 40) and not item["gt"].any() and not item["part_mask"].any()
    assert ds.unreadable == [f"{bad}: {item['problem']}"] and "left out of the evaluation" in caplog.text
    ds[index]
    assert len(ds.unreadable) == 1  # recorded once
    assert ds[0]["readable"] is True and ds[0]["problem"] == ""
    batch = next(iter(DataLoader(ds, batch_size=len(ds))))
    assert batch["readable"].dtype == torch.bool and batch["readable"].tolist().count(False) == 1


def test_gt_map_that_fails_to_decode_is_left_out_or_flagged(world, tmp_path):
    root = _copy(world, tmp_path)
    gt = sorted((root / "Seen/testset/GT").rglob("*.png"))[4]
    gt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64 + b"IEND\xaeB`\x82")  # whole container, no image
    cached = AGD20KTest(root, "Seen", cache_dir=tmp_path / "cache")  # decoded while the cache is built
    assert len(cached.unreadable) == 1 and cached.unreadable[0].startswith(f"{gt}: Could not decode")
    assert len(cached) == len(AGD20KTest(world, "Seen")) - 1 and len(cached._gt_cache) == len(cached)
    plain = AGD20KTest(root, "Seen")  # decoded when the item is loaded
    flags = [plain[i]["readable"] for i in range(len(plain))]
    assert flags.count(False) == 1 and len(plain.unreadable) == 1


def test_gt_cache_is_an_npy_in_the_given_folder(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    a = AGD20KTest(world, "Unseen", eval_size=24, cache_dir=cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy" and "Unseen_24" in files[0].name
    assert np.load(files[0], allow_pickle=False).shape == (len(a), 24, 24)
    b = AGD20KTest(world, "Unseen", eval_size=24, cache_dir=cache)  # read back
    plain = AGD20KTest(world, "Unseen", eval_size=24)
    for i in range(len(a)):
        assert torch.equal(b[i]["gt"], plain[i]["gt"])
    AGD20KTest(world, "Unseen", eval_size=32, cache_dir=cache)  # another eval size, another key
    assert len(list(cache.iterdir())) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # nothing written in the working directory


# ------------------------------------------------------------------------------------------------ summary
def _broken_tree(root: Path) -> dict[str, Path]:
    base = root / "Seen"
    _jpg(base / "trainset/exocentric/hold/knife/k1.jpg")
    _jpg(base / "trainset/exocentric/hold/knife/k2.jpg")
    _jpg(base / "trainset/egocentric/hold/knife/e1.jpg")
    _jpg(base / "testset/egocentric/hold/knife/t1.jpg")
    _png(base / "testset/GT/hold/knife/t1.png", np.full((20, 20), 200, np.uint8))
    no_gt = _jpg(base / "testset/egocentric/hold/knife/t2.jpg")
    trunc = _jpg(base / "trainset/exocentric/hold/knife/k3.jpg", size=64)
    trunc.write_bytes(trunc.read_bytes()[:300])
    unknown = base / "trainset/exocentric/holdd"
    _jpg(unknown / "knife/x.jpg")
    non_image = base / "trainset/exocentric/hold/knife/readme.txt"
    non_image.write_text("not an image")
    (base / "trainset/exocentric/hold/knife/.DS_Store").write_bytes(b"junk")
    empty = base / "trainset/egocentric/hold/cup"
    empty.mkdir(parents=True)
    return {"no_gt": no_gt, "trunc": trunc, "unknown": unknown, "non_image": non_image, "empty": empty}


def test_summary_reports_every_problem(tmp_path):
    paths = _broken_tree(tmp_path)
    rep = summarize(tmp_path, "Seen")
    assert rep["counts"] == {"train_exo": 4, "train_ego": 1, "test_ego": 2, "test_gt": 1}
    assert rep["per_affordance"]["hold"]["train_exo"] == 3 and rep["per_object"]["knife"]["test_ego"] == 2
    assert rep["missing_gt"] == [str(paths["no_gt"])]
    assert len(rep["unreadable"]) == 1 and rep["unreadable"][0].startswith(str(paths["trunc"]))
    assert str(paths["unknown"]) in rep["unknown_folders"]
    assert rep["ignored_files"] == [str(paths["non_image"])]  # hidden files are not even mentioned
    assert str(paths["empty"]) in rep["empty_folders"]
    assert rep["class_source"] == "standard" and rep["zero_gt"] == []


def test_summary_entry_point_prints_problems(tmp_path, capsys):
    paths = _broken_tree(tmp_path)
    rc = main([str(tmp_path), "--split", "Seen"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "test images without GT" in out and str(paths["no_gt"]) in out
    assert "unreadable files (1)" in out and str(paths["trunc"]) in out
    assert "unknown folders" in out and str(paths["unknown"]) in out
    assert "ignored non-image files (1)" in out and "readme.txt" in out
    assert "empty folders" in out and str(paths["empty"]) in out
    assert "images: train exo 4 | train ego 1 | test ego 2 | test GT 1" in out


def test_summary_entry_point_on_a_clean_world_and_a_wrong_root(world, tmp_path, capsys):
    assert main([str(world), "--split", "Unseen"]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "classes: 6 (from classes.json)" in out
    assert main([str(tmp_path / "missing"), "--split", "Seen"]) == 2
    err = capsys.readouterr().err
    assert "Expected layout" in err and "trainset/" in err and "testset/" in err


def test_part_masks_follow_the_egocentric_crop_and_leave_the_image_unchanged(world, tmp_path):
    plain = AGD20KTrain(world, "Seen", image_size=32, resize_size=40, seed=3)
    masked = AGD20KTrain(world, "Seen", image_size=32, resize_size=40, seed=3, with_part_masks=True)
    for index in (0, 5, len(plain) - 1):
        a, b = plain[index], masked[index]
        assert "ego_part_mask" not in a
        torch.testing.assert_close(a["ego"], b["ego"], rtol=0, atol=0)  # same image, same rng use
        mask = b["ego_part_mask"]
        assert mask.shape == (32, 32) and mask.dtype == torch.float32
        assert float(mask.min()) >= 0 and float(mask.max()) <= 1 and float(mask.sum()) > 0
    # A world without training masks (e.g. real AGD20K) is refused, naming a missing file and what to do.
    root = _copy(world, tmp_path)
    shutil.rmtree(root / "Seen/masks/train_part")
    with pytest.raises(FileNotFoundError, match=r"part mask for every egocentric training image.*oracle_prototypes"):
        AGD20KTrain(root, "Seen", image_size=32, resize_size=40, with_part_masks=True)


def test_from_config_builds_the_sets_the_config_describes(world, tmp_path):
    from utils.config import load_config

    cfg = load_config(
        None,
        [
            f"data.root={world}",
            "data.image_size=32",
            "data.resize_size=40",
            "data.eval_size=24",
            "data.num_exo=2",
            "seed=7",
            f"data.gt_cache={tmp_path / 'cache'}",
        ],
    )
    train = AGD20KTrain.from_config(cfg, "Seen")
    assert (train.num_exo, train.image_size, train.resize_size, train.seed) == (2, 32, 40, 7)
    assert not train.with_part_masks  # model.oracle_prototypes is off
    assert AGD20KTrain.from_config(cfg, "Seen", seed=3, with_part_masks=True).seed == 3
    test = AGD20KTest.from_config(cfg, "Unseen", with_masks=True)
    assert (test.split, test.image_size, test.eval_size, test.with_masks) == ("Unseen", 32, 24, True)
    assert test[0]["gt"].shape == (24, 24)
    assert list((tmp_path / "cache").glob("*.npy"))  # the config's GT cache is used
    assert train.reduced_decode and test.reduced_decode  # the configuration has no data.reduced_decode yet
    data = dataclasses.replace(cfg.data)
    object.__setattr__(data, "reduced_decode", False)  # as once the schema holds the option
    off = SimpleNamespace(data=data, seed=cfg.seed, model=cfg.model)
    assert not AGD20KTrain.from_config(off, "Seen").reduced_decode
    assert not AGD20KTest.from_config(off, "Seen").reduced_decode


def test_reduced_decode_changes_large_jpegs_only(world, tmp_path):
    root = _copy(world, tmp_path)
    rng = np.random.default_rng(0)
    photo = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3)).astype(np.uint8), (0, 0), 2)  # 120 >= 2 x 40
    big_test = sorted((root / "Seen/testset/egocentric").rglob("*.jpg"))[1]
    big_exo = sorted((root / "Seen/trainset/exocentric/hold/knife").glob("*.jpg"))[0]
    for path in (big_test, big_exo):
        cv2.imwrite(str(path), photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
    kw = dict(image_size=32, resize_size=40, num_exo=2, seed=1)
    on, off = AGD20KTrain(root, "Seen", **kw), AGD20KTrain(root, "Seen", reduced_decode=False, **kw)
    changed = 0
    for i in range(len(on)):
        a, b = on[i], off[i]
        assert a["exo_paths"] == b["exo_paths"]
        if str(big_exo) in a["exo_paths"]:
            changed += 1
            diff = (a["exo"] - b["exo"]).abs()
            assert 0 < float(diff.mean()) < 0.1  # normalised units: about 2 grey levels
        else:
            assert torch.equal(a["exo"], b["exo"]) and torch.equal(a["ego"], b["ego"])  # 48-px images: untouched
    assert changed >= 1
    on, off = AGD20KTest(root, "Seen", image_size=32), AGD20KTest(root, "Seen", image_size=32, reduced_decode=False)
    for i in range(len(on)):
        diff = (on[i]["image"] - off[i]["image"]).abs()
        if on[i]["path"] == str(big_test):
            assert 0 < float(diff.mean()) < 0.1
        else:
            assert float(diff.max()) == 0
    # with part masks the egocentric image keeps its full size, the size of its mask
    big_ego = sorted((root / "Seen/trainset/egocentric/hold/knife").glob("*.jpg"))[0]
    cv2.imwrite(str(big_ego), photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
    mask = root / "Seen/masks/train_part/hold/knife" / f"{big_ego.stem}.png"
    cv2.imwrite(str(mask), np.full((120, 160), 255, np.uint8))
    masked = AGD20KTrain(root, "Seen", with_part_masks=True, **kw)
    items = [masked[i] for i in range(len(masked)) if masked.folders[masked.samples[i][0]] == ("hold", "knife")]
    assert any(it["ego_path"] == str(big_ego) for it in items)
