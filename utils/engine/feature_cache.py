"""The frozen backbone's features of every training view, computed once and reused (``train.cache``).

The backbone is frozen, so an epoch that runs it again on images it has already seen only repeats work. With
``data.views = K`` every training image has K fixed augmented views (:class:`datasets.agd20k.AGD20KTrain`);
:func:`prepare_feature_cache` runs the backbone (and any descriptor extension) once over all of them, stores the
descriptors and the CLS attention on disk (:class:`datasets.feature_store.FeatureStore`, float16 by default,
memory-mapped), and training then reads them (:class:`datasets.agd20k.cached.CachedTrainSet`) and runs only the heads.

A cache is identified by a key: a digest of the frozen encoder's weights and configuration, the training images
(relative paths, sizes, modification times) and the view parameters (image size, resize, decoding, K, view seed).
A later run with the same key reuses it; any change builds a new one beside it. The build writes ``meta.json`` last,
so an interrupted build is never used and is started again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets.agd20k.depth import depth_path, read_depth, train_transform_with_depth
from datasets.agd20k.trainset import AGD20KTrain
from datasets.feature_store import DTYPES, FeatureStore
from datasets.images import read_image, train_transform
from utils.engine.runtime import amp_context

__all__ = ["CACHE_FORMAT", "cache_key", "describe_size", "prepare_feature_cache"]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
_FP16_MAX = float(np.finfo(np.float16).max)


def _encoder_digest(model: torch.nn.Module) -> str:
    """SHA-256 of everything that shapes ``model.encode``: the frozen backbone's (and depth prompt's) tensors and the
    descriptor extension's setup."""
    h = hashlib.sha256()
    state = dict(model.backbone.state_dict())
    if getattr(model, "depth_prompt", None) is not None:
        state.update({f"depth_prompt.{k}": v for k, v in model.depth_prompt.state_dict().items()})
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(model.descriptor_extra).encode())
    return h.hexdigest()


