"""On-disk, memory-mapped arrays of precomputed backbone features: one entry per (image, augmented view).

A store is a folder holding ``descriptors.npy`` (N, K, D, h, w), ``cls_attn.npy`` (N, K, heads, h, w), both in
float16 or float32, and ``meta.json`` (the shapes, the dtype, the key that says what the features were computed
from, the images that could not be read, and ``complete``). Arrays are written in place through ``numpy`` memory maps
and ``meta.json`` is written last, so an interrupted build is recognised (no ``complete``) and started again;
readers map the arrays read-only, so many DataLoader workers share the operating system's page cache.

The store knows nothing about models: :mod:`utils.engine.feature_cache` decides what goes in and when to rebuild.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["DTYPES", "FeatureStore", "StoreMissingError"]

logger = logging.getLogger(__name__)

DTYPES = {"float16": np.float16, "float32": np.float32}
_META = "meta.json"
_ARRAYS = ("descriptors", "cls_attn")


class StoreMissingError(FileNotFoundError):
    """No complete store with the requested key in the folder."""


class FeatureStore:
    """Read access to a complete store (see the module docstring); :meth:`create` makes a new one.

    Args:
        folder: the store's folder.

    Raises:
        StoreMissingError: the folder holds no complete store.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        meta = self.read_meta(self.folder)
        if meta is None or not meta.get("complete"):
            raise StoreMissingError(f"{self.folder} holds no complete feature store")
        self.meta: dict[str, Any] = meta
        self.descriptors = np.load(self.folder / "descriptors.npy", mmap_mode="r")  # (N, K, D, h, w)
        self.cls_attn = np.load(self.folder / "cls_attn.npy", mmap_mode="r")  # (N, K, heads, h, w)
        self.unreadable: set[int] = {int(i) for i in meta.get("unreadable", [])}

    @property
    def num_images(self) -> int:
        return int(self.descriptors.shape[0])

    @property
    def views(self) -> int:
        return int(self.descriptors.shape[1])

    @staticmethod
    def read_meta(folder: str | os.PathLike) -> dict[str, Any] | None:
        """The store's ``meta.json`` as a dict, or None when there is none (or it is damaged)."""
        path = Path(folder) / _META
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    @staticmethod
    def nbytes(
        num_images: int, views: int, desc_shape: tuple[int, ...], attn_shape: tuple[int, ...], dtype: str
    ) -> int:
        """Bytes the two arrays of a store take on disk."""
        item = np.dtype(DTYPES[dtype]).itemsize
        return num_images * views * (int(np.prod(desc_shape)) + int(np.prod(attn_shape))) * item

    @classmethod
    def create(
        cls,
        folder: str | os.PathLike,
        num_images: int,
        views: int,
        desc_shape: tuple[int, ...],
        attn_shape: tuple[int, ...],
        dtype: str,
    ) -> tuple[np.memmap, np.memmap]:
        """Start a new store in ``folder`` (its previous content is removed) and return its writable arrays.

        Raises:
            OSError: not enough free disk space (the message says how much is needed).
        """
        folder = Path(folder)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        need = cls.nbytes(num_images, views, desc_shape, attn_shape, dtype)
        free = shutil.disk_usage(folder).free
        if need > free:
            raise OSError(
                f"the feature cache needs {need / 2**30:.1f} GiB in {folder} but only {free / 2**30:.1f} GiB are "
                "free: set train.cache_dir to a disk with room, lower data.views, or set train.cache=false"
            )
        arrays = []
        for name, shape in zip(_ARRAYS, (desc_shape, attn_shape)):
            path = folder / f"{name}.npy"
            arrays.append(
                np.lib.format.open_memmap(path, mode="w+", dtype=DTYPES[dtype], shape=(num_images, views, *shape))
            )
        return arrays[0], arrays[1]

    @staticmethod
    def finish(folder: str | os.PathLike, arrays: tuple[np.memmap, ...], meta: dict[str, Any]) -> None:
        """Flush the arrays and write ``meta.json`` with ``complete: true`` (atomically, last)."""
        for arr in arrays:
            arr.flush()
        path = Path(folder) / _META
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({**meta, "complete": True}, indent=1) + "\n")
        os.replace(tmp, path)

    def read(self, image_ids: list[int], views: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored (descriptors (m, D, h, w), cls_attn (m, heads, h, w)) of ``m`` (image, view) pairs, as stored."""
        ids, vs = np.asarray(image_ids), np.asarray(views)
        desc = torch.from_numpy(np.ascontiguousarray(self.descriptors[ids, vs]))
        attn = torch.from_numpy(np.ascontiguousarray(self.cls_attn[ids, vs]))
        return desc, attn
