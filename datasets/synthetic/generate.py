"""Writing the synthetic world to disk: ``generate_world`` (always writes) and ``ensure_world`` (writes if needed)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from datasets.synthetic.describe import _readme, _write_contact_sheet
from datasets.synthetic.files import MARKER_NAME, PARTIAL_NAME, ROOT_FILES, _destinations, _jobs, _params
from datasets.synthetic.render import _render_job
from datasets.synthetic.world import world_layout

logger = logging.getLogger(__name__)


def generate_world(
    out: str | os.PathLike,
    seed: int = 0,
    image_size: int = 128,
    exo_per_folder: int = 24,
    ego_per_folder: int = 8,
    test_per_folder: int = 6,
    workers: int = 0,
    progress: bool = True,
) -> Path:
    """Write a complete synthetic world in the AGD20K layout under ``out``.

    Writes ``<out>/{Seen,Unseen}/{trainset,testset}/...`` as AGD20K does, masks of the test images under
    ``<out>/<Split>/masks/{object,part}/<aff>/<obj>/<stem>.png`` and the affordance-part masks of the egocentric
    training images under ``<out>/<Split>/masks/train_part/`` (diagnostics only), ``classes.json``, ``README.txt``,
    ``contact_sheet.png``, and last a marker file with the parameters (see ``ensure_world``).

    Args:
        out: the world root; created if needed. A previous synthetic world there is replaced; a folder holding
            Seen/Unseen that this generator did not write is refused (it might be the real dataset).
        seed: the same seed gives byte-identical files.
        image_size: side of every (square) image.
        exo_per_folder: exocentric training images per <affordance>/<object> folder.
        ego_per_folder: egocentric training images per folder.
        test_per_folder: egocentric test images (with GT and masks) per folder.
        workers: processes used for rendering (0 renders in this process); never changes the output.
        progress: show a tqdm progress bar.

    Returns:
        The world root.
    """
    root = Path(out)
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    if min(exo_per_folder, ego_per_folder, test_per_folder) < 1:
        raise ValueError(
            "exo_per_folder, ego_per_folder and test_per_folder must all be >= 1, got "
            f"{exo_per_folder}, {ego_per_folder}, {test_per_folder}"
        )
    params = _params(seed, image_size, exo_per_folder, ego_per_folder, test_per_folder)
    _clear_previous_world(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / PARTIAL_NAME).write_text(json.dumps(params, indent=2, sort_keys=True))

    layout = world_layout()
    jobs = _jobs(params, layout)

    bar = tqdm(total=len(jobs), desc="synthetic world", unit="img", disable=not progress, leave=False)
    executor = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        results = executor.map(_render_job, jobs, chunksize=16) if executor else map(_render_job, jobs)
        for job, files in zip(jobs, results):
            for key, path in _destinations(root, job, layout):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(files[key])
            bar.update(1)
    finally:
        bar.close()
        if executor:
            executor.shutdown()

    classes = {"Seen": layout.seen_affordances, "Unseen": layout.unseen_affordances, "objects": layout.objects}
    (root / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
    (root / "README.txt").write_text(_readme(params, layout))
    _write_contact_sheet(root, layout)
    (root / MARKER_NAME).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    (root / PARTIAL_NAME).unlink(missing_ok=True)
    logger.info("Synthetic world written to %s (%d rendered file sets)", root, len(jobs))
    return root


def _clear_previous_world(root: Path) -> None:
    """Remove what a previous run of this generator wrote; refuse to touch a dataset it did not write."""
    ours = (root / MARKER_NAME).exists() or (root / PARTIAL_NAME).exists()
    split_dirs = [root / s for s in ("Seen", "Unseen") if (root / s).exists()]
    if split_dirs and not ours:
        raise FileExistsError(
            f"'{root}' already holds {', '.join(p.name for p in split_dirs)} but no synthetic-world marker "
            f"({MARKER_NAME}); it may be a real dataset, so it is not overwritten. Choose an empty folder."
        )
    for p in split_dirs:
        shutil.rmtree(p)
    for name in (*ROOT_FILES, MARKER_NAME):
        (root / name).unlink(missing_ok=True)


def ensure_world(
    out: str | os.PathLike,
    seed: int = 0,
    image_size: int = 128,
    exo_per_folder: int = 24,
    ego_per_folder: int = 8,
    test_per_folder: int = 6,
    workers: int = 0,
    progress: bool = True,
) -> Path:
    """Return ``out`` holding a complete world with these parameters, generating it only if needed.

    The marker file is written last by ``generate_world``, so an interrupted generation (no marker) or a world
    made with other parameters (different marker) is generated again. ``workers`` and ``progress`` do not change
    the files and are not part of the parameters.
    """
    root = Path(out)
    params = _params(seed, image_size, exo_per_folder, ego_per_folder, test_per_folder)
    marker = root / MARKER_NAME
    if marker.is_file() and not (root / PARTIAL_NAME).exists():
        try:
            if json.loads(marker.read_text()) == params:
                logger.info("Synthetic world already present at %s", root)
                return root
        except json.JSONDecodeError:
            pass
    return generate_world(root, seed, image_size, exo_per_folder, ego_per_folder, test_per_folder, workers, progress)
