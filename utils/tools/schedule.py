"""What a user waits for: one epoch and the published 15-epoch schedule on AGD20K-sized data, with and without
``train.cache``, and LOCATE's public code on the same schedule.

The times are built from rates measured on this machine, end to end: a small AGD20K-layout tree of photo-like JPEGs
of AGD20K's sizes (hundreds of pixels a side) is written to a temporary folder; a few training steps run with the
real loader (decoding, augmentation, workers) and the real model, uncached and cached; the cache build is timed;
then

    epoch       = training samples / end-to-end samples/s  +  test images / evaluation images/s
    schedule    = epochs x epoch  (+ the cache build, once, with the cache)
    LOCATE      = epochs x (training samples / its training samples/s + test images / its batch-1 test images/s)

LOCATE's rates are measured by running its public code next to ours (``--locate-json``: the JSON of a timing of its
``Net.forward`` + losses + SGD step at batch 16 and ``Net.test_forward`` at batch 1, with its CUDA calls made no-ops;
docs/benchmarks.md says how); its loader is not counted, which only favours it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from datasets.decode_benchmark import make_photo
from utils.config import Config

__all__ = ["AGD20K_SEEN", "make_agd20k_like", "measure_schedule", "schedule_times"]

logger = logging.getLogger(__name__)

#: AGD20K Seen's image counts: 20,061 exocentric training images (each one training sample), 1,675 egocentric test
#: images; the 3,755 egocentric images minus the test images are taken as the egocentric training images.
AGD20K_SEEN = {"train_samples": 20_061, "train_images": 20_061 + (3_755 - 1_675), "test_images": 1_675}


def make_agd20k_like(
    root: Path,
    affordances: int = 4,
    objects: int = 2,
    exo: int = 12,
    ego: int = 4,
    test: int = 2,
    sizes: tuple[tuple[int, int], ...] = ((480, 640), (640, 480), (600, 800)),
    seed: int = 0,
) -> Path:
    """Write a small tree in AGD20K's layout (``root/Seen/...``) of photo-like JPEGs of AGD20K's sizes."""
    rng = np.random.default_rng(seed)
    names = [f"aff{i}" for i in range(affordances)]
    for a in names:
        for o in (f"obj{j}" for j in range(objects)):
            for sub, count in (
                ("trainset/exocentric", exo),
                ("trainset/egocentric", ego),
                ("testset/egocentric", test),
            ):
                folder = root / "Seen" / sub / a / o
                folder.mkdir(parents=True, exist_ok=True)
                for k in range(count):
                    h, w = sizes[int(rng.integers(len(sizes)))]
                    cv2.imwrite(str(folder / f"{o}_{k:04d}.jpg"), make_photo(h, w, rng), [cv2.IMWRITE_JPEG_QUALITY, 90])
                    if sub.startswith("testset"):  # a GT heatmap: one blurred blob, peak 255
                        gt = root / "Seen" / "testset" / "GT" / a / o
                        gt.mkdir(parents=True, exist_ok=True)
                        blob = np.zeros((h, w), np.float32)
                        blob[h // 3 : h // 2, w // 3 : w // 2] = 1.0
                        blob = cv2.GaussianBlur(blob, (0, 0), min(h, w) / 20)
                        cv2.imwrite(str(gt / f"{o}_{k:04d}.png"), np.round(blob / blob.max() * 255).astype(np.uint8))
    (root / "classes.json").write_text(json.dumps({"Seen": names}))
    return root


def _timed_steps(cfg: Config, train_set: Any, model: Any, device: torch.device, steps: int, collate: Any) -> float:
    """Samples/s of ``steps`` training steps (after one untimed step) with the real loader and optimiser."""
    from models.criterion import build_criterion
    from utils.engine.distributed import DistInfo
    from utils.engine.loader import build_train_loader, move_batch, set_loader_epoch
    from utils.engine.optim import build_optimizer
    from utils.engine.runtime import amp_context, resolve_amp_dtype

    criterion = build_criterion(cfg.loss)
    optimizer = build_optimizer(model, cfg.train)
    amp_dtype = resolve_amp_dtype(cfg.train.amp, device)
    loader = build_train_loader(train_set, cfg, DistInfo(), device, collate_fn=collate)
    set_loader_epoch(loader, 1, cfg.seed)
    model.train()
    samples, start = 0, None
    for i, batch in enumerate(loader):
        if i == 1:
            start = time.perf_counter()
        batch = move_batch(batch, device)
        with amp_context(device, amp_dtype):
            loss = criterion(model(batch), epoch=1)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= 1:
            samples += int(batch["label"].shape[0])
        if i >= steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if start is None or samples == 0:
        raise ValueError("the benchmark tree is too small for two training steps: raise --schedule-exo")
    return samples / (time.perf_counter() - start)


def measure_schedule(
    cfg: Config, device: torch.device, steps: int = 4, views: int = 4, exo_per_folder: int = 12
) -> dict[str, float]:
    """End-to-end training rates (uncached and cached), the cache build rate and the loader's own rate.

    Args:
        cfg: the configuration (model, batch size, precision, workers); its data root is replaced by the tree.
        device: where the model runs.
        steps: timed training steps per setting.
        views: ``data.views`` of the cached setting.
        exo_per_folder: exocentric images per folder of the generated tree (16 folders).
    """
    from datasets.agd20k import AGD20KTrain
    from datasets.agd20k.cached import CachedTrainSet, collate_cached
    from datasets.loader import measure_loader_rate, resolve_num_workers
    from models.build import build_model
    from utils.config import load_config
    from utils.engine.distributed import DistInfo
    from utils.engine.feature_cache import prepare_feature_cache
    from utils.engine.loader import build_train_loader, set_loader_epoch
    from utils.engine.runtime import resolve_amp_dtype

    with tempfile.TemporaryDirectory(prefix="wsag-bench-") as tmp:
        root = make_agd20k_like(Path(tmp) / "data", exo=exo_per_folder)
        base = {**_as_dict(cfg), "data": {**_as_dict(cfg)["data"], "root": str(root), "splits": ["Seen"]}}
        plain = load_config(None, [], base=base)
        cached_cfg = load_config(None, [f"data.views={views}", "train.cache=true"], base=base)
        out: dict[str, float] = {"num_workers": float(resolve_num_workers(plain.data.num_workers))}

        train_set = AGD20KTrain.from_config(plain, "Seen")
        loader = build_train_loader(train_set, plain, DistInfo(), device)
        set_loader_epoch(loader, 0, plain.seed)
        out["loader_samples_per_s"] = measure_loader_rate(loader, max_batches=max(2, min(len(loader), 6)))[
            "samples_per_s"
        ]

        torch.manual_seed(0)
        model = build_model(plain, train_set.class_names).to(device)
        out["train_e2e_samples_per_s"] = _timed_steps(plain, train_set, model, device, steps, None)

        view_set = AGD20KTrain.from_config(cached_cfg, "Seen")
        t0 = time.perf_counter()
        store = prepare_feature_cache(
            model,
            view_set,
            Path(tmp) / "cache",
            device,
            dtype=cached_cfg.train.cache_dtype,
            amp_dtype=resolve_amp_dtype(cached_cfg.train.amp, device),
            batch_size=cached_cfg.eval.batch_size,
            num_workers=resolve_num_workers(cached_cfg.data.num_workers),
            progress=False,
        )
        out["cache_build_images_per_s"] = len(view_set.images) / (time.perf_counter() - t0)
        out["cache_bytes_per_image"] = float(store.descriptors[0].nbytes + store.cls_attn[0].nbytes)  # its K views
        cached_set = CachedTrainSet.from_config(cached_cfg, "Seen", class_names=view_set.class_names, store=store)
        out["train_e2e_cached_samples_per_s"] = _timed_steps(
            cached_cfg, cached_set, model, device, steps * 3, collate_cached
        )
        del store, cached_set
    return out


def schedule_times(
    rates: dict[str, float],
    eval_images_per_s: float,
    views: int,
    epochs: int = 15,
    counts: dict[str, int] | None = None,
    locate: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Epoch and schedule wall-clock (seconds) from measured rates, for AGD20K Seen's counts by default.

    Args:
        rates: :func:`measure_schedule`'s output.
        eval_images_per_s: our evaluation rate (model + metrics), images/s.
        views: the cached setting's views per image.
        epochs: the schedule's epochs (the published one: 15), each followed by an evaluation.
        counts: ``train_samples``, ``train_images``, ``test_images``.
        locate: LOCATE's ``train_samples_per_s`` and ``test_images_per_s_batch1`` (its public code), or None.
    """
    c = counts or AGD20K_SEEN
    evaluation = c["test_images"] / eval_images_per_s
    uncached_epoch = c["train_samples"] / rates["train_e2e_samples_per_s"] + evaluation
    cached_epoch = c["train_samples"] / rates["train_e2e_cached_samples_per_s"] + evaluation
    build = c["train_images"] / rates["cache_build_images_per_s"]
    out: dict[str, Any] = {
        "counts": dict(c),
        "epochs": epochs,
        "views": views,
        "cache_build_s": build,
        "cache_disk_gib": c["train_images"] * rates["cache_bytes_per_image"] / 2**30,
        "epoch_s": uncached_epoch,
        "epoch_cached_s": cached_epoch,
        "schedule_s": epochs * uncached_epoch,
        "schedule_cached_s": build + epochs * cached_epoch,
    }
    if locate:
        epoch = (
            c["train_samples"] / locate["train_samples_per_s"] + c["test_images"] / locate["test_images_per_s_batch1"]
        )
        out["locate_epoch_s"] = epoch
        out["locate_schedule_s"] = epochs * epoch
        out["speedup_vs_locate"] = out["locate_schedule_s"] / out["schedule_s"]
        out["speedup_cached_vs_locate"] = out["locate_schedule_s"] / out["schedule_cached_s"]
    return out


def _as_dict(cfg: Config) -> dict[str, Any]:
    from utils.config import config_to_dict

    return config_to_dict(cfg)
