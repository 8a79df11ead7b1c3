"""The AGD20K training set served from a feature store: the same samples, views and pairing, no image decoding.

:class:`CachedTrainSet` draws every sample exactly as :class:`datasets.agd20k.AGD20KTrain` with ``views = K`` draws
it (partners, egocentric image, replacements of unreadable images, each image's view), but returns the backbone
features of those views from a :class:`datasets.feature_store.FeatureStore` instead of the images. A run on it sees
what an uncached run with the same ``views`` sees, up to the store's precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from datasets.agd20k.trainset import AGD20KTrain
from datasets.feature_store import FeatureStore
from datasets.images import read_image, train_transform
from models.outputs import Features

__all__ = ["CachedTrainSet", "collate_cached"]


class CachedTrainSet(AGD20KTrain):
    """:class:`AGD20KTrain` whose items hold cached features instead of images.

    Items hold ``exo_desc`` (n, D, h, w), ``exo_cls_attn`` (n, heads, h, w), ``ego_desc``, ``ego_cls_attn`` (in the
    store's dtype), the views used (``exo_views``, ``ego_view``) and the usual labels and paths;
    :func:`collate_cached` turns a list of them into a batch with :class:`models.outputs.Features`.

    Args:
        store: the feature store of this training set's images (its image order is :attr:`images`).
        **kwargs: the :class:`AGD20KTrain` arguments (``views`` must equal the store's).
    """

    def __init__(self, *args: Any, store: FeatureStore, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.views or store.views != self.views or store.num_images != len(self.images):
            raise ValueError(
                f"CachedTrainSet: the feature store holds {store.num_images} images x {store.views} views but this "
                f"training set has {len(self.images)} images and views={self.views}; rebuild the cache "
                "(utils.engine.feature_cache.prepare_feature_cache)"
            )
        self.store = store
        self._bad = {self.images[i] for i in store.unreadable}

    def _load(
        self,
        path: str,
        pools: Sequence[Sequence[str]],
        index: int,
        slot: int,
        rng: np.random.Generator,
        ego: bool = False,
    ) -> dict[str, Any]:
        """The first readable image of ``path``'s candidates and one of its views, by id (no decoding)."""
        used = next((c for c in self._candidates(path, pools, index, slot) if c not in self._bad), None)
        if used is None:
            raise RuntimeError(f"Every candidate image for '{path}' was unreadable when the feature cache was built")
        _, view = self._augment_rng(used, rng)
        return {"id": self._image_id[used], "view": view, "path": used}

    def _collate_views(self, exo: list[dict[str, Any]], ego: dict[str, Any]) -> dict[str, Any]:
        """The stored features of the sample's views."""
        desc, attn = self.store.read([e["id"] for e in exo] + [ego["id"]], [e["view"] for e in exo] + [ego["view"]])
        n = len(exo)
        return {
            "exo_desc": desc[:n],
            "exo_cls_attn": attn[:n],
            "ego_desc": desc[n],
            "ego_cls_attn": attn[n],
            "exo_views": torch.tensor([e["view"] for e in exo]),
            "ego_view": ego["view"],
        }

    def view_image(self, path: str, view: int) -> torch.Tensor:
        """(3, S, S) the normalised image of view ``view`` of ``path`` (for pictures of cached batches)."""
        min_side = self.resize_size if self.reduced_decode else None
        img = read_image(path, min_side=min_side)
        return train_transform(img, self.resize_size, self.image_size, self.view_rng(path, view), self.resize)


def collate_cached(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of :class:`CachedTrainSet` items: ``exo_features`` (b·n rows) and ``ego_features`` (b rows) as
    :class:`models.outputs.Features`, the rest collated as usual."""
    keys = ("exo_desc", "exo_cls_attn", "ego_desc", "ego_cls_attn")
    rest = default_collate([{k: v for k, v in item.items() if k not in keys} for item in items])
    exo_desc = torch.stack([item["exo_desc"] for item in items]).flatten(0, 1)  # (b·n, D, h, w)
    exo_attn = torch.stack([item["exo_cls_attn"] for item in items]).flatten(0, 1)
    ego_desc = torch.stack([item["ego_desc"] for item in items])  # (b, D, h, w)
    ego_attn = torch.stack([item["ego_cls_attn"] for item in items])
    return {**rest, "exo_features": Features(exo_desc, exo_attn), "ego_features": Features(ego_desc, ego_attn)}
