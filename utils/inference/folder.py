"""Heatmaps for every image of a folder, or every N-th frame of a video, in batches, with a manifest.

Usage::

    python -m utils.inference.folder --checkpoint CKPT --input photos/ --out preds/ --affordance hold
    python -m utils.inference.folder --checkpoint CKPT --input photos/ --out preds/ --top-k 3      # label-free
    python -m utils.inference.folder --checkpoint CKPT --input clip.mp4 --out preds/ --affordance hold \\
        --every 5 --overlay-video

For every readable image (or frame) and every affordance asked for (or each of its top-k predicted ones) it writes
``<out>/<name>_<affordance>.png`` (the heatmap over the image, at the image's resolution) and the raw map
``<name>_<affordance>.npy`` (float16 in [0, 1] by default; ``--maps npz`` puts them all in one ``maps.npz``), where
``<name>`` is the file's path under the input folder without its extension (``/`` becomes ``__``), or
``frame_<index>`` for a video. ``manifest.json`` and ``manifest.csv`` list what was predicted for each input (the
affordance, its probability, the most probable class, the output files) and every input that could not be read,
with the reason. Unreadable files are skipped, never fatal: the exit status is 0 when at least one image was
predicted, 1 when none could be read, 2 for a bad checkpoint, input or option.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["VIDEO_EXTENSIONS", "main", "parse_args", "run"]

logger = logging.getLogger(__name__)

#: File endings read as videos (through OpenCV's FFmpeg backend).
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})

_CSV_FIELDS = (
    "file",
    "frame",
    "status",
    "affordance",
    "rank",
    "probability",
    "predicted",
    "predicted_probability",
    "overlay",
    "map",
    "height",
    "width",
    "error",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; ``--help`` documents each option."""
    p = argparse.ArgumentParser(
        prog="python -m utils.inference.folder",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="A checkpoint of train.py, or a LOCATE state dict.")
    p.add_argument(
        "--input",
        required=True,
        metavar="PATH",
        help=f"A folder of images, or a video file ({', '.join(sorted(VIDEO_EXTENSIONS))}).",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="Output folder (created; existing files are replaced).")
    p.add_argument(
        "--affordance",
        nargs="+",
        default=None,
        metavar="NAME",
        help="Affordance(s) to localise in every image (class names; any phrase with a CLIP text encoder). "
        "Default: each image's --top-k predicted affordances.",
    )
    p.add_argument("--top-k", type=int, default=1, help="Without --affordance: maps of the k most probable classes.")
    p.add_argument(
        "--batch-size", type=int, default=16, help="Images per forward pass (16; lower it if memory runs out)."
    )
    p.add_argument("--recursive", action="store_true", help="Also read the images in sub-folders.")
    p.add_argument("--every", type=int, default=1, metavar="N", help="Video: predict every N-th frame (1: all).")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="Video: stop after N predicted frames.")
    p.add_argument(
        "--overlay-video",
        action="store_true",
        help="Video: also write <out>/<video>_<affordance>.mp4 with the heatmap of the first affordance (or the top-1 "
        "class) over the predicted frames.",
    )
    p.add_argument(
        "--maps",
        choices=("npy", "npz", "none"),
        default="npy",
        help="Raw maps: one .npy per image and affordance (default), all in one maps.npz, or none.",
    )
    p.add_argument(
        "--map-dtype",
        choices=("float16", "float32"),
        default="float16",
        help="Precision of the stored maps (float16 halves the disk; its step near 1 is 5e-4).",
    )
    p.add_argument("--no-overlays", action="store_true", help="Do not write the overlay PNGs (maps and manifest only).")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N.")
    p.add_argument("--config", default=None, help="For a LOCATE state dict: the config of its architecture.")
    p.add_argument("--backbone-weights", default=None, help="A local ViT weight file, when the model file lacks it.")
    p.add_argument(
        "--workers", type=int, default=2, help="Threads that decode images and write outputs beside the model (2)."
    )
    p.add_argument("--no-progress", action="store_true", help="Hide the progress bar (for logs and CI).")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="Config overrides.")
    args = p.parse_args(argv)
    for name in ("top_k", "batch_size", "every", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_frames is not None and args.max_frames < 1:
        p.error(f"--max-frames must be >= 1, got {args.max_frames}")
    return args


# ---------------------------------------------------------------------------------------------------- inputs


@dataclass
class Item:
    """One input: its output name, where it came from, and its pixels or why there are none."""

    name: str
    source: str
    frame: int | None = None
    rgb: np.ndarray | None = None
    error: str | None = None


def _safe(text: str) -> str:
    """A file-name-safe form of a name or phrase ("cut with" -> "cut_with")."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.strip()).strip("_") or "x"


def list_folder(root: Path, recursive: bool) -> tuple[list[tuple[str, Path]], list[str]]:
    """The image files under ``root`` with their output names, and the other files (ignored)."""
    from datasets.images import is_image_file

    files = sorted(p for p in (root.rglob("*") if recursive else root.iterdir()) if p.is_file())
    images = [p for p in files if is_image_file(p)]
    ignored = [str(p.relative_to(root)) for p in files if not is_image_file(p) and not p.name.startswith(".")]
    stems = [_safe(str(p.relative_to(root).with_suffix("")).replace("/", "__")) for p in images]
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


# ------------------------------------------------------------------------------------------------------ outputs


class _Writer:
    """Writes overlays and maps on worker threads; an overlay video on the calling thread (frames are ordered)."""

    def __init__(self, out: Path, pool: ThreadPoolExecutor, maps: str, dtype: str, overlays: bool) -> None:
        self.out, self.pool, self.maps, self.dtype, self.overlays = out, pool, maps, np.dtype(dtype), overlays
        self.pending: list[Future] = []
        self.npz: dict[str, np.ndarray] = {}
        self.video: cv2.VideoWriter | None = None
        self.video_path: Path | None = None

    def write(self, name: str, affordance: str, rgb: np.ndarray, heat: np.ndarray) -> tuple[str | None, str | None]:
        """Queue the overlay and map of one (image, affordance); returns their file names (relative to out)."""
        tag = f"{name}_{_safe(affordance)}"
        overlay_name = f"{tag}.png" if self.overlays else None
        map_name = {"npy": f"{tag}.npy", "npz": f"maps.npz:{tag}", "none": None}[self.maps]
        stored = heat.astype(self.dtype)
        if self.maps == "npz":
            self.npz[tag] = stored
        self.pending.append(self.pool.submit(self._write, tag, rgb, heat, stored))
        if len(self.pending) > 64:  # bound the memory held by queued pictures
            self._drain(32)
        return overlay_name, map_name

    def _write(self, tag: str, rgb: np.ndarray, heat: np.ndarray, stored: np.ndarray) -> None:
        from utils.viz.draw import overlay, save_png

        if self.overlays:
            save_png(self.out / f"{tag}.png", overlay(rgb, heat))
        if self.maps == "npy":
            np.save(self.out / f"{tag}.npy", stored)

    def video_frame(self, path: Path, fps: float, rgb: np.ndarray, heat: np.ndarray) -> None:
        from utils.viz.draw import overlay

        frame = cv2.cvtColor(overlay(rgb, heat), cv2.COLOR_RGB2BGR)
        if self.video is None:
            h, w = frame.shape[:2]
            self.video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not self.video.isOpened():  # an OpenCV build without an MPEG-4 encoder: Motion-JPEG always works
                path = path.with_suffix(".avi")
                self.video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
            self.video_path = path
            self.video_size = (w, h)
        if frame.shape[1::-1] != self.video_size:
            frame = cv2.resize(frame, self.video_size, interpolation=cv2.INTER_AREA)
        self.video.write(frame)

    def _drain(self, keep: int = 0) -> None:
        while len(self.pending) > keep:
            self.pending.pop(0).result()  # re-raises a failed write (a full disk must not pass silently)

    def close(self) -> None:
        self._drain()
        if self.maps == "npz":
            np.savez_compressed(self.out / "maps.npz", **self.npz)
        if self.video is not None:
            self.video.release()


# ---------------------------------------------------------------------------------------------------------- run


def _batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _folder_items(
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


def run(
    predictor: Any,
    input_path: str | Path,
    out: str | Path,
    affordances: Sequence[str] | None = None,
    top_k: int = 1,
    batch_size: int = 16,
    recursive: bool = False,
    every: int = 1,
    max_frames: int | None = None,
    overlay_video: bool = False,
    maps: str = "npy",
    map_dtype: str = "float16",
    overlays: bool = True,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict every image of a folder (or frame of a video) and write the outputs and the manifest.

    Args:
        predictor: a :class:`utils.inference.predictor.Predictor`.
        input_path: a folder of images or a video file.
        out: the output folder.
        affordances: names or phrases to localise in every image; None for each image's ``top_k`` classes.
        top_k: see ``affordances``.
        batch_size: images per forward pass.
        recursive: also read sub-folders.
        every: video: predict every ``every``-th frame.
        max_frames: video: stop after this many predicted frames.
        overlay_video: video: also write an overlay video of the first affordance (or the top-1 class).
        maps: "npy", "npz" or "none".
        map_dtype: "float16" or "float32".
        overlays: write the overlay PNGs.
        workers: threads that decode and write beside the model.
        progress: show a progress bar.

    Returns:
        The manifest (also written to ``out/manifest.json`` and ``out/manifest.csv``).

    Raises:
        FileNotFoundError: the input does not exist.
        ValueError: the input is neither a folder nor a readable video; an unknown affordance.
    """
    from tqdm import tqdm

    input_path, out = Path(input_path), Path(out)
    if not input_path.exists():
        raise FileNotFoundError(f"--input {input_path}: no such file or folder. Pass a folder of images or a video.")
    queries = [predictor.resolve_affordance(a) for a in affordances] if affordances else None
    is_video = input_path.is_file()
    if is_video and input_path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise ValueError(
            f"--input {input_path} is a file but not a video ({', '.join(sorted(VIDEO_EXTENSIONS))}); for one image "
            "use test.py --image, for several put them in a folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    ignored: list[str] = []
    pool = ThreadPoolExecutor(max_workers=workers)
    writer = _Writer(out, pool, maps, map_dtype, overlays)
    records: list[dict[str, Any]] = []
    model_seconds = 0.0
    start = time.perf_counter()
    try:
        if is_video:
            frames = VideoFrames(input_path, every, max_frames, predictor.max_side)
            items: Iterator[Item] = iter(frames)
            total = frames.total
        else:
            files, ignored = list_folder(input_path, recursive)
            items = _folder_items(files, input_path, pool, predictor.max_side, ahead=2 * batch_size)
            total = len(files)
        bar = tqdm(total=total, unit="img", desc=input_path.name, disable=not progress, dynamic_ncols=True)
        for batch in _batches(items, batch_size):
            good = [it for it in batch if it.rgb is not None]
            for it in batch:
                if it.rgb is None:
                    logger.warning("skipping unreadable %s: %s", it.source, it.error)
                    records.append(_record(it, "unreadable"))
            if good:
                t0 = time.perf_counter()
                result = predictor.predict([it.rgb for it in good], affordance=queries, top_k=top_k)
                model_seconds += time.perf_counter() - t0
                for i, it in enumerate(good):
                    records.append(_outputs(it, result, i, queries, writer))
                    if is_video and overlay_video:
                        first = result.maps[i][0]
                        name = _safe(queries[0] if queries else "top1")
                        writer.video_frame(out / f"{input_path.stem}_{name}.mp4", frames.fps / every, it.rgb, first)
            bar.update(len(batch))
        bar.close()
    finally:
        writer.close()
        pool.shutdown(wait=True)
    seconds = time.perf_counter() - start
    manifest = _manifest(predictor, input_path, out, queries, top_k, records, ignored, seconds, model_seconds)
    if writer.video_path is not None:
        manifest["overlay_video"] = writer.video_path.name
    _write_manifest(out, manifest)
    return manifest


def _record(item: Item, status: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"file": item.source, "status": status}
    if item.frame is not None:
        rec["frame"] = item.frame
    if item.error is not None:
        rec["error"] = item.error
    return rec


def _outputs(item: Item, result: Any, i: int, queries: list[str] | None, writer: _Writer) -> dict[str, Any]:
    """The manifest record of one predicted image, its outputs queued for writing."""
    probs = result.probs[i]
    names = result.class_names
    top = int(probs.argmax())
    rec = _record(item, "ok")
    rec.update(
        height=int(item.rgb.shape[0]),
        width=int(item.rgb.shape[1]),
        predicted=names[top],
        predicted_probability=round(float(probs[top]), 6),
        predictions=[],
    )
    index = {n: j for j, n in enumerate(names)}
    for rank, (affordance, heat) in enumerate(zip(result.affordances[i], result.maps[i]), start=1):
        overlay_name, map_name = writer.write(item.name, affordance, item.rgb, heat)
        j = index.get(affordance)
        rec["predictions"].append(
            {
                "affordance": affordance,
                "rank": None if queries else rank,
                "probability": round(float(probs[j]), 6) if j is not None else None,  # None: a free phrase
                "overlay": overlay_name,
                "map": map_name,
            }
        )
    return rec


def _manifest(
    predictor: Any,
    input_path: Path,
    out: Path,
    queries: list[str] | None,
    top_k: int,
    records: list[dict[str, Any]],
    ignored: list[str],
    seconds: float,
    model_seconds: float,
) -> dict[str, Any]:
    ok = sum(r["status"] == "ok" for r in records)
    unreadable = [f"{r['file']}: {r['error']}" for r in records if r["status"] == "unreadable"]
    return {
        "input": str(input_path),
        "kind": "video" if input_path.is_file() else "folder",
        "mode": "affordance" if queries else f"top-{top_k}",
        "affordances": queries,
        "top_k": None if queries else top_k,
        "class_names": list(predictor.class_names),
        "image_size": predictor.image_size,
        "counts": {"inputs": len(records), "predicted": ok, "unreadable": len(unreadable), "ignored": len(ignored)},
        "unreadable": unreadable,
        "ignored": ignored,
        "timing": {
            "seconds": round(seconds, 3),
            "images_per_s": round(ok / seconds, 3) if seconds > 0 else None,
            "model_seconds": round(model_seconds, 3),
            "model_images_per_s": round(ok / model_seconds, 3) if model_seconds > 0 else None,
        },
        "images": records,
    }


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=_CSV_FIELDS)
        w.writeheader()
        for rec in manifest["images"]:
            base = {k: rec.get(k) for k in ("file", "frame", "status", "height", "width", "error")}
            base.update(predicted=rec.get("predicted"), predicted_probability=rec.get("predicted_probability"))
            for p in rec.get("predictions") or [{}]:
                w.writerow({**base, **{k: p.get(k) for k in ("affordance", "rank", "probability", "overlay", "map")}})


# --------------------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 done, 1 nothing readable, 2 bad checkpoint/input/option)."""
    args = parse_args(argv)
    from utils.config import ConfigError
    from utils.engine.checkpoint import CheckpointError, CheckpointMismatchError
    from utils.engine.runtime import setup_logging
    from utils.inference.predictor import Predictor, UnknownAffordanceError

    setup_logging(None)
    expected = (ConfigError, CheckpointError, CheckpointMismatchError, FileNotFoundError, UnknownAffordanceError)
    try:
        predictor = Predictor.from_checkpoint(
            args.checkpoint,
            device=args.device,
            backbone_weights=args.backbone_weights,
            config=args.config,
            overrides=args.overrides,
            batch_size=args.batch_size,
        )
        manifest = run(
            predictor,
            args.input,
            args.out,
            affordances=args.affordance,
            top_k=args.top_k,
            batch_size=args.batch_size,
            recursive=args.recursive,
            every=args.every,
            max_frames=args.max_frames,
            overlay_video=args.overlay_video,
            maps=args.maps,
            map_dtype=args.map_dtype,
            overlays=not args.no_overlays,
            workers=args.workers,
            progress=not args.no_progress,
        )
    except (*expected, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts, timing = manifest["counts"], manifest["timing"]
    print(
        f"{counts['predicted']} of {counts['inputs']} inputs predicted in {timing['seconds']:.1f} s "
        f"({timing['images_per_s']} images/s; model {timing['model_images_per_s']} images/s), "
        f"{counts['unreadable']} unreadable, {counts['ignored']} non-image files ignored -> {args.out}/manifest.json"
    )
    for line in manifest["unreadable"][:20]:
        print(f"  unreadable: {line}")
    if counts["predicted"] == 0:
        print(f"error: no readable image in {args.input}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
