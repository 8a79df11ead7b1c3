"""The dataset checker: ``python -m datasets.agd20k ROOT --split Seen`` counts images and lists every problem."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from datasets.agd20k.layout import (
    OBJECTS,
    SUBSETS,
    _dirs,
    _empty_folders,
    _layout_error,
    _read_classes_json,
    _resolve_class_names,
    _tree,
)
from datasets.images import is_image_file, read_gt, read_image

_EXPECTED_CHILDREN = {"": {"trainset", "testset", "masks"}, "trainset": {"exocentric", "egocentric"},
                      "testset": {"egocentric", "GT"}}  # fmt: skip


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
