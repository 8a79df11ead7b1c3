"""What a world folder holds: this generator's files (by their manifest), damaged ones, and anybody else's.

The generator never deletes or overwrites a file it cannot prove it wrote. Proof is one of:

- the manifest (``MANIFEST_NAME``), written at the end of a generation just before the completion marker: the
  parameters and every file's relative path and size;
- the partial marker (``PARTIAL_NAME``), written before a generation starts: its parameters give the file names
  that generation was writing, so an interrupted one can be cleaned up;
- the completion marker (``MARKER_NAME``) of a world written before manifests existed: its parameters give the
  file names too.

Every other file is foreign. :func:`inspect_world` sorts a folder into one of the states of :class:`WorldState`.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from datasets.images import image_file_problem
from datasets.synthetic.files import (
    MANIFEST_NAME,
    MARKER_NAME,
    PARTIAL_NAME,
    ROOT_FILES,
    _destinations,
    _jobs,
)
from datasets.synthetic.world import world_layout

_BOOKKEEPING = (MARKER_NAME, MANIFEST_NAME, PARTIAL_NAME)
_SHOWN = 5  # file names quoted in a message before "... and N more"


class WorldFolderError(RuntimeError):
    """The folder cannot be used for the world as it is; the message says why and what to do."""


class DamagedWorldError(WorldFolderError):
    """A world with the requested parameters is there but files are missing or truncated."""


class ForeignFilesError(WorldFolderError):
    """The folder holds files this generator did not write, so it is not written into."""


@dataclass
class WorldState:
    """What :func:`inspect_world` found in a folder.

    ``status`` is one of:

    - ``absent``: the folder does not exist; ``empty``: it holds nothing at all;
    - ``complete``: a world with the requested parameters whose files all match the manifest;
    - ``unlisted``: a complete world with the requested parameters but no manifest (written before manifests
      existed); its files exist and are whole, so a manifest can be written for it;
    - ``damaged``: a world with the requested parameters, but ``damaged`` lists missing or truncated files;
    - ``other``: a finished world made with other parameters (``previous``);
    - ``interrupted``: a generation that did not finish (its partial marker is there);
    - ``unfinished``: a manifest but no readable completion marker;
    - ``unknown``: entries and no readable marker of this generator (all of them are ``foreign``).

    ``ours`` lists the files (relative, ``/``-separated) this generator wrote, ``foreign`` all the others.
    """

    root: Path
    status: str
    previous: dict | None = None
    ours: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    n_listed: int = 0  # files the world should have (manifest or expected names)
    unreadable_marker: bool = False  # a marker file of this generator is there but does not parse


def expected_files(params: dict) -> list[str]:
    """Relative paths of every file a generation with ``params`` writes, bookkeeping files excluded."""
    layout = world_layout()
    root = Path("/")
    out = [
        path.relative_to(root).as_posix()
        for job in _jobs(params, layout)
        for _, path in _destinations(root, job, layout)
    ]
    return out + list(ROOT_FILES)


def write_manifest(root: Path, params: dict, sizes: dict[str, int]) -> None:
    """Write the manifest: the parameters and {relative path: size in bytes} of every file of the world."""
    text = json.dumps({"params": params, "files": dict(sorted(sizes.items()))}, indent=0, sort_keys=True)
    (root / MANIFEST_NAME).write_text(text + "\n")


def _read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None if the file is missing, unreadable or not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _walk(root: Path) -> list[str]:
    """Every file under ``root`` (relative, ``/``-separated, sorted); links count as files."""
    out = []
    for dirpath, _, names in os.walk(root):
        base = Path(dirpath).relative_to(root)
        out += [(base / n).as_posix() for n in names]
    return sorted(out)


def _manifest_damage(root: Path, files: dict[str, int]) -> list[str]:
    """Files of the manifest that are missing or have another size (a stat per file: cheap)."""
    bad = []
    for rel, size in files.items():
        try:
            found = os.path.getsize(root / rel)
        except OSError:
            bad.append(f"{rel} (missing)")
            continue
        if found != size:
            bad.append(f"{rel} ({found} bytes, expected {size})")
    return bad


def _structural_damage(root: Path, names: list[str]) -> list[str]:
    """Files that are missing, empty or cut short (reads each image's first and last bytes only)."""
    bad = []
    for rel in names:
        path = root / rel
        if not path.is_file():
            problem = "missing"
        elif path.stat().st_size == 0:
            problem = "empty file"
        else:
            problem = image_file_problem(path)
        if problem is not None:
            bad.append(f"{rel} ({problem})")
    return bad


def inspect_world(root: str | os.PathLike, params: dict) -> WorldState:
    """Sort the folder ``root`` into a :class:`WorldState` for a world with ``params``; changes nothing.

    Raises:
        WorldFolderError: ``root`` exists but is not a folder.
    """
    root = Path(root)
    if not root.exists():
        return WorldState(root, "absent")
    if not root.is_dir():
        raise WorldFolderError(f"'{root}' is a file, not a folder: the synthetic world needs a folder there.")
    present = _walk(root)
    if not present and not any(root.iterdir()):
        return WorldState(root, "empty")

    marker = _read_json(root / MARKER_NAME)
    manifest = _read_json(root / MANIFEST_NAME)
    partial = _read_json(root / PARTIAL_NAME)
    listed: dict[str, int] | None = None
    if manifest is not None and isinstance(manifest.get("files"), dict) and isinstance(manifest.get("params"), dict):
        listed = {str(k): int(v) for k, v in manifest["files"].items()}
    else:
        manifest = None
    owned = set(_BOOKKEEPING)
    if listed is not None:
        owned |= set(listed)
    for known in (marker, partial):
        if known is not None:
            with contextlib.suppress(KeyError, TypeError, ValueError):  # another format: file names unknown
                owned |= set(expected_files(known))
    if listed is None and marker is None and partial is None:
        owned = set()
    state = WorldState(root, "unknown")
    state.unreadable_marker = any((root / n).is_file() and _read_json(root / n) is None for n in _BOOKKEEPING)
    state.ours = [f for f in present if f in owned]
    state.foreign = [f for f in present if f not in owned]
    if not owned:
        # nothing says these are ours; quote the top-level entries when there are folders but no files
        state.foreign = present or sorted(p.name + "/" for p in root.iterdir())
        return state

    if partial is not None:
        state.status, state.previous = "interrupted", partial
    elif marker is None:
        state.status, state.previous = "unfinished", manifest["params"] if manifest else None
    elif marker != params:
        state.status, state.previous = "other", marker
    elif manifest is not None:
        state.previous = marker
        state.n_listed = len(listed)
        state.damaged = _manifest_damage(root, listed)
        if manifest["params"] != marker:
            state.damaged.insert(0, f"{MANIFEST_NAME} (its parameters differ from {MARKER_NAME})")
        state.status = "damaged" if state.damaged else "complete"
    else:
        state.previous = marker
        names = expected_files(params)
        state.n_listed = len(names)
        state.damaged = _structural_damage(root, names)
        state.status = "damaged" if state.damaged else "unlisted"
    return state


def quote(names: list[str], shown: int = _SHOWN) -> str:
    """'a, b, c and 7 more': the first few names of a list and the count of the rest."""
    head = ", ".join(names[:shown])
    return head + (f" and {len(names) - shown} more" if len(names) > shown else "")


def describe_change(previous: dict | None, params: dict) -> str:
    """'seed 0 -> 1, image_size 128 -> 64': the parameters that differ."""
    if not previous:
        return "unknown parameters"
    diffs = [f"{k} {previous.get(k)} -> {v}" for k, v in params.items() if previous.get(k) != v]
    return ", ".join(diffs) or "the same parameters"


def clear_world(state: WorldState) -> None:
    """Delete this generator's files found by :func:`inspect_world`, then the folders they leave empty.

    The markers go last, so that an interruption here leaves a folder whose files are still known to be ours.

    Raises:
        ForeignFilesError: the folder holds a file this generator did not write (nothing is deleted).
    """
    if state.foreign:
        raise foreign_files_error(state)
    root = state.root
    for rel in state.ours:
        if rel not in _BOOKKEEPING:
            (root / rel).unlink(missing_ok=True)
    for dirpath, _, _ in sorted(os.walk(root), key=lambda t: -len(Path(t[0]).parts)):  # deepest first
        if Path(dirpath) != root and not any(Path(dirpath).iterdir()):
            Path(dirpath).rmdir()
    for name in (MANIFEST_NAME, MARKER_NAME, PARTIAL_NAME):
        (root / name).unlink(missing_ok=True)


def foreign_files_error(state: WorldState) -> ForeignFilesError:
    """The error for a folder that holds files this generator did not write."""
    why = ""
    if state.unreadable_marker:
        why = f" (a marker file of the generator, {', '.join(_BOOKKEEPING)}, is there but unreadable)"
    return ForeignFilesError(
        f"'{state.root}' holds files that the synthetic-world generator did not write{why} "
        f"({len(state.foreign)}): {quote(state.foreign)}. They may be a real dataset or your own files, so nothing "
        "was changed. "
        "Choose an empty folder for the world (data.root / --out), or move those files away (delete the folder "
        "if it only held a synthetic world)."
    )
