"""Where a trained model's part transfer goes wrong, measured against the synthetic world's true part masks.

    python -m utils.tools.part_diagnostics --checkpoint runs/proof/seed0/Seen/last.pth [--batches 12] [--out FILE]

A diagnostic for the offline proof, not part of the method: it reads the part masks that only the synthetic world
has (``masks/train_part`` and ``masks/part``, ``masks/object``). Two measurements, per affordance:

- **Prototype selection** (training samples): the model's own step (k-means of the exocentric CAM region, the
  cluster chosen by PartIoU) is run in eval mode, and every cluster's centroid is compared by cosine with the *true*
  prototype, the egocentric descriptors pooled inside the true affordance part, in the same (centred) space as the
  prototype loss. ``chosen_is_nearest`` is how often the chosen cluster is the one closest to the true prototype
  (chance 1/K), ``chosen_cos`` the chosen cluster's cosine, ``random_cos`` the mean over the K clusters (what a
  random pick scores) and ``best_cos`` the closest cluster's (what a perfect pick among these clusters scores).
  ``has_prototype`` is the share of samples whose best PartIoU passes the threshold, so that the loss uses them.
- **Map placement** (test images): the share of the label map's mass (the min-max prediction divided by its sum)
  on the affordance part, on the rest of the object and on the background; and how well two class-agnostic maps
  tell the object from the background (AUC over pixels): ``saliency_auc`` for the egocentric saliency that PartIoU
  compares the clusters with (LOCATE's CLS heads or BiT-Align's fusion), ``objectness_auc`` for the log-sum-exp of
  the egocentric class maps.

The two tables are printed and written as JSON (default: ``part_diagnostics.json`` next to the checkpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import einsum
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.parts import mask_prototypes
from utils.maps import normalize_mass

__all__ = ["main", "map_placement", "object_auc", "prototype_selection"]

logger = logging.getLogger(__name__)


def _summarise(rows: dict[str, dict[str, list[float]]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Per affordance and over all of them, the mean of each key's values (None when it has none); ``count`` is
    the number of values of the first key, which every sample records."""

    def stats(groups: list[dict[str, list[float]]]) -> dict[str, Any]:
        d: dict[str, Any] = {"count": sum(len(g[keys[0]]) for g in groups)}
        for k in keys:
            values = [v for g in groups for v in g[k]]
            d[k] = sum(values) / len(values) if values else None
        return d

    return {"per_affordance": {n: stats([rows[n]]) for n in sorted(rows)}, "overall": stats(list(rows.values()))}


