"""Where the synthetic world puts each file: the parameters, the file names and the marker files of its root."""

from __future__ import annotations

from pathlib import Path

from datasets.synthetic.world import WorldLayout

WORLD_VERSION = 2  # 2: part masks of the egocentric training images (masks/train_part/)
MARKER_NAME = ".synthetic_world.json"  # written last: its presence means "complete world with these parameters"
PARTIAL_NAME = ".synthetic_world.partial"  # written first: lets a rerun clean up an interrupted generation
MANIFEST_NAME = ".synthetic_world.manifest.json"  # written before the marker: every file's path and size
ROOT_FILES = ("classes.json", "README.txt", "contact_sheet.png")  # written into the root after the images

#: One rendered file set: (kind, affordance, object, index, seed, image size); kind is exo | ego | test.
Job = tuple[str, str, str, int, int, int]


def _params(seed: int, image_size: int, exo_per_folder: int, ego_per_folder: int, test_per_folder: int) -> dict:
    return {
        "version": WORLD_VERSION,
        "seed": int(seed),
        "image_size": int(image_size),
        "exo_per_folder": int(exo_per_folder),
        "ego_per_folder": int(ego_per_folder),
        "test_per_folder": int(test_per_folder),
    }


def _file_name(obj: str, kind: str, index: int, ext: str) -> str:
    return f"{obj}_{kind}_{index:04d}{ext}"


def _jobs(params: dict, layout: WorldLayout) -> list[Job]:
    """Every file set to render, in writing order; Unseen reuses the Seen renders of its folders."""
    seed, size = params["seed"], params["image_size"]
    jobs: list[Job] = []
    for aff, obj in layout.seen_pairs:
        jobs += [("exo", aff, obj, i, seed, size) for i in range(params["exo_per_folder"])]
        jobs += [("ego", aff, obj, i, seed, size) for i in range(params["ego_per_folder"])]
        jobs += [("test", aff, obj, i, seed, size) for i in range(params["test_per_folder"])]
    return jobs


def _destinations(root: Path, job: Job, layout: WorldLayout) -> list[tuple[str, Path]]:
    """(key of the rendered file, path) for every copy of one file set: Seen, and Unseen when its folder is there."""
    kind, aff, obj, index = job[:4]
    ext = ".jpg"
    splits = ["Seen"]
    if kind in ("exo", "ego") and (aff, obj) in layout.unseen_train_pairs:
        splits.append("Unseen")
    if kind == "test" and (aff, obj) in layout.unseen_test_pairs:
        splits.append("Unseen")
    name = _file_name(obj, kind, index, ext)
    stem = Path(name).stem
    res = []
    for split in splits:
        if kind == "exo":
            res.append(("image", root / split / "trainset" / "exocentric" / aff / obj / name))
        elif kind == "ego":
            res.append(("image", root / split / "trainset" / "egocentric" / aff / obj / name))
            res.append(("part", root / split / "masks" / "train_part" / aff / obj / f"{stem}.png"))
        else:
            res.append(("image", root / split / "testset" / "egocentric" / aff / obj / name))
            res.append(("gt", root / split / "testset" / "GT" / aff / obj / f"{stem}.png"))
            res.append(("object", root / split / "masks" / "object" / aff / obj / f"{stem}.png"))
            res.append(("part", root / split / "masks" / "part" / aff / obj / f"{stem}.png"))
    return res
