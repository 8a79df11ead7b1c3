"""The AGD20K training set: exocentric images of one <affordance>/<object> folder paired with an egocentric one."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.agd20k.depth import check_depth_maps, depth_path, read_depth, train_transform_with_depth
from datasets.agd20k.layout import LAYOUT, SUBSETS, _check_layout, _class_names_for, _empty_folders, _tree
from datasets.images import RESIZE_BACKENDS, read_image, read_mask, train_transform, train_transform_with_mask

logger = logging.getLogger(__name__)

EXO_PARTNER_RULES: tuple[str, ...] = ("distinct", "published")
"""Values of ``data.exo_partners``."""


class AGD20KTrain(Dataset):
    """Training samples: ``num_exo`` exocentric images of one <affordance>/<object> folder + one egocentric image.

    Every exocentric file is one sample (the anchor). Partners come from the same folder, distinct from the anchor
    and from each other when the folder has enough images. The egocentric image is drawn from
    ``trainset/egocentric/<aff>/<obj>/``; if that folder is missing or empty, from any egocentric image of the
    same affordance (counted in ``ego_fallbacks``). Unreadable files are replaced by another image of the same
    folder (with a warning, counted in ``skipped``) so that an epoch never crashes on one bad file.

    Randomness (partners, egocentric choice, crops, flips) comes from a numpy generator seeded with
    (seed, epoch, index), so an item is the same whichever DataLoader worker loads it; call ``set_epoch`` at the
    start of each epoch, before iterating the loader (persistent workers see it too).

    With ``views = K > 0`` every image has K fixed augmented views instead of a fresh crop and flip at each use: view
    v of an image is the crop and flip drawn from (``view_seed``, the image's index in :attr:`images`, v), and each
    use of an image picks one of its views with the sample's generator. A feature cache of the frozen backbone
    (``utils.engine.feature_cache``) stores exactly these views, so a cached run sees the same inputs.

    Args:
        root: dataset root (see ``datasets.agd20k`` for the layout).
        split: "Seen" or "Unseen" (or another split folder of a custom dataset).
        num_exo: exocentric images per sample (n).
        image_size: crop side S.
        resize_size: the shorter side is resized to this before the random crop.
        seed: base seed of the pairing and augmentation.
        class_names: the class list (default: ``load_class_names``); folders outside it are an error.
        with_part_masks: also return ``ego_part_mask`` (S, S) in [0, 1], the egocentric image's affordance-part
            mask under the same crop and flip. Only the synthetic world has these masks (under
            ``<split>/masks/train_part/<aff>/<obj>/<stem>.png``); they feed the oracle-prototype diagnostic
            (``model.extensions.oracle_prototypes``), never the method itself.
        reduced_decode: decode a JPEG whose shorter side is at least twice ``resize_size`` at 1/2, 1/4 or 1/8
            scale (DCT-domain scaling), keeping the shorter side >= ``resize_size``: several times faster on
            full-size photos, a small resampling difference (``datasets.images.decode_image``). Smaller images
            decode exactly as without it. Off: every image is decoded at full size. The egocentric image is always
            decoded at full size with ``with_part_masks`` (its mask has the full size).
        views: K fixed augmented views per image (0: a fresh crop and flip at every use).
        view_seed: seed of the views (independent of ``seed``, so runs with other training seeds share them).
        depth_root: an AGD20K-Depth root (``datasets.agd20k.depth``): every item then also carries ``exo_depth``
            (n, 1, S, S) and ``ego_depth`` (1, S, S) in [-1, 1], under the images' crops and flips. Every image's
            depth map must exist (checked here, before training). None: no depth.
        resize: the resize backend, ``opencv`` or ``pil`` (the published code's PIL bilinear; see
            ``datasets.images``).
        exo_partners: ``distinct`` (the partners are other images than the anchor, all different, whenever the
            folder has ``num_exo`` images) or ``published`` (LOCATE's loader: distinct only when the folder has more
            than ``num_exo`` images). A smaller folder repeats images, the anchor included, in both.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "Seen",
        num_exo: int = 3,
        image_size: int = 224,
        resize_size: int = 256,
        seed: int = 0,
        class_names: Sequence[str] | None = None,
        with_part_masks: bool = False,
        reduced_decode: bool = True,
        views: int = 0,
        view_seed: int = 0,
        depth_root: str | os.PathLike | None = None,
        resize: str = "opencv",
        exo_partners: str = "distinct",
    ) -> None:
        if num_exo < 1:
            raise ValueError(f"num_exo must be >= 1, got {num_exo}")
        if image_size > resize_size:
            raise ValueError(f"image_size ({image_size}) must not exceed resize_size ({resize_size})")
        self.root = Path(root)
        self.split = split
        self.num_exo = num_exo
        self.image_size = image_size
        self.resize_size = resize_size
        self.seed = seed
        self.with_part_masks = with_part_masks
        self.reduced_decode = reduced_decode
        if views < 0:
            raise ValueError(f"views must be >= 0 (0: a fresh augmentation at every use), got {views}")
        self.views, self.view_seed = int(views), int(view_seed)
        self.depth_root = Path(depth_root) if depth_root else None
        if resize not in RESIZE_BACKENDS:
            raise ValueError(f"resize={resize!r} is not one of {', '.join(RESIZE_BACKENDS)}")
        self.resize = resize
        if exo_partners not in EXO_PARTNER_RULES:
            raise ValueError(f"exo_partners={exo_partners!r} is not one of {', '.join(EXO_PARTNER_RULES)}")
        self.exo_partners = exo_partners
        # in shared memory so that set_epoch reaches persistent DataLoader workers too
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        split_dir = _check_layout(self.root, split, ["train_exo", "train_ego"])
        self.class_names = _class_names_for(self.root, split, class_names, ["train_exo", "train_ego"])
        self._label = {c: i for i, c in enumerate(self.class_names)}

        exo = _tree(split_dir / SUBSETS["train_exo"])
        ego = _tree(split_dir / SUBSETS["train_ego"])
        for folder in _empty_folders(split_dir / SUBSETS["train_exo"]):
            logger.warning("Empty exocentric folder (no images): %s", folder)
        self.folders: list[tuple[str, str]] = [k for k, files in exo.items() if files]
        self._exo_files: list[list[str]] = [[str(p) for p in exo[k]] for k in self.folders]
        self.samples: list[tuple[int, int]] = [
            (f, j) for f, files in enumerate(self._exo_files) for j in range(len(files))
        ]
        if not self.samples:
            raise ValueError(
                f"No exocentric training images under '{split_dir / SUBSETS['train_exo']}'. "
                f"Expected <affordance>/<object>/<name>.jpg files:\n{LAYOUT}"
            )
        ego_by_aff: dict[str, list[str]] = {}
        for (aff, _), files in ego.items():
            ego_by_aff.setdefault(aff, []).extend(str(p) for p in files)
        self._ego_pool: list[list[str]] = []
        self.ego_fallbacks: list[str] = []
        no_ego = []
        for aff, obj in self.folders:
            own = [str(p) for p in ego.get((aff, obj), [])]
            if not own:
                self.ego_fallbacks.append(f"{aff}/{obj}")
                own = sorted(ego_by_aff.get(aff, []))
                if not own:
                    no_ego.append(aff)
            self._ego_pool.append(own)
        if no_ego:
            raise ValueError(
                f"No egocentric training image at all for affordances {sorted(set(no_ego))} under "
                f"'{split_dir / SUBSETS['train_ego']}'. Each affordance needs egocentric images "
                "(<affordance>/<object>/*.jpg); add them or remove those exocentric folders."
            )
        if self.ego_fallbacks:
            logger.warning(
                "%d exocentric folders have no matching egocentric folder; they pair with any egocentric image "
                "of the same affordance: %s",
                len(self.ego_fallbacks),
                self.ego_fallbacks[:10],
            )
        self._aff_exo_pool: dict[str, list[str]] = {}
        for (aff, _), files in zip(self.folders, self._exo_files):
            self._aff_exo_pool.setdefault(aff, []).extend(files)
        self._bad: set[str] = set()
        #: Every image a sample can use (exocentric files and egocentric pools), sorted: a view's identity.
        self.images: list[str] = sorted(
            {f for files in self._exo_files for f in files} | {f for pool in self._ego_pool for f in pool}
        )
        self._image_id = {path: i for i, path in enumerate(self.images)}
        if with_part_masks:
            missing = [p for pool in self._ego_pool for p in pool if not self._part_mask_path(p).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"with_part_masks needs a part mask for every egocentric training image; {len(missing)} are "
                    f"missing, e.g. {self._part_mask_path(missing[0])}. Only the synthetic world has them "
                    "(datasets.synthetic writes <split>/masks/train_part/); regenerate it, or turn "
                    "model.extensions.oracle_prototypes off."
                )
        if self.depth_root is not None:
            if with_part_masks:
                raise ValueError("AGD20KTrain: depth maps and part masks (the oracle diagnostic) cannot be combined")
            check_depth_maps(self.images, self.root, self.depth_root)
        logger.info(
            "AGD20KTrain %s: %d exocentric samples in %d folders, %d classes",
            split,
            len(self.samples),
            len(self.folders),
            len(self.class_names),
        )

    @property
    def skipped(self) -> int:
        """Unreadable files met so far by this process (each DataLoader worker keeps its own count)."""
        return len(self._bad)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Reseed pairing and augmentation: (seed, epoch, index) determines an item.

        The epoch lives in shared memory, so workers (persistent ones included) see it at their next item; call
        it before iterating the loader for the epoch.
        """
        self._epoch.fill_(int(epoch))

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        split: str,
        seed: int | None = None,
        class_names: Sequence[str] | None = None,
        with_part_masks: bool | None = None,
        **kwargs: Any,
    ) -> AGD20KTrain:
        """The training set of ``split`` as a :class:`utils.config.Config` describes it (``cfg.data``); ``kwargs``
        go to the constructor as they are.

        ``seed`` defaults to ``cfg.seed`` and ``with_part_masks`` to ``cfg.model.extensions.oracle_prototypes``;
        ``reduced_decode``, ``views``, ``view_seed``, ``depth_root``, ``resize`` and ``exo_partners`` come from
        ``cfg.data``.
        """
        return cls(
            cfg.data.root,
            split=split,
            num_exo=cfg.data.num_exo,
            image_size=cfg.data.image_size,
            resize_size=cfg.data.resize_size,
            seed=cfg.seed if seed is None else seed,
            class_names=class_names,
            with_part_masks=cfg.model.extensions.oracle_prototypes if with_part_masks is None else with_part_masks,
            reduced_decode=cfg.data.reduced_decode,
            views=cfg.data.views,
            view_seed=cfg.data.view_seed,
            depth_root=cfg.data.depth_root or None,
            resize=cfg.data.resize,
            exo_partners=cfg.data.exo_partners,
            **kwargs,
        )

    def __len__(self) -> int:
        return len(self.samples)

    def _part_mask_path(self, ego_path: str) -> Path:
        p = Path(ego_path)
        return self.root / self.split / "masks" / "train_part" / p.parent.parent.name / p.parent.name / f"{p.stem}.png"

    def _candidates(self, path: str, pools: Sequence[Sequence[str]], index: int, slot: int) -> list[str]:
        """``path``, then a seeded permutation of each pool in turn: the replacements of an unreadable image.

        The order depends only on (seed, epoch, index, slot), not on what this process met before, so runs stay
        reproducible across workers.
        """
        candidates = [path]
        for k, pool in enumerate(pools):
            perm = np.random.default_rng([self.seed, self.epoch, index, slot, k]).permutation(len(pool))
            candidates += [pool[j] for j in perm]
        return candidates

    def _read(
        self, path: str, pools: Sequence[Sequence[str]], index: int, slot: int, full_size: bool = False
    ) -> tuple[np.ndarray, str]:
        """Decode ``path``; if unreadable, the first readable one of :meth:`_candidates`.

        Large JPEGs are decoded at a reduced scale (``reduced_decode``) unless ``full_size``.
        """
        min_side = self.resize_size if self.reduced_decode and not full_size else None
        for cand in self._candidates(path, pools, index, slot):
            if cand in self._bad:
                continue
            try:
                img = read_image(cand, min_side=min_side)
            except (ValueError, OSError) as err:
                self._bad.add(cand)
                logger.warning("Skipping unreadable training image (%s); using another image of the folder", err)
                continue
            return img, cand
        raise RuntimeError(
            f"Every candidate image for '{path}' is unreadable ({len(self._bad)} unreadable files so far). "
            "Run `python -m datasets.agd20k ROOT --split SPLIT` to list them."
        )

    def view_rng(self, path: str, view: int) -> np.random.Generator:
        """The generator of view ``view`` of the image at ``path`` (its crop and flip)."""
        return np.random.default_rng([self.view_seed, self._image_id[path], view])

    def _augment_rng(self, path: str, rng: np.random.Generator) -> tuple[np.random.Generator, int]:
        """(generator of the crop and flip, view index): the sample's own without views (view -1), else one view's."""
        if not self.views:
            return rng, -1
        view = int(rng.integers(self.views))
        return self.view_rng(path, view), view

    def _partners(self, files: Sequence[str], j: int, rng: np.random.Generator) -> list[str]:
        """The ``num_exo - 1`` other exocentric images of the anchor ``files[j]``'s folder (``exo_partners``)."""
        others = [f for k, f in enumerate(files) if k != j]
        need = self.num_exo - 1
        # LOCATE's loader draws distinct partners only from folders of more than num_exo images
        distinct = len(files) > self.num_exo if self.exo_partners == "published" else len(others) >= need
        if distinct:
            return [others[k] for k in rng.choice(len(others), size=need, replace=False)]
        return [files[k] for k in rng.integers(0, len(files), size=need)]  # small folder: repeat images

    def __getitem__(self, index: int) -> dict:
        folder, j = self.samples[index]
        aff, obj = self.folders[folder]
        files = self._exo_files[folder]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        exo_pools = (files, self._aff_exo_pool[aff])
        exo = [
            self._load(p, exo_pools, index, slot, rng)
            for slot, p in enumerate([files[j], *self._partners(files, j, rng)])
        ]
        ego_pool = self._ego_pool[folder]
        ego_choice = ego_pool[int(rng.integers(0, len(ego_pool)))]
        ego = self._load(ego_choice, (ego_pool,), index, self.num_exo, rng, ego=True)
        return {
            **self._collate_views(exo, ego),
            "label": self._label[aff],
            "affordance": aff,
            "object": obj,
            "exo_paths": [e["path"] for e in exo],
            "ego_path": ego["path"],
        }

    def _load(
        self,
        path: str,
        pools: Sequence[Sequence[str]],
        index: int,
        slot: int,
        rng: np.random.Generator,
        ego: bool = False,
    ) -> dict[str, Any]:
        """One image of a sample: ``path`` or its replacement, augmented (with its depth map, or the egocentric part
        mask)."""
        with_mask = ego and self.with_part_masks
        img, used = self._read(path, pools, index, slot, full_size=with_mask)
        aug, _ = self._augment_rng(used, rng)
        if self.depth_root is not None:
            depth = read_depth(depth_path(used, self.root, self.depth_root))
            image, depth_t = train_transform_with_depth(img, depth, self.resize_size, self.image_size, aug, self.resize)
            return {"image": image, "depth": depth_t, "path": used}  # (3, S, S), (1, S, S)
        if not with_mask:
            image = train_transform(img, self.resize_size, self.image_size, aug, self.resize)  # (3, S, S)
            return {"image": image, "path": used}
        mask = read_mask(self._part_mask_path(used), None)  # (H, W) in {0, 1}
        image, part = train_transform_with_mask(
            img, (mask * 255).astype(np.uint8), self.resize_size, self.image_size, aug, self.resize
        )
        return {"image": image, "ego_part_mask": part, "path": used}

    def _collate_views(self, exo: list[dict[str, Any]], ego: dict[str, Any]) -> dict[str, Any]:
        """The image tensors of a sample: ``exo`` (n, 3, S, S), ``ego`` (3, S, S) (and ``ego_part_mask``, or
        ``exo_depth`` (n, 1, S, S) and ``ego_depth`` (1, S, S))."""
        out = {"exo": torch.stack([e["image"] for e in exo]), "ego": ego["image"]}
        if "ego_part_mask" in ego:
            out["ego_part_mask"] = ego["ego_part_mask"]
        if "depth" in ego:
            out["exo_depth"] = torch.stack([e["depth"] for e in exo])
            out["ego_depth"] = ego["depth"]
        return out
