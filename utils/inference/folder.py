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
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from utils.inference.outputs import OutputWriter, build_manifest, input_record, prediction_record, write_manifest
from utils.inference.sources import VIDEO_EXTENSIONS, Item, VideoFrames, batches, folder_items, list_folder, safe_name

__all__ = ["main", "parse_args", "run"]

logger = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------------------------------------- run


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
    writer = OutputWriter(out, pool, maps, map_dtype, overlays)
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
            items = folder_items(files, input_path, pool, predictor.max_side, ahead=2 * batch_size)
            total = len(files)
        bar = tqdm(total=total, unit="img", desc=input_path.name, disable=not progress, dynamic_ncols=True)
        for batch in batches(items, batch_size):
            good = [it for it in batch if it.rgb is not None]
            for it in batch:
                if it.rgb is None:
                    logger.warning("skipping unreadable %s: %s", it.source, it.error)
                    records.append(input_record(it, "unreadable"))
            if good:
                t0 = time.perf_counter()
                result = predictor.predict([it.rgb for it in good], affordance=queries, top_k=top_k)
                model_seconds += time.perf_counter() - t0
                for i, it in enumerate(good):
                    records.append(prediction_record(it, result, i, queries, writer))
                    if is_video and overlay_video:
                        first = result.maps[i][0]
                        name = safe_name(queries[0] if queries else "top1")
                        writer.video_frame(out / f"{input_path.stem}_{name}.mp4", frames.fps / every, it.rgb, first)
            bar.update(len(batch))
        bar.close()
    finally:
        writer.close()
        pool.shutdown(wait=True)
    seconds = time.perf_counter() - start
    manifest = build_manifest(predictor, input_path, out, queries, top_k, records, ignored, seconds, model_seconds)
    if writer.video_path is not None:
        manifest["overlay_video"] = writer.video_path.name
    write_manifest(out, manifest)
    return manifest


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