def _images_digest(train_set: AGD20KTrain) -> str:
    """SHA-256 of the training images' (and depth maps') paths relative to their roots, sizes and modification
    times."""
    h = hashlib.sha256()
    for path in train_set.images:
        files = [(Path(path), train_set.root)]
        if train_set.depth_root is not None:
            files.append((depth_path(path, train_set.root, train_set.depth_root), train_set.depth_root))
        for file, root in files:
            st = file.stat()
            h.update(f"{file.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_key(model: torch.nn.Module, train_set: AGD20KTrain, dtype: str, amp_dtype: torch.dtype | None) -> dict:
    """What a cache was computed from; two runs share a cache exactly when their keys are equal."""
    bb = model.backbone
    return {
        "format": CACHE_FORMAT,
        "backbone": {"name": bb.name, "descriptor": bb.descriptor, "weights_sha256": _encoder_digest(model)},
        "images_sha256": _images_digest(train_set),
        "num_images": len(train_set.images),
        "split": train_set.split,
        "image_size": train_set.image_size,
        "resize_size": train_set.resize_size,
        "reduced_decode": train_set.reduced_decode,
        "resize": train_set.resize,
        "depth": train_set.depth_root is not None,
        "views": train_set.views,
        "view_seed": train_set.view_seed,
        "dtype": dtype,
        "autocast": str(amp_dtype) if amp_dtype is not None else "off",
    }


class _ImageViews(Dataset):
    """Item i: (i, the K augmented views (K, 3, S, S) of image i, their depth maps (K, 1, S, S) or None), or
    (i, None, None) when the image cannot be read."""

    def __init__(self, train_set: AGD20KTrain) -> None:
        self.train_set = train_set

    def __len__(self) -> int:
        return len(self.train_set.images)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
        ts = self.train_set
        path = ts.images[i]
        try:
            img = read_image(path, min_side=ts.resize_size if ts.reduced_decode else None)
        except (ValueError, OSError) as err:
            logger.warning("feature cache: unreadable training image left out (%s)", err)
            return i, None, None
        rngs = [ts.view_rng(path, v) for v in range(ts.views)]
        if ts.depth_root is None:
            views = [train_transform(img, ts.resize_size, ts.image_size, r, ts.resize) for r in rngs]
            return i, torch.stack(views), None
        depth = read_depth(depth_path(path, ts.root, ts.depth_root))
        pairs = [train_transform_with_depth(img, depth, ts.resize_size, ts.image_size, r, ts.resize) for r in rngs]
        return i, torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def _to_store(x: torch.Tensor, dtype: str, what: str) -> np.ndarray:
    arr = x.detach().float().cpu().numpy()
    if dtype == "float16" and np.abs(arr).max(initial=0.0) > _FP16_MAX:
        raise OverflowError(
            f"feature cache: the backbone's {what} exceed float16's range ({_FP16_MAX:g}); "
            "set train.cache_dtype=float32"
        )
    return arr.astype(DTYPES[dtype])


@torch.no_grad()
def prepare_feature_cache(
    model: torch.nn.Module,
    train_set: AGD20KTrain,
    cache_root: str | Path,
    device: torch.device,
    dtype: str = "float16",
    amp_dtype: torch.dtype | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
) -> FeatureStore:
    """The feature store of ``train_set``'s views under ``model``'s frozen encoder: reused, or built now.

    Args:
        model: the grounder (its ``encode`` runs the frozen backbone and any descriptor extension).
        train_set: the training set, with ``views > 0``.
        cache_root: the folder holding the caches (``train.cache_dir``).
        device: where the backbone runs.
        dtype: storage precision, "float16" or "float32".
        amp_dtype: the autocast dtype of the backbone pass (the training precision policy), or None for fp32.
        batch_size: images per backbone pass.
        num_workers: DataLoader workers decoding the images.
        progress: show a progress bar.

    Returns:
        The store, opened read-only.
    """
    if train_set.views < 1:
        raise ValueError("prepare_feature_cache: the training set has no fixed views; set data.views > 0")
    key = cache_key(model, train_set, dtype, amp_dtype)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_root) / f"{train_set.split}-{digest}"
    meta = FeatureStore.read_meta(folder)
    if meta is not None and meta.get("complete") and meta.get("key") == key:
        store = FeatureStore(folder)
        logger.info("feature cache: reusing %s (%d images x %d views)", folder, store.num_images, store.views)
        return store
    if meta is not None:
        logger.warning("feature cache: %s is incomplete or stale; building it again", folder)

    was_training = model.training
    model.eval()
    k = train_set.views
    images = _ImageViews(train_set)
    loader = DataLoader(
        images, batch_size=max(1, batch_size // k), num_workers=num_workers, collate_fn=list, shuffle=False
    )
    arrays: tuple[np.memmap, np.memmap] | None = None
    unreadable: list[int] = []
    start = time.perf_counter()
    try:
        bar = tqdm(loader, desc=f"feature cache {train_set.split}", unit="batch", disable=not progress, leave=False)
        for batch in bar:
            unreadable += [i for i, views, _ in batch if views is None]
            good = [(i, views, depth) for i, views, depth in batch if views is not None]
            if not good:
                continue
            x = torch.cat([views for _, views, _ in good]).to(device)  # (m·K, 3, S, S)
            depth = torch.cat([d for _, _, d in good]).to(device) if good[0][2] is not None else None  # (m·K, 1, S, S)
            with amp_context(device, amp_dtype):
                feats = model.encode(x, depth)
            desc = feats.descriptors.reshape(len(good), k, *feats.descriptors.shape[1:])  # (m, K, D, h, w)
            attn = feats.cls_attn.reshape(len(good), k, *feats.cls_attn.shape[1:])  # (m, K, heads, h, w)
            if arrays is None:
                shapes = (tuple(desc.shape[2:]), tuple(attn.shape[2:]))
                size = FeatureStore.nbytes(len(images), k, *shapes, dtype)
                logger.info(
                    "feature cache: building %s: %d images x %d views = %d backbone passes, %.2f GiB (%s)",
                    folder,
                    len(images),
                    k,
                    len(images) * k,
                    size / 2**30,
                    dtype,
                )
                arrays = FeatureStore.create(folder, len(images), k, *shapes, dtype)
            ids = np.asarray([i for i, _, _ in good])
            arrays[0][ids] = _to_store(desc, dtype, "descriptors")
            arrays[1][ids] = _to_store(attn, dtype, "CLS attention")
        if arrays is None:
            raise RuntimeError(f"feature cache: no training image of {train_set.root} could be read")
        seconds = time.perf_counter() - start
        FeatureStore.finish(
            folder, arrays, {"key": key, "unreadable": unreadable, "build_seconds": seconds, "device": str(device)}
        )
        logger.info(
            "feature cache: built in %.1f s (%.1f views/s); %d unreadable image(s) left out",
            seconds,
            len(images) * k / max(seconds, 1e-9),
            len(unreadable),
        )
    finally:
        model.train(was_training)
    return FeatureStore(folder)


def describe_size(
    num_images: int, views: int, dim: int, grid: tuple[int, int], heads: int, dtype: str
) -> dict[str, Any]:
    """The disk size of a cache of ``num_images`` images (e.g. AGD20K Seen's) without building it."""
    nbytes = FeatureStore.nbytes(num_images, views, (dim, *grid), (heads, *grid), dtype)
    return {"images": num_images, "views": views, "dtype": dtype, "bytes": nbytes, "gib": nbytes / 2**30}