@torch.no_grad()
def prototype_selection(model: Any, loader: DataLoader, max_batches: int, progress: bool = False) -> dict[str, Any]:
    """Per-affordance statistics of the model's part-prototype selection against the true prototypes.

    Args:
        model: a :class:`models.grounder.Grounder` (run in eval mode: batch norm and the descriptor mean are frozen).
            With ``part_selection='contrast'`` and an empty bank, the first batch only fills the bank.
        loader: training batches with ``ego_part_mask`` (``AGD20KTrain(with_part_masks=True)``).
        max_batches: stop after this many batches.
        progress: show a progress bar.

    Returns:
        ``{"per_affordance": {name: stats}, "overall": stats, "num_parts": K}``; stats hold ``count`` (samples with
        clusters), ``has_prototype``, ``chosen_is_nearest``, ``chosen_cos``, ``random_cos`` and ``best_cos``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    try:
        for i, batch in enumerate(tqdm(loader, total=max_batches, desc="prototypes", disable=not progress)):
            if i >= max_batches:
                break
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            bank = getattr(model, "part_bank", None)
            if bank is not None and len(bank) == 0:
                # part_selection="contrast" chooses with a bank of recent egocentric images, which a checkpoint does
                # not store: the first batch only fills it (unmeasured, so no sample is scored against itself).
                model(batch, epoch=0)
                continue
            out = model(batch, epoch=0)
            ego_desc = model.backbone(batch["ego"])["descriptors"]
            _, ego_desc = model._proto_space(ego_desc, ego_desc)  # eval mode: the running mean is not updated
            true_proto, part = mask_prototypes(ego_desc, batch["ego_part_mask"])  # (b, D), (b, h, w)
            centroids = out["part_centroids"].float()  # (b, K, D)
            valid = centroids.abs().sum(dim=(1, 2)) > 0
            cos = einsum(F.normalize(centroids, dim=-1), true_proto, "b k d, b d -> b k")  # (b, K)
            chosen = out["part_best"]
            for j in range(cos.shape[0]):
                if not bool(valid[j]) or float(part[j].sum()) == 0:
                    continue
                name = model.class_names[int(batch["label"][j])]
                r = rows[name]
                r["has_prototype"].append(float(out["has_prototype"][j]))
                r["chosen_is_nearest"].append(float(int(chosen[j]) == int(cos[j].argmax())))
                r["chosen_cos"].append(float(cos[j, chosen[j]]))
                r["random_cos"].append(float(cos[j].mean()))
                r["best_cos"].append(float(cos[j].max()))
    finally:
        model.train(was_training)
    keys = ("has_prototype", "chosen_is_nearest", "chosen_cos", "random_cos", "best_cos")
    return {"num_parts": model.num_parts, **_summarise(rows, keys)}


@torch.no_grad()
def map_placement(model: Any, test_set: Any, batch_size: int = 32, progress: bool = False) -> dict[str, Any]:
    """Per-affordance share of the label map's mass on the part, the rest of the object and the background.

    Args:
        model: a :class:`models.grounder.Grounder`.
        test_set: ``AGD20KTest(..., with_masks=True)`` of the synthetic world.
        batch_size: images per batch.
        progress: show a progress bar.

    Returns:
        ``{"per_affordance": {name: {"count", "part", "object_rest", "background", "saliency_auc",
        "objectness_auc"}}, "overall": {...}}``.
    """
    device = next(model.parameters()).device
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    loader = DataLoader(test_set, batch_size=batch_size, shuffle=False, num_workers=0)
    for batch in tqdm(loader, desc="maps", disable=not progress):
        part, obj = batch["part_mask"].to(device).float(), batch["object_mask"].to(device).float()
        size = tuple(part.shape[-2:])
        out = model.predict(batch["image"].to(device), batch["label"].to(device), output_size=size)
        maps = out["maps"].float()
        mass = normalize_mass(maps)
        rest = (obj - part).clamp_min(0)
        shares = {
            "part": (mass * part).sum(dim=(-2, -1)),
            "object_rest": (mass * rest).sum(dim=(-2, -1)),
            "background": (mass * (1 - obj)).sum(dim=(-2, -1)),
            "saliency_auc": object_auc(_upsample(out["saliency"], size), obj),
            "objectness_auc": object_auc(_upsample(torch.logsumexp(out["ego_pred"].float(), dim=1), size), obj),
        }
        for j, name in enumerate(batch["affordance"]):
            for k, v in shares.items():
                if not math.isnan(float(v[j])):
                    rows[name][k].append(float(v[j]))

    return _summarise(rows, ("part", "object_rest", "background", "saliency_auc", "objectness_auc"))


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) grid maps to (B, H, W), bilinearly, as the evaluation upsamples the predictions."""
    return F.interpolate(maps.float().unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def object_auc(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image, the AUC with which ``scores`` rank object pixels above background pixels (ties count half).

    Args:
        scores: (B, H, W) any real maps.
        mask: (B, H, W) object masks in {0, 1}.

    Returns:
        (B,) float64 AUCs; NaN for an image whose mask is empty or full.
    """
    out = torch.full((scores.shape[0],), float("nan"), dtype=torch.float64)
    for i in range(scores.shape[0]):
        s, y = scores[i].flatten().double(), mask[i].flatten() > 0.5
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        values, inverse = torch.unique(s, return_inverse=True)  # sorted unique values
        pos = torch.bincount(inverse[y], minlength=len(values)).double()
        neg = torch.bincount(inverse[~y], minlength=len(values)).double()
        below = torch.cumsum(neg, 0) - neg  # background pixels strictly below each value
        out[i] = float((pos * (below + 0.5 * neg)).sum()) / (n_pos * n_neg)
    return out


def _fmt(v: Any) -> str:
    return "    -" if v is None else f"{v:5.2f}"


def format_tables(report: dict[str, Any]) -> str:
    """The two measurements as plain-text tables."""
    sel, place = report["prototype_selection"], report["map_placement"]
    k = sel["num_parts"]
    lines = [
        f"Prototype selection on training samples (K = {k} clusters; chance of picking the nearest: {1 / k:.2f})",
        f"{'affordance':<12}{'n':>5}{'has':>7}{'nearest':>9}{'chosen':>8}{'random':>8}{'best':>7}",
    ]
    for name, d in [*sel["per_affordance"].items(), ("overall", sel["overall"])]:
        lines.append(
            f"{name:<12}{d['count']:>5}  {_fmt(d['has_prototype'])}    {_fmt(d['chosen_is_nearest'])}   "
            f"{_fmt(d['chosen_cos'])}   {_fmt(d['random_cos'])}  {_fmt(d['best_cos'])}"
        )
    lines += [
        "(has: share with a prototype the loss uses; nearest: the chosen cluster is the closest to the true prototype;",
        " chosen / random / best: cosine with the true prototype of the chosen, an average and the closest cluster)",
        "",
        "Where the label map's mass lies on the test images (shares sum to 1), and how well class-agnostic maps find "
        "the object",
        f"{'affordance':<12}{'n':>5}{'part':>8}{'object':>8}{'backgr.':>9}{'sal. AUC':>10}{'obj. AUC':>10}",
    ]
    for name, d in [*place["per_affordance"].items(), ("overall", place["overall"])]:
        lines.append(
            f"{name:<12}{d['count']:>5}   {_fmt(d['part'])}   {_fmt(d['object_rest'])}    {_fmt(d['background'])}"
            f"     {_fmt(d['saliency_auc'])}     {_fmt(d['objectness_auc'])}"
        )
    lines.append(
        "(sal. / obj. AUC: object against background pixels, for the saliency PartIoU uses and for the log-sum-exp "
        "of the class maps)"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m utils.tools.part_diagnostics",
        description="Measure a trained model's part-prototype selection and map placement against the synthetic "
        "world's true part masks (a diagnostic; the method never reads masks).",
    )
    p.add_argument("--checkpoint", required=True, help="A checkpoint written by train.py (e.g. runs/x/Seen/last.pth).")
    p.add_argument("--split", default=None, help="Seen or Unseen (default: the checkpoint's split).")
    p.add_argument("--batches", type=int, default=12, help="Training batches for the prototype measurement.")
    p.add_argument("--batch-size", type=int, default=32, help="Samples per batch.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the training-sample order and augmentation.")
    p.add_argument("--out", default=None, help="JSON output (default: part_diagnostics.json beside the checkpoint).")
    p.add_argument("--no-progress", action="store_true", help="No progress bars.")
    args = p.parse_args(argv)
    if args.batches < 1 or args.batch_size < 1:
        p.error(f"--batches and --batch-size must be positive, got {args.batches} and {args.batch_size}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run both measurements, print them and write the JSON; 2 on a bad checkpoint or data without part masks."""
    from datasets.agd20k import AGD20KTest, AGD20KTrain
    from utils.engine.checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint
    from utils.engine.runtime import setup_logging

    args = parse_args(argv)
    setup_logging()
    try:
        ckpt = load_checkpoint(args.checkpoint)
        model, cfg, class_names = build_model_from_checkpoint(args.checkpoint, "cpu")
    except (CheckpointError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    split = args.split or ckpt.get("split") or "Seen"
    del ckpt
    try:
        train_set = AGD20KTrain.from_config(cfg, split, seed=args.seed, class_names=class_names, with_part_masks=True)
        test_set = AGD20KTest.from_config(cfg, split, class_names=class_names, with_masks=True)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not test_set.with_masks:
        print(
            f"error: the test set under {cfg.data.root} ({split}) has no object/part masks; this diagnostic needs the "
            "synthetic world (python -m datasets.synthetic)",
            file=sys.stderr,
        )
        return 2
    gen = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, num_workers=0, generator=gen)
    report = {
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "split": split,
        "prototype_selection": prototype_selection(model, loader, args.batches, progress=not args.no_progress),
        "map_placement": map_placement(model, test_set, args.batch_size, progress=not args.no_progress),
    }
    print(format_tables(report))
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name("part_diagnostics.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
