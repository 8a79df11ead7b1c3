"""train.cache: the feature store, the cache key and reuse, the cached training set, and a cached run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from datasets.agd20k import AGD20KTrain
from datasets.agd20k.cached import CachedTrainSet, collate_cached
from datasets.feature_store import FeatureStore, StoreMissingError
from datasets.synthetic import ensure_world
from models.build import build_model
from models.criterion import build_criterion
from utils.config import ConfigError, load_config
from utils.engine.feature_cache import describe_size, prepare_feature_cache
from utils.engine.loader import move_batch

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache_world") / "world"
    return ensure_world(
        root, seed=0, image_size=64, exo_per_folder=3, ego_per_folder=2, test_per_folder=1, progress=False
    )


def _cfg(world: Path, *overrides: str):
    return load_config(
        "configs/synthetic.yaml",
        [
            f"data.root={world}",
            "data.synthetic.enabled=false",
            "data.image_size=32",
            "data.resize_size=40",
            "data.views=2",
            "data.num_workers=0",
            *overrides,
        ],
    )


def _model_and_set(world: Path, *overrides: str):
    cfg = _cfg(world, *overrides)
    train_set = AGD20KTrain.from_config(cfg, "Seen")
    torch.manual_seed(0)
    return cfg, build_model(cfg, train_set.class_names), train_set


def test_views_are_fixed_per_image_and_drawn_per_use(world: Path) -> None:
    _, _, train_set = _model_and_set(world)
    path = train_set.images[0]
    a = train_set.view_rng(path, 1).integers(0, 10**9, 3)
    b = train_set.view_rng(path, 1).integers(0, 10**9, 3)
    c = train_set.view_rng(path, 0).integers(0, 10**9, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # data.view_seed draws other fixed views of the same image; the training seed does not change them.
    _, _, other_views = _model_and_set(world, "data.view_seed=1")
    _, _, other_seed = _model_and_set(world, "seed=5")
    assert not np.array_equal(a, other_views.view_rng(path, 1).integers(0, 10**9, 3))
    assert np.array_equal(a, other_seed.view_rng(path, 1).integers(0, 10**9, 3))
    # The same sample in two epochs uses the images' fixed views, not fresh crops: every exo image of the item is
    # one of the 2 views of its file.
    train_set.set_epoch(0)
    item = train_set[0]
    cached = CachedTrainSet.__new__(CachedTrainSet)  # only its view_image is needed: decode, crop, flip
    cached.__dict__.update(train_set.__dict__)
    views = [torch.stack([cached.view_image(p, v) for v in range(2)]) for p in item["exo_paths"]]
    for img, candidates in zip(item["exo"], views):
        assert any(torch.equal(img, cand) for cand in candidates)


def test_cached_batch_equals_uncached_batch(world: Path, tmp_path: Path) -> None:
    cfg, model, train_set = _model_and_set(world)
    store = prepare_feature_cache(model, train_set, tmp_path, CPU, dtype="float32", progress=False)
    cached = CachedTrainSet.from_config(cfg, "Seen", class_names=train_set.class_names, store=store)
    for epoch in (0, 3):
        train_set.set_epoch(epoch)
        cached.set_epoch(epoch)
        idx = [0, 3, 7, 11]
        ub = move_batch(default_collate([train_set[i] for i in idx]), CPU)
        cb = move_batch(collate_cached([cached[i] for i in idx]), CPU)
        assert list(ub["ego_path"]) == list(cb["ego_path"]) and ub["exo_paths"] == cb["exo_paths"]
        feats = model.encode(torch.cat([ub["exo"].flatten(0, 1), ub["ego"]]))
        n = ub["exo"].shape[1] * len(idx)
        torch.testing.assert_close(cb["exo_features"].descriptors, feats.descriptors[:n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cb["ego_features"].cls_attn, feats.cls_attn[n:], atol=1e-5, rtol=1e-5)

    # Two training steps on the same batches from the two sources end at the same weights.
    criterion = build_criterion(cfg.loss)
    models = [copy.deepcopy(model), copy.deepcopy(model)]
    for source, m in zip((train_set, cached), models):
        opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01)
        m.train()
        for epoch in (0, 1):
            source.set_epoch(epoch)
            collate = collate_cached if source is cached else default_collate
            batch = move_batch(collate([source[i] for i in range(8)]), CPU)
            loss = criterion(m(batch), epoch)["total"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), atol=1e-5, rtol=1e-5, msg=name)


def test_cache_is_reused_and_rebuilt_when_its_inputs_change(world: Path, tmp_path: Path) -> None:
    _, model, train_set = _model_and_set(world)
    first = prepare_feature_cache(model, train_set, tmp_path, CPU, progress=False)
    stamp = (first.folder / "descriptors.npy").stat().st_mtime_ns
    again = prepare_feature_cache(model, train_set, tmp_path, CPU, progress=False)
    assert again.folder == first.folder and (again.folder / "descriptors.npy").stat().st_mtime_ns == stamp
    # Other views, other weights: another cache beside it.
    _, _, three_views = _model_and_set(world, "data.views=3")
    assert prepare_feature_cache(model, three_views, tmp_path, CPU, progress=False).folder != first.folder
    with torch.no_grad():
        model.backbone.vit.patch_embed.proj.weight.add_(0.01)
    assert prepare_feature_cache(model, train_set, tmp_path, CPU, progress=False).folder != first.folder
    assert len(list(tmp_path.iterdir())) == 3


def test_an_interrupted_build_is_never_used(world: Path, tmp_path: Path) -> None:
    _, model, train_set = _model_and_set(world)
    store = prepare_feature_cache(model, train_set, tmp_path, CPU, progress=False)
    meta = json.loads((store.folder / "meta.json").read_text())
    (store.folder / "meta.json").write_text(json.dumps({**meta, "complete": False}))  # as a killed build leaves it
    with pytest.raises(StoreMissingError, match="no complete feature store"):
        FeatureStore(store.folder)
    rebuilt = prepare_feature_cache(model, train_set, tmp_path, CPU, progress=False)
    assert rebuilt.meta["complete"] and rebuilt.folder == store.folder


def test_float16_overflow_and_disk_size_are_reported(world: Path, tmp_path: Path) -> None:
    _, model, train_set = _model_and_set(world)
    with torch.no_grad():
        model.backbone.vit.norm.weight.mul_(1e6)  # token descriptors far beyond float16's range
    with pytest.raises(OverflowError, match=r"train\.cache_dtype=float32"):
        prepare_feature_cache(model, train_set, tmp_path, CPU, dtype="float16", progress=False)
    size = describe_size(22_141, 4, 384, (14, 14), 6, "float16")
    assert size["bytes"] == 22_141 * 4 * (384 + 6) * 196 * 2


def test_cache_needs_views_and_no_oracle(world: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.views"):
        _cfg(world, "data.views=0", "train.cache=true")
    with pytest.raises(ConfigError, match="oracle_prototypes"):
        _cfg(world, "train.cache=true", "model.extensions.oracle_prototypes=true")


def test_cached_training_run_reuses_its_cache(world: Path, tmp_path: Path) -> None:
    from train import main

    args = [
        "--config",
        "configs/synthetic.yaml",
        f"data.root={world}",
        "data.synthetic.enabled=false",
        "data.splits=[Seen]",
        "data.image_size=32",
        "data.resize_size=40",
        "data.views=2",
        "data.num_workers=0",
        "train.cache=true",
        f"train.cache_dir={tmp_path / 'cache'}",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
        "train.batch_size=4",
        "eval.viz=0",
        "eval.baselines=[]",
        "viz.every=1",
    ]
    assert main([*args, f"output.dir={tmp_path / 'a'}"]) == 0
    assert main([*args, f"output.dir={tmp_path / 'b'}"]) == 0
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the second run reused the first run's cache
    assert "reusing" in (tmp_path / "b" / "train.log").read_text()
    assert list((tmp_path / "b" / "Seen" / "pictures").glob("train_step*.png"))  # pictures of cached batches
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["Seen"]["model"]["last_epoch"]["epoch"] == 1
