"""Evaluate a trained affordance grounder (or a baseline) on AGD20K, or run it on any image.

Usage::

    python test.py --config CFG --checkpoint runs/<run>/Seen/last.pth      # KLD / SIM / NSS on the test split
    python test.py --checkpoint CKPT --viz 16                              # + 16 triptychs, worst/best grid
    python test.py --config CFG --baseline center                          # a model-free floor, same code path
    python test.py --checkpoint CKPT --image photo.jpg --affordance hold   # heatmap of one image (.png + .npy)
    python test.py --checkpoint CKPT --image photo.jpg                     # the top-3 predicted affordances
    python test.py --checkpoint best_aff_seen.pth --config configs/locate_dino-vits16_agd20k-seen.yaml \
        data.root=/data/AGD20K                                             # a released LOCATE state dict

The evaluation follows the published protocol (docs/protocol.md): each prediction is upsampled (bilinear) to the GT size
(``data.eval_size``, 224), min-max normalised, and scored against the GT; the numbers are plain means over the
test images, reported overall, per affordance and per object in ``<out>/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "parse_args"]

logger = logging.getLogger("test")

#: Longer side at which --image inference decodes a photo: a larger one is shrunk while it is decoded (JPEGs are
#: decoded at 1/2, 1/4 or 1/8 scale), so a 8000x6000 photo needs a few MB, not the 576 MB of a float32 copy.
#: The network sees data.image_size pixels anyway; the written maps have this resolution at most.
MAX_IMAGE_SIDE = 1024


class ImageInputError(ValueError):
    """The --image file cannot be used (not an image, corrupt, truncated)."""


_DESCRIPTION = """\
Evaluate an affordance grounder or a baseline on the test split(s) (KLD, SIM, NSS; docs/protocol.md), or predict the
heatmap of one image. Data options come from --config and section.key=value overrides; the model is rebuilt from
the configuration stored in the checkpoint."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; ``--help`` documents each option and lists the configuration keys."""
    from utils.config import BASELINES, config_help

    p = argparse.ArgumentParser(
        prog="test.py",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="configuration options (section.key=value):\n" + config_help(),
    )
    p.add_argument(
        "--config",
        default=None,
        help="YAML config naming the data (data.root, data.splits, data.eval_size, ...). Usually the file the model "
        "was trained with. Default: the configuration stored in the checkpoint. Needed for --baseline.",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="CKPT",
        help="Checkpoint written by train.py (runs/<run>/<Split>/last.pth for the honest last-epoch number, best.pth "
        "for the test-selected one), or a state dict released with LOCATE's code (recognised by its content: the "
        "architecture then comes from --config, default LOCATE's recipe, and the split from its class count, 36 Seen "
        "or 25 Unseen). Not needed with --baseline.",
    )
    p.add_argument(
        "--baseline",
        choices=BASELINES,
        default=None,
        help="Evaluate a model-free baseline through the same code path instead of a model: 'center' (centred "
        "Gaussian), 'uniform', or 'object' (blurred object mask; needs masks, which only the synthetic world has). "
        "Use it to know the floor a model must beat.",
    )
    p.add_argument(
        "--split",
        action="append",
        choices=("Seen", "Unseen"),
        default=None,
        help="Test split to evaluate (repeat for both). Default: the checkpoint's training split, or data.splits for "
        "a baseline. Change it only for cross-split experiments.",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="Output folder for metrics.json, tables and pictures. Default: <checkpoint folder>/test-<checkpoint "
        "name>/ (predict-<checkpoint name>/ with --image), or <output.dir or runs/<output.name>>/baseline-<name>/ for "
        "a baseline.",
    )
    p.add_argument(
        "--viz",
        type=int,
        default=0,
        metavar="N",
        help="Write N triptychs (image | prediction | GT, with the image's scores) and a grid of the worst and best "
        "images by KLD. Usual: 8-16; 0 (default) writes no pictures.",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="Test images per batch. Default: eval.batch_size (32). Lower it if the GPU runs out of memory.",
    )
    p.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="DataLoader workers. Default: data.num_workers. 0 loads in the main process (easiest to debug).",
    )
    p.add_argument(
        "--amp",
        choices=("off", "bf16", "auto"),
        default="off",
        help="Autocast for the model: 'off' (default, fp32: the numbers to report), 'bf16' or 'auto' (bf16 where the "
        "device supports it: faster on GPUs, but the maps and so the scores differ slightly from fp32). The metrics "
        "always run in float64.",
    )
    p.add_argument(
        "--per-object", action="store_true", help="Also print the per-object table (it is always in metrics.json)."
    )
    p.add_argument("--no-progress", action="store_true", help="Hide the progress bar (for logs and CI).")
    p.add_argument(
        "--image",
        default=None,
        metavar="PATH",
        help="Predict on this image instead of evaluating (needs --checkpoint): writes a PNG overlay and the map as "
        f".npy (image resolution, values in [0, 1]) into --out. Images with a side above {MAX_IMAGE_SIDE} px are "
        f"shrunk while decoding (longer side {MAX_IMAGE_SIDE}); the maps then have that resolution.",
    )
    p.add_argument(
        "--affordance",
        default=None,
        metavar="NAME",
        help="With --image: the affordance to localise (one of the checkpoint's class names; any phrase with a CLIP "
        "text encoder). Without it, the top-3 predicted affordances and their maps are shown.",
    )
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="Config overrides, e.g. data.root=DIR.")
    args = p.parse_args(argv)
    if args.checkpoint is None and args.baseline is None:
        p.error("give --checkpoint CKPT (a trained model) or --baseline center|uniform|object")
    if args.checkpoint is not None and args.baseline is not None:
        p.error("--checkpoint and --baseline exclude each other: evaluate one thing at a time")
    if args.image is not None and args.checkpoint is None:
        p.error("--image needs --checkpoint (baselines have nothing to say about a single image)")
    if args.affordance is not None and args.image is None:
        p.error("--affordance is for single-image inference: add --image PATH")
    if args.viz < 0:
        p.error(f"--viz must be >= 0, got {args.viz}")
    return args


