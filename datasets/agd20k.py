"""AGD20K loaders (and any dataset in its layout, such as the synthetic world), plus a dataset checker.

Layout (SPEC §1)::

    <root>/<Seen|Unseen>/trainset/exocentric/<affordance>/<object>/<name>.jpg
    <root>/<Seen|Unseen>/trainset/egocentric/<affordance>/<object>/<name>.jpg
    <root>/<Seen|Unseen>/testset/egocentric/<affordance>/<object>/<name>.jpg
    <root>/<Seen|Unseen>/testset/GT/<affordance>/<object>/<name>.png

Labels index the split's alphabetical affordance list: the published 36 (Seen) / 25 (Unseen) classes for AGD20K,
``classes.json`` in the root for other datasets, or else the folder names, sorted.

``python -m datasets.agd20k ROOT --split Seen`` prints a summary and lists every problem it finds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from datasets.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    is_image_file,
    read_gt,
    read_image,
    read_mask,
    resize_gt,
    to_tensor,
    train_transform,
    train_transform_with_mask,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LAYOUT",
    "OBJECTS",
    "SEEN_AFFORDANCES",
    "UNSEEN_AFFORDANCES",
    "AGD20KTest",
    "AGD20KTrain",
    "format_summary",
    "load_class_names",
    "main",
    "summarize",
]

logger = logging.getLogger(__name__)

SEEN_AFFORDANCES: tuple[str, ...] = (
    "beat", "boxing", "brush_with", "carry", "catch", "cut", "cut_with", "drag", "drink_with", "eat", "hit", "hold",
    "jump", "kick", "lie_on", "lift", "look_out", "open", "pack", "peel", "pick_up", "pour", "push", "ride", "sip",
    "sit_on", "stick", "stir", "swing", "take_photo", "talk_on", "text_on", "throw", "type_on", "wash", "write",
)  # fmt: skip
_UNSEEN_DROPPED = {
    "beat",
    "boxing",
    "brush_with",
    "drag",
    "lift",
    "look_out",
    "pack",
    "stir",
    "talk_on",
    "text_on",
    "write",
}
UNSEEN_AFFORDANCES: tuple[str, ...] = tuple(a for a in SEEN_AFFORDANCES if a not in _UNSEEN_DROPPED)
OBJECTS: tuple[str, ...] = (
    "apple", "axe", "badminton_racket", "banana", "baseball", "baseball_bat", "basketball", "bed", "bench", "bicycle",
    "binoculars", "book", "bottle", "bowl", "broccoli", "camera", "carrot", "cell_phone", "chair", "couch", "cup",
    "discus", "drum", "fork", "frisbee", "golf_clubs", "hammer", "hot_dog", "javelin", "keyboard", "knife", "laptop",
    "microwave", "motorcycle", "orange", "oven", "pen", "punching_bag", "refrigerator", "rugby_ball", "scissors",
    "skateboard", "skis", "snowboard", "soccer_ball", "suitcase", "surfboard", "tennis_racket", "toothbrush",
    "wine_glass",
)  # fmt: skip
_STANDARD = {"Seen": SEEN_AFFORDANCES, "Unseen": UNSEEN_AFFORDANCES}

#: Sub-folders of a split that hold <affordance>/<object>/ trees.
SUBSETS: dict[str, str] = {
    "train_exo": "trainset/exocentric",
    "train_ego": "trainset/egocentric",
    "test_ego": "testset/egocentric",
    "test_gt": "testset/GT",
}
_EXPECTED_CHILDREN = {"": {"trainset", "testset", "masks"}, "trainset": {"exocentric", "egocentric"},
                      "testset": {"egocentric", "GT"}}  # fmt: skip

LAYOUT = """\
<root>/
├── classes.json                 (optional: {"Seen": [...], "Unseen": [...]}; else standard/folder names)
├── Seen/                        (and/or Unseen/)
│   ├── trainset/
│   │   ├── exocentric/<affordance>/<object>/<name>.jpg
│   │   └── egocentric/<affordance>/<object>/<name>.jpg
│   └── testset/
│       ├── egocentric/<affordance>/<object>/<name>.jpg
│       └── GT/<affordance>/<object>/<name>.png      (same stem as the test image)
└── Unseen/ ..."""


# ------------------------------------------------------------------------------------------------ layout helpers
def _dirs(path: Path) -> list[Path]:
    """Sorted non-hidden sub-folders (empty list if ``path`` is not a folder)."""
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(path: Path) -> list[Path]:
    """Sorted image files of a folder; non-image files (.DS_Store, .txt) are ignored."""
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))


def _layout_error(root: Path, split: str, missing: Sequence[str]) -> FileNotFoundError:
    """A FileNotFoundError that shows what was expected, what was found and a hint."""
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:20] if root.is_dir() else []
    hint = ""
    if (root / "trainset").is_dir() or (root / "testset").is_dir():
        hint = f"\n'{root}' looks like a split folder itself: pass its parent '{root.parent}' as the root."
    elif not root.exists():
        hint = "\nThe root does not exist: check the path (download AGD20K or run `python -m datasets.synthetic`)."
    return FileNotFoundError(
        f"Dataset root '{root}' does not have the expected layout for split '{split}'. Missing: "
        f"{', '.join(missing)}.\nFound in the root: {found or 'nothing'}.\nExpected layout:\n{LAYOUT}{hint}"
    )


def _check_layout(root: Path, split: str, subsets: Sequence[str]) -> Path:
    split_dir = root / split
    missing = [f"{split}/{SUBSETS[s]}/" for s in subsets if not (split_dir / SUBSETS[s]).is_dir()]
    if missing:
        raise _layout_error(root, split, missing)
    return split_dir


def _read_classes_json(root: Path) -> dict | list | None:
    path = root / "classes.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"'{path}' is not valid JSON ({err}). Fix it or delete it to use the folder names.") from err


def _affordance_folders(split_dir: Path) -> set[str]:
    return {d.name for s in SUBSETS.values() for d in _dirs(split_dir / s)}


def _resolve_class_names(root: Path, split: str) -> tuple[list[str], str]:
    """(class names, where they came from: 'classes.json' | 'standard' | 'folders')."""
    spec = _read_classes_json(root)
    if spec is not None:
        names = spec.get(split) if isinstance(spec, dict) else spec
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
            raise ValueError(
                f"'{root / 'classes.json'}' has no class list for split '{split}'. Expected "
                f'{{"{split}": ["class_a", ...]}} or a plain list of names.'
            )
        if len(set(names)) != len(names):
            dup = sorted(n for n, c in Counter(names).items() if c > 1)
            raise ValueError(f"'{root / 'classes.json'}' lists these classes twice for '{split}': {dup}.")
        return sorted(names), "classes.json"
    folders = _affordance_folders(root / split)
    standard = _STANDARD.get(split)
    # A root that uses any AGD20K name is AGD20K: the published list keeps labels comparable across roots
    # (and a misspelt folder becomes an error, not a 37th class). Otherwise it is a custom dataset.
    if standard is not None and folders & set(standard):
        return list(standard), "standard"
    if not folders:
        raise _layout_error(root, split, [f"{split}/{SUBSETS['train_exo']}/<affordance>/ folders"])
    return sorted(folders), "folders"


def _validate_folders(split_dir: Path, class_names: Sequence[str], subsets: Sequence[str], source: str) -> None:
    known = set(class_names)
    unknown = sorted(
        f"{SUBSETS[s]}/{d.name}" for s in subsets for d in _dirs(split_dir / SUBSETS[s]) if d.name not in known
    )
    if unknown:
        raise ValueError(
            f"Affordance folders not in the class list ({source}, {len(class_names)} classes) under "
            f"'{split_dir}': {unknown}. Valid names: {list(class_names)}. Rename or remove these folders, "
            "or list the classes in <root>/classes.json."
        )


def load_class_names(root: str | os.PathLike, split: str = "Seen") -> list[str]:
    """The split's affordance classes, alphabetical; label = index in this list.

    ``classes.json`` in the root wins ({"Seen": [...], "Unseen": [...]} or a plain list); else the published
    AGD20K list if the folders use AGD20K names; else the folder names, sorted.

    Raises:
        ValueError: an affordance folder is not in the class list (the message lists them and the valid names).
        FileNotFoundError: the root or split does not exist (the message shows the expected layout).
    """
    root = Path(root)
    if not (root / split).is_dir():
        raise _layout_error(root, split, [f"{split}/"])
    names, source = _resolve_class_names(root, split)
    _validate_folders(root / split, names, list(SUBSETS), source)
    return names


def _class_names_for(root: Path, split: str, class_names: Sequence[str] | None, subsets: Sequence[str]) -> list[str]:
    if class_names is None:
        return load_class_names(root, split)
    names = list(class_names)
    if len(set(names)) != len(names):
        raise ValueError(f"class_names has duplicates: {sorted(n for n, c in Counter(names).items() if c > 1)}")
    _validate_folders(root / split, names, subsets, "class_names argument")
    return names


def _tree(base: Path) -> dict[tuple[str, str], list[Path]]:
    """{(affordance, object): sorted image files} for one <affordance>/<object>/ tree."""
    out: dict[tuple[str, str], list[Path]] = {}
    for aff_dir in _dirs(base):
        for obj_dir in _dirs(aff_dir):
            out[(aff_dir.name, obj_dir.name)] = _images(obj_dir)
    return out


def _empty_folders(base: Path) -> list[str]:
    empty = []
    for aff_dir in _dirs(base):
        objs = _dirs(aff_dir)
        if not objs:
            empty.append(str(aff_dir))
        empty += [str(o) for o in objs if not _images(o)]
    return empty


# ------------------------------------------------------------------------------------------------ training
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
        root: dataset root (see the module docstring for the layout).
        split: "Seen" or "Unseen" (or another split folder of a custom dataset).
        num_exo: exocentric images per sample (n).
        image_size: crop side S.
        resize_size: the shorter side is resized to this before the random crop.
        seed: base seed of the pairing and augmentation.
        class_names: the class list (default: ``load_class_names``); folders outside it are an error.
        with_part_masks: also return ``ego_part_mask`` (S, S) in [0, 1], the egocentric image's affordance-part
            mask under the same crop and flip. Only the synthetic world has these masks (under
            ``<split>/masks/train_part/<aff>/<obj>/<stem>.png``); they feed the oracle-prototype diagnostic
            (``model.oracle_prototypes``), never the method itself.
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
                    "(datasets/synthetic.py writes <split>/masks/train_part/); regenerate it, or turn "
                    "model.oracle_prototypes off."
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

        ``seed`` defaults to ``cfg.seed`` and ``with_part_masks`` to ``cfg.model.extensions.oracle_prototypes``.
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
        )

    def __len__(self) -> int:
        return len(self.samples)

    def _part_mask_path(self, ego_path: str) -> Path:
        p = Path(ego_path)
        return self.root / self.split / "masks" / "train_part" / p.parent.parent.name / p.parent.name / f"{p.stem}.png"

    def _read(self, path: str, pools: Sequence[Sequence[str]], index: int, slot: int) -> tuple[np.ndarray, str]:
        """Decode ``path``; if unreadable, the first readable file of a seeded permutation of each pool in turn.

        The replacement depends only on (seed, epoch, index, slot) and on which files are readable, not on what
        this process met before, so runs stay reproducible across workers.
        """
        candidates = [path]
        for k, pool in enumerate(pools):
            perm = np.random.default_rng([self.seed, self.epoch, index, slot, k]).permutation(len(pool))
            candidates += [pool[j] for j in perm]
        for cand in candidates:
            if cand in self._bad:
                continue
            try:
                img = read_image(cand)
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
        if len(others) >= need:
            partners = [others[k] for k in rng.choice(len(others), size=need, replace=False)]
        else:  # small folder: repeat images (the anchor included) rather than fail
            partners = [files[k] for k in rng.integers(0, len(files), size=need)]
        exo_pools = (files, self._aff_exo_pool[aff])
        exo_imgs, exo_paths = [], []
        for slot, path in enumerate([files[j], *partners]):
            img, used = self._read(path, exo_pools, index, slot)
            exo_imgs.append(train_transform(img, self.resize_size, self.image_size, rng))
            exo_paths.append(used)
        ego_pool = self._ego_pool[folder]
        ego_choice = ego_pool[int(rng.integers(0, len(ego_pool)))]
        ego_img, ego_path = self._read(ego_choice, (ego_pool,), index, self.num_exo)
        extra = {}
        if self.with_part_masks:
            mask = read_mask(self._part_mask_path(ego_path), None)  # (H, W) in {0, 1}
            ego, extra["ego_part_mask"] = train_transform_with_mask(
                ego_img, (mask * 255).astype(np.uint8), self.resize_size, self.image_size, rng
            )
        else:
            ego = train_transform(ego_img, self.resize_size, self.image_size, rng)  # (3, S, S)
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


# ------------------------------------------------------------------------------------------------ test
class AGD20KTest(Dataset):
    """Egocentric test images that have a GT map (SPEC §2 protocol: GT PNG / 255, bilinear to ``eval_size``).

    Test images without GT are counted in ``missing_gt`` and logged, never silently dropped.

    Args:
        root: dataset root.
        split: "Seen" or "Unseen".
        image_size: side S of the (square) network input.
        eval_size: side E of the GT map (224 in the published protocol).
        class_names: the class list (default: ``load_class_names``).
        with_masks: also return "object_mask" and "part_mask" (E, E) in {0, 1} when the root has
            ``<split>/masks/{object,part}/<aff>/<obj>/<stem>.png`` for every test image (``has_masks``);
            otherwise a warning is logged and no mask keys are returned.
        cache_dir: if given, the resized GT maps are cached there as one ``.npy`` per split, keyed by a hash of
            the file list and ``eval_size`` (loaded memory-mapped; nothing is pickled).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "Seen",
        image_size: int = 224,
        eval_size: int = 224,
        class_names: Sequence[str] | None = None,
        with_masks: bool = False,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.image_size = image_size
        self.eval_size = eval_size
        split_dir = _check_layout(self.root, split, ["test_ego", "test_gt"])
        self.class_names = _class_names_for(self.root, split, class_names, ["test_ego", "test_gt"])
        self._label = {c: i for i, c in enumerate(self.class_names)}
        gt_root = split_dir / SUBSETS["test_gt"]
        self.items: list[tuple[str, str, str, str]] = []  # (image, affordance, object, gt)
        self.missing_gt: list[str] = []
        for (aff, obj), files in _tree(split_dir / SUBSETS["test_ego"]).items():
            for path in files:
                gt = gt_root / aff / obj / f"{path.stem}.png"
                if gt.is_file():
                    self.items.append((str(path), aff, obj, str(gt)))
                else:
                    self.missing_gt.append(str(path))
        if self.missing_gt:
            logger.warning(
                "%d test images have no GT map and are left out of the evaluation, e.g. %s",
                len(self.missing_gt),
                self.missing_gt[:5],
            )
        if not self.items:
            raise ValueError(
                f"No test image with a GT map under '{split_dir}' ({len(self.missing_gt)} images without GT). "
                f"Expected testset/egocentric/<aff>/<obj>/<name>.jpg with testset/GT/<aff>/<obj>/<name>.png."
            )
        mask_root = split_dir / "masks"
        self._mask_paths = [
            (
                str(mask_root / "object" / a / o / f"{Path(p).stem}.png"),
                str(mask_root / "part" / a / o / f"{Path(p).stem}.png"),
            )
            for p, a, o, _ in self.items
        ]
        self.has_masks = mask_root.is_dir() and all(
            os.path.isfile(m) and os.path.isfile(n) for m, n in self._mask_paths
        )
        self.with_masks = with_masks and self.has_masks
        if with_masks and not self.has_masks:
            logger.warning(
                "with_masks=True but '%s' lacks object/part masks for some test images; none returned", mask_root
            )
        self._gt_cache = self._load_cache(Path(cache_dir)) if cache_dir is not None else None

    def _cache_key(self) -> str:
        h = hashlib.sha256(f"agd20k-gt-v1|{self.eval_size}".encode())
        for _, _, _, gt in self.items:
            h.update(f"|{os.path.relpath(gt, self.root)}:{os.path.getsize(gt)}".encode())
        return h.hexdigest()[:16]

    def _load_cache(self, cache_dir: Path) -> np.ndarray:
        path = cache_dir / f"agd20k_gt_{self.split}_{self.eval_size}_{self._cache_key()}.npy"
        shape = (len(self.items), self.eval_size, self.eval_size)
        if path.is_file():
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.shape == shape and arr.dtype == np.float32:
                logger.info("GT maps loaded from cache %s", path)
                return arr
            logger.warning("Ignoring GT cache %s with shape %s (expected %s)", path, arr.shape, shape)
        arr = np.stack([resize_gt(read_gt(gt), self.eval_size) for _, _, _, gt in self.items])  # (N, E, E)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        logger.info("GT maps cached to %s", path)
        return arr

    @classmethod
    def from_config(
        cls, cfg: Any, split: str, class_names: Sequence[str] | None = None, with_masks: bool = False
    ) -> AGD20KTest:
        """The test set of ``split`` as a :class:`utils.config.Config` describes it (``cfg.data``, GT cache too)."""
        return cls(
            cfg.data.root,
            split=split,
            image_size=cfg.data.image_size,
            eval_size=cfg.data.eval_size,
            class_names=class_names,
            with_masks=with_masks,
            cache_dir=cfg.data.gt_cache or None,
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, aff, obj, gt_path = self.items[index]
        if self._gt_cache is not None:
            gt = np.array(self._gt_cache[index], dtype=np.float32)  # copy out of the memory map
        else:
            gt = resize_gt(read_gt(gt_path), self.eval_size)
        item = {
            "image": to_tensor(read_image(path), self.image_size),  # (3, S, S)
            "gt": torch.from_numpy(gt),  # (E, E)
            "label": self._label[aff],
            "affordance": aff,
            "object": obj,
            "path": path,
        }
        if self.with_masks:
            obj_mask, part_mask = self._mask_paths[index]
            item["object_mask"] = torch.from_numpy(read_mask(obj_mask, self.eval_size))  # (E, E)
            item["part_mask"] = torch.from_numpy(read_mask(part_mask, self.eval_size))  # (E, E)
        return item


# ------------------------------------------------------------------------------------------------ summary
def summarize(root: str | os.PathLike, split: str = "Seen", decode: bool = True, progress: bool = False) -> dict:
    """Count images and find every problem of one split, without raising on a messy tree.

    Args:
        root: dataset root.
        split: split folder name.
        decode: try decoding every image and GT file (slow on the full dataset, but finds truncated files).
        progress: show a progress bar while decoding.

    Returns:
        A dict with ``counts`` {subset: n}, ``per_affordance`` and ``per_object`` {name: {subset: n}},
        ``class_names``, ``class_source``, ``class_error`` (str or None), and the problem lists
        ``missing_gt``, ``orphan_gt``, ``unreadable`` ("path: reason"), ``unknown_folders``, ``empty_folders``,
        ``ignored_files``, ``missing_subsets``, ``ego_fallback`` and ``zero_gt``.

    Raises:
        FileNotFoundError: the split folder does not exist (the message shows the expected layout).
    """
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise _layout_error(root, split, [f"{split}/"])
    rep: dict = {
        "root": str(root),
        "split": split,
        "class_names": None,
        "class_source": None,
        "class_error": None,
        "counts": dict.fromkeys(SUBSETS, 0),
        "per_affordance": {},
        "per_object": {},
        "missing_gt": [],
        "orphan_gt": [],
        "unreadable": [],
        "unknown_folders": [],
        "empty_folders": [],
        "ignored_files": [],
        "missing_subsets": [],
        "ego_fallback": [],
        "zero_gt": [],
    }
    try:
        names, source = _resolve_class_names(root, split)
        rep["class_names"], rep["class_source"] = names, source
    except (ValueError, FileNotFoundError) as err:
        rep["class_error"] = str(err).splitlines()[0]
        names = None
    spec = _read_classes_json(root) if (root / "classes.json").is_file() and rep["class_error"] is None else None
    known_objects = set(spec["objects"]) if isinstance(spec, dict) and "objects" in spec else set(OBJECTS)
    if rep["class_source"] == "folders":
        known_objects = None  # a custom dataset: any object name is fine

    # unexpected folders/files around the subset trees
    for rel, expected in _EXPECTED_CHILDREN.items():
        base = split_dir / rel if rel else split_dir
        for p in sorted(base.iterdir()) if base.is_dir() else []:
            if p.name.startswith("."):
                continue
            if p.is_dir() and p.name not in expected:
                rep["unknown_folders"].append(str(p))
    trees: dict[str, dict[tuple[str, str], list[Path]]] = {}
    for key, rel in SUBSETS.items():
        base = split_dir / rel
        if not base.is_dir():
            rep["missing_subsets"].append(f"{split}/{rel}")
            trees[key] = {}
            continue
        rep["ignored_files"] += [str(p) for p in sorted(base.iterdir()) if p.is_file() and not p.name.startswith(".")]
        for aff_dir in _dirs(base):
            if names is not None and aff_dir.name not in names:
                rep["unknown_folders"].append(str(aff_dir))
            rep["ignored_files"] += [
                str(p) for p in sorted(aff_dir.iterdir()) if p.is_file() and not p.name.startswith(".")
            ]
            for obj_dir in _dirs(aff_dir):
                if known_objects is not None and obj_dir.name not in known_objects:
                    rep["unknown_folders"].append(str(obj_dir))
                for p in sorted(obj_dir.iterdir()):
                    if p.is_dir():
                        rep["unknown_folders"].append(str(p))
                    elif not is_image_file(p) and not p.name.startswith("."):  # hidden files are noise
                        rep["ignored_files"].append(str(p))
        rep["empty_folders"] += _empty_folders(base)
        trees[key] = _tree(base)
        for (aff, obj), files in trees[key].items():
            rep["counts"][key] += len(files)
            for table, name in (("per_affordance", aff), ("per_object", obj)):
                row = rep[table].setdefault(name, dict.fromkeys(SUBSETS, 0))
                row[key] += len(files)

    gt_stems = {(a, o): {p.stem: p for p in files} for (a, o), files in trees["test_gt"].items()}
    test_stems = {(a, o): {p.stem for p in files} for (a, o), files in trees["test_ego"].items()}
    for (aff, obj), files in trees["test_ego"].items():
        have = gt_stems.get((aff, obj), {})
        rep["missing_gt"] += [str(p) for p in files if p.stem not in have]
    for (aff, obj), stems in gt_stems.items():
        rep["orphan_gt"] += [str(p) for s, p in stems.items() if s not in test_stems.get((aff, obj), set())]
    ego_keys = {k for k, files in trees["train_ego"].items() if files}
    rep["ego_fallback"] = [
        f"{a}/{o}" for (a, o), files in trees["train_exo"].items() if files and (a, o) not in ego_keys
    ]

    if decode:
        all_files = [(k, p) for k in SUBSETS for files in trees[k].values() for p in files]
        for key, path in tqdm(all_files, desc=f"decoding {split}", disable=not progress, leave=False):
            try:
                if key == "test_gt":
                    if float(read_gt(path).max()) == 0.0:
                        rep["zero_gt"].append(str(path))
                else:
                    read_image(path)
            except (ValueError, OSError) as err:
                rep["unreadable"].append(f"{path}: {err}")
    return rep


_PROBLEMS = {
    "missing_subsets": "missing sub-folders",
    "missing_gt": "test images without GT (left out of the evaluation)",
    "orphan_gt": "GT maps without a test image",
    "unreadable": "unreadable files",
    "unknown_folders": "unknown folders",
    "empty_folders": "empty folders",
    "ignored_files": "ignored non-image files",
    "ego_fallback": "exocentric folders without egocentric images (paired with any image of the affordance)",
    "zero_gt": "all-zero GT maps",
}


def format_summary(rep: dict, max_items: int = 20) -> str:
    """Human-readable text of a ``summarize`` report."""
    c = rep["counts"]
    lines = [f"== {rep['root']} [{rep['split']}]"]
    if rep["class_error"]:
        lines.append(f"classes: ERROR {rep['class_error']}")
    else:
        lines.append(f"classes: {len(rep['class_names'])} (from {rep['class_source']})")
    lines.append(
        f"images: train exo {c['train_exo']} | train ego {c['train_ego']} | test ego {c['test_ego']} | "
        f"test GT {c['test_gt']}"
    )
    for title, table in (("affordance", rep["per_affordance"]), ("object", rep["per_object"])):
        lines.append(f"per {title}:")
        lines.append(f"  {'name':<18s}{'exo':>7s}{'ego':>7s}{'test':>7s}{'GT':>7s}")
        for name, row in sorted(table.items()):
            counts = "".join(f"{row[k]:>7d}" for k in SUBSETS)
            lines.append(f"  {name:<18s}{counts}")
    n_problems = 0
    for key, title in _PROBLEMS.items():
        items = rep[key]
        if not items:
            continue
        n_problems += len(items)
        lines.append(f"{title} ({len(items)}):")
        lines += [f"  {x}" for x in items[:max_items]]
        if len(items) > max_items:
            lines.append(f"  ... and {len(items) - max_items} more")
    lines.append("no problems found" if n_problems == 0 and not rep["class_error"] else f"{n_problems} problems")
    return "\n".join(lines)


def _has_problems(rep: dict) -> bool:
    serious = ("missing_subsets", "missing_gt", "orphan_gt", "unreadable", "unknown_folders", "empty_folders")
    return bool(rep["class_error"]) or any(rep[k] for k in serious)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m datasets.agd20k ROOT --split Seen``: print a summary; exit 1 if problems, 2 if no dataset."""
    parser = argparse.ArgumentParser(
        prog="python -m datasets.agd20k", description="Summarise an AGD20K-layout dataset and list its problems."
    )
    parser.add_argument("root", help="dataset root (the folder holding Seen/ and Unseen/)")
    parser.add_argument("--split", action="append", help="split to check (repeatable; default: both)")
    parser.add_argument(
        "--no-decode", action="store_true", help="skip decoding every file (faster, misses corrupt files)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    splits = args.split or [s for s in ("Seen", "Unseen") if (Path(args.root) / s).is_dir()] or ["Seen"]
    status = 0
    for split in splits:
        try:
            rep = summarize(args.root, split, decode=not args.no_decode, progress=sys.stderr.isatty())
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(json.dumps(rep, indent=2) if args.json else format_summary(rep))
        status = max(status, int(_has_problems(rep)))
    return status


if __name__ == "__main__":
    sys.exit(main())
