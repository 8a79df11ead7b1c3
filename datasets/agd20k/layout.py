"""The AGD20K class lists and the folder layout: where each subset lives, which classes a root has.

Labels index the split's alphabetical affordance list: the published 36 (Seen) / 25 (Unseen) classes for AGD20K,
``classes.json`` in the root for other datasets, or else the folder names, sorted.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from datasets.images import is_image_file

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
