"""Writing the synthetic world to disk: ``ensure_world`` (reuse, or write when that is safe) and ``generate_world``.

Neither ever deletes or overwrites a file that this generator did not write (``folder`` tells them apart).
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from datasets.synthetic.describe import _readme, _write_contact_sheet
from datasets.synthetic.files import MARKER_NAME, PARTIAL_NAME, ROOT_FILES, _destinations, _jobs, _params
from datasets.synthetic.folder import (
    DamagedWorldError,
    WorldState,
    clear_world,
    describe_change,
    expected_files,
    foreign_files_error,
    inspect_world,
    quote,
    write_manifest,
)
from datasets.synthetic.render import _render_job
from datasets.synthetic.world import world_layout

logger = logging.getLogger(__name__)


def _checked_params(seed: int, image_size: int, exo_per_folder: int, ego_per_folder: int, test_per_folder: int) -> dict:
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    if min(exo_per_folder, ego_per_folder, test_per_folder) < 1:
        raise ValueError(
            "exo_per_folder, ego_per_folder and test_per_folder must all be >= 1, got "
            f"{exo_per_folder}, {ego_per_folder}, {test_per_folder}"
        )
    return _params(seed, image_size, exo_per_folder, ego_per_folder, test_per_folder)


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
    """Write a complete synthetic world in the AGD20K layout under ``out``, whatever is there already.

    Writes ``<out>/{Seen,Unseen}/{trainset,testset}/...`` as AGD20K does, masks of the test images under
    ``<out>/<Split>/masks/{object,part}/<aff>/<obj>/<stem>.png`` and the affordance-part masks of the egocentric
    training images under ``<out>/<Split>/masks/train_part/`` (diagnostics only), ``classes.json``, ``README.txt``,
    ``contact_sheet.png``, then the manifest (every file's path and size) and last a marker file with the
    parameters (see ``ensure_world``, which reuses a world instead of writing it again).

    Args:
        out: the world root; created if needed. A previous world of this generator there is replaced (whatever
            its parameters or state); a folder holding any file this generator did not write is refused.
        seed: the same seed gives byte-identical files.
        image_size: side of every (square) image.
        exo_per_folder: exocentric training images per <affordance>/<object> folder.
        ego_per_folder: egocentric training images per folder.
        test_per_folder: egocentric test images (with GT and masks) per folder.
        workers: processes used for rendering (0 renders in this process); never changes the output.
        progress: show a tqdm progress bar.

    Returns:
        The world root.

    Raises:
        ForeignFilesError: the folder holds files this generator did not write (nothing is changed).
        ValueError: a parameter is out of range.
    """
    params = _checked_params(seed, image_size, exo_per_folder, ego_per_folder, test_per_folder)
    state = inspect_world(out, params)
    if state.foreign:
        raise foreign_files_error(state)
    return _write(state, params, workers, progress)


def _write(state: WorldState, params: dict, workers: int, progress: bool) -> Path:
    """Replace this generator's files in ``state.root`` by a new world (the folder holds nothing else)."""
    root = state.root
    if state.status not in ("absent", "empty"):
        clear_world(state)
    root.mkdir(parents=True, exist_ok=True)
    (root / PARTIAL_NAME).write_text(json.dumps(params, indent=2, sort_keys=True))

    layout = world_layout()
    jobs = _jobs(params, layout)
    sizes: dict[str, int] = {}
    bar = tqdm(total=len(jobs), desc="synthetic world", unit="img", disable=not progress, leave=False)
    executor = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        results = executor.map(_render_job, jobs, chunksize=16) if executor else map(_render_job, jobs)
        for job, files in zip(jobs, results):
            for key, path in _destinations(root, job, layout):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(files[key])
                sizes[path.relative_to(root).as_posix()] = len(files[key])
            bar.update(1)
    finally:
        bar.close()
        if executor:
            executor.shutdown()

    classes = {"Seen": layout.seen_affordances, "Unseen": layout.unseen_affordances, "objects": layout.objects}
    (root / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
    (root / "README.txt").write_text(_readme(params, layout))
    _write_contact_sheet(root, layout)
    sizes.update({name: (root / name).stat().st_size for name in ROOT_FILES})
    write_manifest(root, params, sizes)
    (root / MARKER_NAME).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    (root / PARTIAL_NAME).unlink(missing_ok=True)
    logger.info("Synthetic world written to %s (%d rendered file sets, %d files)", root, len(jobs), len(sizes))
    return root


def _cli_command(root: Path, params: dict) -> str:
    return (
        f"python -m datasets.synthetic --out {root} --seed {params['seed']} --image-size {params['image_size']} "
        f"--exo {params['exo_per_folder']} --ego {params['ego_per_folder']} --test {params['test_per_folder']} "
        "--regenerate"
    )


def _damaged_error(state: WorldState, params: dict) -> DamagedWorldError:
    return DamagedWorldError(
        f"The synthetic world at '{state.root}' is damaged: {len(state.damaged)} of its {state.n_listed} files are "
        f"missing or truncated: {quote(state.damaged)}. Nothing was overwritten. To get a whole world again, "
        f"delete the folder (if it holds nothing of yours) or regenerate it: `{_cli_command(state.root, params)}` "
        "(in Python: ensure_world(..., regenerate=True))."
    )


_REASONS = {
    "absent": "generating ({params}): the folder does not exist",
    "empty": "generating ({params}): the folder is empty",
    "interrupted": "regenerating: a previous generation into this folder was interrupted (it left {partial})",
    "unfinished": "regenerating: the folder holds an unfinished world of this generator (no readable {marker})",
}


def ensure_world(
    out: str | os.PathLike,
    seed: int = 0,
    image_size: int = 128,
    exo_per_folder: int = 24,
    ego_per_folder: int = 8,
    test_per_folder: int = 6,
    workers: int = 0,
    progress: bool = True,
    regenerate: bool = False,
) -> Path:
    """Return ``out`` holding a complete world with these parameters; write it only when that is safe.

    - A complete world with these parameters is reused after a cheap check: every file of its manifest exists
      with its size. (A world written before manifests existed gets every file checked whole, and a manifest.)
    - A damaged one (files missing or of another size) raises :class:`DamagedWorldError` naming the files;
      it is never written over unless ``regenerate`` is set.
    - The world is (re)generated, with a log line saying why, when the folder does not exist, is empty, or holds
      only files of this generator: a world with other parameters, or an interrupted generation.
    - A folder holding any other file raises :class:`ForeignFilesError` listing them, ``regenerate`` or not.

    ``workers`` and ``progress`` do not change the files and are not part of the parameters.

    Args:
        regenerate: write the world again even if a complete or damaged one with these parameters is there.

    Raises:
        DamagedWorldError: see above (the message says how to regenerate).
        ForeignFilesError: see above (nothing is changed).
        ValueError: a parameter is out of range.
    """
    params = _checked_params(seed, image_size, exo_per_folder, ego_per_folder, test_per_folder)
    state = inspect_world(out, params)
    root = state.root
    if not regenerate:
        if state.status == "complete":
            logger.info("Synthetic world already present at %s (%d files checked)", root, state.n_listed)
            return root
        if state.status == "unlisted":
            sizes = {name: (root / name).stat().st_size for name in expected_files(params)}
            try:
                write_manifest(root, params, sizes)
                note = "manifest written"
            except OSError as err:
                note = f"could not write its manifest ({err})"
            logger.info("Synthetic world already present at %s (every file checked whole; %s)", root, note)
            return root
        if state.status == "damaged":
            raise _damaged_error(state, params)
    if state.foreign:
        raise foreign_files_error(state)
    if state.status == "other":
        change = describe_change(state.previous, params)
        reason = f"regenerating: the folder holds a world made with other parameters ({change})"
    elif state.status in _REASONS:
        per_folder = f"{exo_per_folder}/{ego_per_folder}/{test_per_folder}"
        what = f"seed {seed}, {image_size} px, {per_folder} exo/ego/test images per folder"
        reason = _REASONS[state.status].format(params=what, partial=PARTIAL_NAME, marker=MARKER_NAME)
    else:
        reason = "regenerating as asked (regenerate=True)"
        if state.damaged:
            reason += f"; it was damaged: {quote(state.damaged)}"
    level = logging.INFO if state.status in ("absent", "empty") else logging.WARNING
    logger.log(level, "Synthetic world at %s: %s", root, reason)
    return _write(state, params, workers, progress)