# ------------------------------------------------------------------------------------------------- helpers
def _load_config(args: argparse.Namespace, ckpt: dict[str, Any] | None) -> Any:
    from utils.config import load_config
    from utils.engine.checkpoint import apply_overrides

    if args.config is not None or ckpt is None:
        return load_config(args.config, args.overrides)
    return apply_overrides(ckpt["config"], args.overrides)


def _default_out(args: argparse.Namespace, cfg: Any) -> Path:
    if args.out is not None:
        return Path(args.out)
    if args.checkpoint is not None:
        ckpt = Path(args.checkpoint)
        return ckpt.parent / (f"predict-{ckpt.stem}" if args.image else f"test-{ckpt.stem}")
    base = Path(cfg.output.dir) if cfg.output.dir else Path("runs") / cfg.output.name
    return base / f"baseline-{args.baseline}"


def _ensure_data(cfg: Any) -> None:
    if cfg.data.synthetic.enabled:
        from datasets.synthetic import ensure_world

        s = cfg.data.synthetic
        ensure_world(
            cfg.data.root,
            seed=s.seed,
            image_size=s.image_size,
            exo_per_folder=s.exo_per_folder,
            ego_per_folder=s.ego_per_folder,
            test_per_folder=s.test_per_folder,
        )


# ----------------------------------------------------------------------------------------------- inference
def _display_size(rgb: Any, short: int = 256, long: int = 768) -> Any:
    """The image resized for pictures: shorter side at least ``short`` px, longer side at most ``long`` px."""
    import cv2

    h, w = rgb.shape[:2]
    scale = min(max(1.0, short / min(h, w)), long / max(h, w)) if max(h, w) > long or min(h, w) < short else 1.0
    if scale == 1.0:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def predict_image(args: argparse.Namespace, model: Any, cfg: Any, class_names: list[str], device: Any) -> list[Path]:
    """Single-image inference through :class:`utils.inference.Predictor`: an overlay PNG and the map(s) as .npy;
    returns the written paths."""
    import numpy as np

    from utils.inference.predictor import Predictor, UnknownAffordanceError
    from utils.viz.draw import overlay, save_png
    from utils.viz.layout import add_label, hstack

    out_dir = _default_out(args, cfg)
    path = Path(args.image)
    if not path.is_file():
        raise FileNotFoundError(f"--image {path}: no such file. Pass the path of an image (JPEG, PNG, ...).")
    open_vocab = getattr(model, "text", None) is not None and cfg.model.text.encoder == "clip"
    predictor = Predictor(model, cfg.data.image_size, device, open_vocab, max_side=MAX_IMAGE_SIDE, cfg=cfg)
    try:
        rgb = predictor.load_image(path)  # (H, W, 3) uint8, shrunk while decoding if huge
    except ValueError as e:
        raise ImageInputError(f"--image {path}: {e}") from e
    shown = _display_size(rgb)  # pictures only; the .npy maps keep the image's resolution
    stem = path.stem
    written: list[Path] = []
    if args.affordance is not None:
        try:
            query = predictor.resolve_affordance(args.affordance)
        except UnknownAffordanceError as e:
            raise SystemExit(f"error: {e}") from e
        heat = predictor.predict(rgb, affordance=query).maps[0]  # (H, W) in [0, 1]
        tag = query.replace(" ", "_")
        picture = hstack([add_label(shown, path.name), add_label(overlay(shown, heat), query)])
        written.append(save_png(out_dir / f"{stem}_{tag}.png", picture))
        np.save(out_dir / f"{stem}_{tag}.npy", heat.astype(np.float32))
        written.append(out_dir / f"{stem}_{tag}.npy")
        print(f"{path}: '{query}' heatmap -> {written[0]} (map: {written[1]})")
        return written
    result = predictor.predict(rgb, top_k=3)
    maps, top = result.maps[0], result.top_k(3)[0]  # (3, H, W); [(name, p), ...]
    names = [name for name, _ in top]
    tiles = [add_label(shown, path.name)]
    print(f"{path}: top-{len(names)} affordances")
    for rank, ((name, p), m) in enumerate(zip(top, maps), start=1):
        print(f"  {rank}. {name:<16} p = {p:.3f}")
        tiles.append(add_label(overlay(shown, m), f"{rank}. {name} (p={p:.2f})"))
    written.append(save_png(out_dir / f"{stem}_top{len(names)}.png", hstack(tiles)))
    np.save(out_dir / f"{stem}_top{len(names)}.npy", maps.astype(np.float32))
    (out_dir / f"{stem}_top{len(names)}.json").write_text(
        json.dumps({"affordances": names, "probs": [p for _, p in top]}, indent=2) + "\n"
    )
    written += [out_dir / f"{stem}_top{len(names)}.npy", out_dir / f"{stem}_top{len(names)}.json"]
    print(f"  picture: {written[0]}")
    return written


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Evaluate (or predict); returns the process exit status (2 for a bad config, checkpoint or path)."""
    args = parse_args(argv)

    from datasets.synthetic import WorldFolderError
    from utils.config import ConfigError
    from utils.engine.checkpoint import CheckpointError, CheckpointMismatchError
    from utils.engine.runtime import setup_logging

    setup_logging(None)
    expected = (ConfigError, CheckpointError, CheckpointMismatchError, FileNotFoundError, ImageInputError)
    try:
        return _run(args)
    except (*expected, WorldFolderError) as e:
        # These messages already say what was expected and what to do: no traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from utils.engine.runtime import seed_everything, select_device

    # =============================================================================================== config
    ckpt, contents = None, None
    if args.checkpoint is not None:
        from utils.inference.loading import read_model_file

        # Fails early, naming the file, if it is missing, damaged, or neither our checkpoint nor a LOCATE state dict.
        contents = read_model_file(args.checkpoint)
        ckpt = contents[1] if contents[0] == "wsag" else None
    if contents is not None and contents[0] == "locate":
        from utils.config import load_config

        cfg = load_config(args.config, args.overrides)  # a LOCATE file has no config: the architecture comes from here
    else:
        cfg = _load_config(args, ckpt)
    device = select_device(cfg.device)
    seed_everything(cfg.seed)

    # ================================================================================================ model
    model, class_names, model_split, epoch, kind = None, None, "", None, None
    if contents is not None:
        from utils.engine.checkpoint import check_compatibility
        from utils.inference.loading import load_model

        loaded = load_model(args.checkpoint, device, args.config, args.overrides, contents=contents)
        model, class_names, model_split, epoch = loaded.model, loaded.class_names, loaded.split, loaded.epoch
        kind = loaded.kind
        if ckpt is not None and args.config is not None:
            check_compatibility(ckpt, cfg, class_names)  # the --config must describe the same model
        else:
            cfg = loaded.cfg
        contents = ckpt = None  # the weights are in the model now

    if args.image is not None:
        predict_image(args, model, cfg, class_names, device)
        return 0

    # ================================================================================================= data
    from datasets.agd20k import AGD20KTest
    from datasets.loader import resolve_num_workers

    _ensure_data(cfg)
    if args.split:
        splits = list(dict.fromkeys(args.split))
    elif model_split in ("Seen", "Unseen"):
        splits = [model_split]
    else:
        splits = list(cfg.data.splits)
    out_dir = _default_out(args, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)

    # ============================================================================================= evaluate
    from utils.config import config_to_dict
    from utils.evaluation.baselines import build_baseline
    from utils.evaluation.evaluate import evaluate, model_predict_fn
    from utils.evaluation.pictures import write_pictures
    from utils.evaluation.scores import format_table

    report: dict[str, Any] = {
        "checkpoint": str(Path(args.checkpoint).resolve()) if args.checkpoint else None,
        "checkpoint_epoch": epoch,
        "checkpoint_kind": kind,  # "wsag" (train.py), "locate" (a LOCATE state dict) or None (a baseline)
        "baseline": args.baseline,
        "protocol": f"docs/protocol.md: bilinear to {cfg.data.eval_size}x{cfg.data.eval_size}, min-max, plain means",
        "results": {},
        "config": config_to_dict(cfg),
    }
    for split in splits:
        test_set = AGD20KTest.from_config(
            cfg,
            split,
            class_names=class_names,  # the model's label indices (None: the split's own list)
            with_masks=args.baseline == "object",
        )
        if model is not None:
            predict_fn = model_predict_fn(model, cfg.data.eval_size)
            what = f"{Path(args.checkpoint).name} ({model_split or '?'} model)"
        else:
            predict_fn = build_baseline(args.baseline)
            what = f"{args.baseline} baseline"
        result = evaluate(
            predict_fn,
            test_set,
            batch_size=args.batch_size or cfg.eval.batch_size,
            num_workers=resolve_num_workers(cfg.data.num_workers if args.num_workers is None else args.num_workers),
            device=device,
            progress=not args.no_progress,
            amp=args.amp,
            keep_size=112 if args.viz > 0 else None,
            desc=f"{split} test",
        )
        summary = dict(result.summary)
        summary["timing_seconds"] = result.timing()
        report["results"][split] = summary
        split_dir = out_dir / split
        split_dir.mkdir(parents=True, exist_ok=True)
        (split_dir / "per_image.json").write_text(json.dumps(result.record_dicts(), indent=1) + "\n")
        table = format_table(result.summary, per_object=args.per_object, title=f"{split} test, {what}")
        (split_dir / "table.txt").write_text(format_table(result.summary, per_object=True, title=table.split("\n")[0]))
        print(table)
        print(f"metric time {result.metric_seconds:.2f} s, model time {result.model_seconds:.2f} s\n")
        if args.viz > 0:
            write_pictures(result, test_set, split_dir / "pictures", n=args.viz)

    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"metrics: {metrics_path}")
    if args.viz > 0:
        print(f"pictures: {', '.join(str(out_dir / s / 'pictures') for s in splits)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
