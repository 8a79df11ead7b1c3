"""The inputs of folder and video inference: the image files of a folder and the sampled frames of a video.

:func:`list_folder` finds the images under a folder and gives each a file-name-safe output name (its path under the
folder, ``/`` as ``__``, the extension kept when two files would share a name); :func:`folder_items` decodes them
ahead of the model on a thread pool, turning a file that cannot be read into an :class:`Item` with the reason
instead of an error. :class:`VideoFrames` reads every N-th frame of a video through OpenCV, and :func:`batches`
groups either stream for the forward passes. Images are shrunk while they are read so that their longer side is at
most the predictor's ``max_side``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ["VIDEO_EXTENSIONS", "Item", "VideoFrames", "batches", "folder_items", "list_folder", "safe_name"]

#: File endings read as videos (through OpenCV's FFmpeg backend).
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})


@dataclass
class Item:
    """One input: its output name, where it came from, and its pixels or why there are none."""

    name: str
    source: str
    frame: int | None = None
    rgb: np.ndarray | None = None
    error: str | None = None


def safe_name(text: str) -> str:
    """A file-name-safe form of a name or phrase ("cut with" -> "cut_with")."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.strip()).strip("_") or "x"


def list_folder(root: Path, recursive: bool) -> tuple[list[tuple[str, Path]], list[str]]:
    """The image files under ``root`` with their output names, and the other files (ignored)."""
    from datasets.images import is_image_file

    files = sorted(p for p in (root.rglob("*") if recursive else root.iterdir()) if p.is_file())
    images = [p for p in files if is_image_file(p)]
    ignored = [str(p.relative_to(root)) for p in files if not is_image_file(p) and not p.name.startswith(".")]
    stems = [safe_name(str(p.relative_to(root).with_suffix("")).replace("/", "__")) for p in images]
    taken: dict[str, int] = {}
    for s in stems:
        taken[s] = taken.get(s, 0) + 1
    # photo.jpg and photo.png would both write photo_hold.png: keep the extension in such names
    names = [s if taken[s] == 1 else f"{s}_{p.suffix.lstrip('.').lower()}" for s, p in zip(stems, images)]
    return list(zip(names, images)), ignored


def _decode(name: str, path: Path, root: Path, max_side: int | None) -> Item:
    from datasets.images import read_image

    source = str(path.relative_to(root))
    try:
        return Item(name, source, rgb=read_image(path, max_side=max_side))
    except (OSError, ValueError) as e:  # missing, unreadable, not an image, truncated
        return Item(name, source, error=str(e))


def _shrink(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    h, w = rgb.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return rgb
    s = max_side / max(h, w)
    return cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


class VideoFrames:
    """Every ``every``-th frame of a video as RGB, named by its index in the video.

    Raises:
        ValueError: OpenCV cannot open the file (not a video, or a codec its FFmpeg build lacks).
    """

    def __init__(self, path: Path, every: int = 1, max_frames: int | None = None, max_side: int | None = None):
        self.path, self.every, self.max_frames, self.max_side = path, every, max_frames, max_side
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            self.cap.release()
            raise ValueError(
                f"cannot open video {path}: OpenCV could not read it (not a video, or a codec its FFmpeg build "
                "lacks). Convert it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) or extract the frames into a folder."
            )
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0) or 25.0
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        total = -(-count // every) if count > 0 else None
        self.total = min(total, max_frames) if total is not None and max_frames else (total or max_frames)

    def __iter__(self) -> Iterator[Item]:
        index = produced = 0
        try:
            while self.max_frames is None or produced < self.max_frames:
                ok, bgr = self.cap.read()
                if not ok:
                    break
                if index % self.every == 0:
                    rgb = _shrink(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.max_side)
                    yield Item(f"frame_{index:06d}", self.path.name, frame=index, rgb=rgb)
                    produced += 1
                index += 1
        finally:
            self.cap.release()


def batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    """The items in lists of ``size``, in order (the last list may be shorter)."""
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def folder_items(
    files: list[tuple[str, Path]], root: Path, pool: ThreadPoolExecutor, max_side: int | None, ahead: int
) -> Iterator[Item]:
    """Decoded folder images in order, decoding up to ``ahead`` files ahead on the pool."""
    futures: list[Future] = []
    it = iter(files)
    for name, path in it:
        futures.append(pool.submit(_decode, name, path, root, max_side))
        if len(futures) >= ahead:
            break
    for name, path in it:
        yield futures.pop(0).result()
        futures.append(pool.submit(_decode, name, path, root, max_side))
    for f in futures:
        yield f.result()
