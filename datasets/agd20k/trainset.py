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
        if with_part_masks:
            missing = [p for pool in self._ego_pool for p in pool if not self._part_mask_path(p).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"with_part_masks needs a part mask for every egocentric training image; {len(missing)} are "
                    f"missing, e.g. {self._part_mask_path(missing[0])}. Only the synthetic world has them "
                    "(datasets.synthetic writes <split>/masks/train_part/); regenerate it, or turn "
                    "model.extensions.oracle_prototypes off."
                )
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
    ) -> AGD20KTrain:
        """The training set of ``split`` as a :class:`utils.config.Config` describes it (``cfg.data``).

        ``seed`` defaults to ``cfg.seed`` and ``with_part_masks`` to ``cfg.model.extensions.oracle_prototypes``;
        ``reduced_decode``, ``resize`` and ``exo_partners`` are those of ``cfg.data``.
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
            resize=cfg.data.resize,
            exo_partners=cfg.data.exo_partners,
        )

    def __len__(self) -> int:
        return len(self.samples)

    def _part_mask_path(self, ego_path: str) -> Path:
        p = Path(ego_path)
        return self.root / self.split / "masks" / "train_part" / p.parent.parent.name / p.parent.name / f"{p.stem}.png"

    def _read(
        self, path: str, pools: Sequence[Sequence[str]], index: int, slot: int, full_size: bool = False
    ) -> tuple[np.ndarray, str]:
        """Decode ``path``; if unreadable, the first readable file of a seeded permutation of each pool in turn.

        Large JPEGs are decoded at a reduced scale (``reduced_decode``) unless ``full_size``.

        The replacement depends only on (seed, epoch, index, slot) and on which files are readable, not on what
        this process met before, so runs stay reproducible across workers.
        """
        min_side = self.resize_size if self.reduced_decode and not full_size else None
        candidates = [path]
        for k, pool in enumerate(pools):
            perm = np.random.default_rng([self.seed, self.epoch, index, slot, k]).permutation(len(pool))
            candidates += [pool[j] for j in perm]
        for cand in candidates:
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

    def __getitem__(self, index: int) -> dict:
        folder, j = self.samples[index]
        aff, obj = self.folders[folder]
        files = self._exo_files[folder]
        epoch = self.epoch
        rng = np.random.default_rng([self.seed, epoch, index])
        others = [f for k, f in enumerate(files) if k != j]
        need = self.num_exo - 1
        # LOCATE's loader draws distinct partners only from folders of more than num_exo images
        distinct = len(files) > self.num_exo if self.exo_partners == "published" else len(others) >= need
        if distinct:
            partners = [others[k] for k in rng.choice(len(others), size=need, replace=False)]
        else:  # small folder: repeat images (the anchor included) rather than fail
            partners = [files[k] for k in rng.integers(0, len(files), size=need)]
        exo_pools = (files, self._aff_exo_pool[aff])
        exo_imgs, exo_paths = [], []
        for slot, path in enumerate([files[j], *partners]):
            img, used = self._read(path, exo_pools, index, slot)
            exo_imgs.append(train_transform(img, self.resize_size, self.image_size, rng, self.resize))
            exo_paths.append(used)
        ego_pool = self._ego_pool[folder]
        ego_choice = ego_pool[int(rng.integers(0, len(ego_pool)))]
        ego_img, ego_path = self._read(ego_choice, (ego_pool,), index, self.num_exo, full_size=self.with_part_masks)
        extra = {}
        if self.with_part_masks:
            mask = read_mask(self._part_mask_path(ego_path), None)  # (H, W) in {0, 1}
            ego, extra["ego_part_mask"] = train_transform_with_mask(
                ego_img, (mask * 255).astype(np.uint8), self.resize_size, self.image_size, rng, self.resize
            )
        else:
            ego = train_transform(ego_img, self.resize_size, self.image_size, rng, self.resize)  # (3, S, S)
        return {
            "exo": torch.stack(exo_imgs),  # (n, 3, S, S)
            "ego": ego,
            **extra,
            "label": self._label[aff],
            "affordance": aff,
            "object": obj,
            "exo_paths": exo_paths,
            "ego_path": ego_path,
        }
