"""Speed and memory benchmark: the backbone floor, training steps (uncached and cached), inference, evaluation,
and with ``--schedule`` the wall-clock of an epoch and of the published schedule on AGD20K-sized data.

    python -m utils.tools.benchmark --config configs/locate_dino-vits16_agd20k-seen.yaml [--device cpu|cuda] [--amp]
        [--schedule] [--locate-json LOCATE.json] [--compile]

Every step number is the median over ``--repeats`` timed rounds (each round runs every measurement once, starting
one later than the round before, so slow drifts of the machine favour none of them) after ``--warmup`` untimed
ones, on random weights and random inputs of the configured size (ViT-S/16 at 224, batch 16 by default). It runs in
fp32 and with the training precision policy (``train.amp``; ``--amp`` forces bf16), side by side. The backbone floor
is timm's full forward of the frozen ViT: what any frozen-backbone method must at least run. ``--schedule`` adds
the end-to-end measurements of :mod:`utils.tools.schedule` (real JPEG decoding, the loader and the cache build).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from utils.config import Config, load_config
from utils.engine.runtime import (
    amp_context,
    compile_parts,
    cpu_has_native_bf16,
    environment_info,
    resolve_amp_dtype,
    select_device,
    setup_logging,
)
from utils.tools.compare_runs import describe_device

logger = logging.getLogger(__name__)

INFERENCE_MIN_RATIO = 0.95  # inference images/s / backbone-floor images/s, at the same precision
SCHEDULE_TARGETS = {"speedup_cached_vs_locate": 4.0, "speedup_vs_locate": 2.0}  # schedule wall-clock vs LOCATE


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, repeats: int
) -> dict[str, float]:
    """Median wall time in seconds of every function, timed in interleaved rounds (one run of each per round).

    Interleaving spreads slow drifts of the machine (clock boost, other load, allocator growth) over all the
    functions instead of charging them to whichever is timed first, and every round starts one function later
    (a, b, c; then b, c, a; ...), so that no function always runs right after the same one. Without the rotation, on
    a 2-core CPU, inference timed right after the training step (whose backward frees hundreds of MiB) took 2.22 s
    and inference plus the metrics, timed after it, 1.93 s. With ``repeats`` a multiple of the number of functions,
    each is timed in every slot equally often. So the ratios between them can be trusted.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    items = list(fns.items())
    for r in range(repeats):
        shift = r % len(items)
        for name, fn in items[shift:] + items[:shift]:
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: max allocated on CUDA, peak resident set size of the process on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return rss_kb / 1024


def run_benchmark(
    cfg: Config,
    device: torch.device,
    dtype: torch.dtype | None,
    batch_size: int,
    warmup: int = 2,
    repeats: int = 5,
    num_classes: int = 36,
    compile_model: bool = False,
) -> dict[str, float]:
    """Measure one precision setting; returns rates (per second), seconds and memory in MiB."""
    from models.build import build_model
    from models.criterion import build_criterion
    from utils.evaluation.metrics import kld, nss, prepare_prediction, sim

    torch.manual_seed(0)
    class_names = [f"affordance_{i}" for i in range(num_classes)]
    model = build_model(cfg, class_names).to(device)
    criterion = build_criterion(cfg.loss)
    s, n = cfg.data.image_size, cfg.data.num_exo
    ego = torch.randn(batch_size, 3, s, s, device=device)
    exo = torch.randn(batch_size, n, 3, s, s, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    gt = torch.rand(batch_size, cfg.data.eval_size, cfg.data.eval_size, device=device)
    all_images = torch.cat([exo.flatten(0, 1), ego])  # (B * (n + 1), 3, s, s): the images of one training step
    with torch.no_grad(), amp_context(device, dtype):
        exo_f, ego_f = model.encode(all_images).split([batch_size * n, batch_size])  # what the cache holds
    exo_f, ego_f = exo_f.to(device, torch.float32), ego_f.to(device, torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if compile_model:
        compile_parts(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def backbone_floor(images: torch.Tensor) -> None:
        with torch.no_grad(), amp_context(device, dtype):
            model.backbone.vit.forward_features(images)

    def step(batch: dict) -> None:
        model.train()
        with amp_context(device, dtype):
            losses = criterion(model(batch), epoch=1)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()

    def inference() -> torch.Tensor:
        model.eval()
        with torch.no_grad(), amp_context(device, dtype):
            return model.predict(ego, labels).maps

    def evaluation() -> None:
        maps = inference()
        pred = prepare_prediction(maps.float(), cfg.data.eval_size)
        kld(pred, gt), sim(pred, gt), nss(pred, gt)

    # Two groups, each interleaved: training against the backbone floor of its images, then inference against the
    # floor of its batch (after the training group, so that its freed memory does not land in the inference times).
    t = time_interleaved(
        {
            "floor_step": lambda: backbone_floor(all_images),
            "train": lambda: step({"exo": exo, "ego": ego, "label": labels}),
            "train_cached": lambda: step({"exo_features": exo_f, "ego_features": ego_f, "label": labels}),
        },
        device,
        warmup,
        repeats,
    )
    t |= time_interleaved(
        {"floor_batch": lambda: backbone_floor(ego), "inference": inference, "evaluation": evaluation},
        device,
        warmup,
        repeats,
    )
    return {
        "backbone_images_per_s": batch_size / t["floor_batch"],
        "train_samples_per_s": batch_size / t["train"],
        "train_cached_samples_per_s": batch_size / t["train_cached"],
        "inference_images_per_s": batch_size / t["inference"],
        "evaluation_images_per_s": batch_size / t["evaluation"],
        "backbone_step_images_s": t["floor_step"],
        "train_step_s": t["train"],
        "train_cached_step_s": t["train_cached"],
        "train_step_over_backbone": t["train"] / t["floor_step"],
        "cached_step_speedup": t["train"] / t["train_cached"],
        "inference_over_backbone": t["floor_batch"] / t["inference"],
        "peak_memory_mib": peak_memory_mb(device),
        "trainable_params_m": sum(p.numel() for p in params) / 1e6,
        "frozen_params_m": sum(p.numel() for p in model.parameters() if not p.requires_grad) / 1e6,
    }


ROWS = (
    ("backbone_images_per_s", "backbone floor: timm forward (images/s)", "{:.1f}"),
    ("train_samples_per_s", "training step (samples/s)", "{:.2f}"),
    ("train_cached_samples_per_s", "training step on cached features (samples/s)", "{:.2f}"),
    ("inference_images_per_s", "inference (images/s)", "{:.1f}"),
    ("evaluation_images_per_s", "evaluation: inference + metrics (images/s)", "{:.1f}"),
    ("train_step_over_backbone", "training step / backbone floor of its images", "{:.2f}"),
    ("cached_step_speedup", "training step: uncached / cached time", "{:.2f}"),
    ("inference_over_backbone", f"inference / backbone floor rate (target >= {INFERENCE_MIN_RATIO})", "{:.2f}"),
    ("peak_memory_mib", "peak memory (MiB)", "{:.0f}"),
    ("trainable_params_m", "trainable parameters (M)", "{:.2f}"),
)


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A fixed-width table, one column per precision setting."""
    cols = list(results)
    width = max(len(label) for _, label, _ in ROWS) + 2
    lines = ["".ljust(width) + "".join(c.rjust(12) for c in cols)]
    for key, label, fmt in ROWS:
        lines.append(label.ljust(width) + "".join(fmt.format(results[c][key]).rjust(12) for c in cols))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m utils.tools.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default="configs/locate_dino-vits16_agd20k-seen.yaml", help="config file (YAML)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the config's device)")
    p.add_argument("--amp", action="store_true", help="force the bf16 column even where train.amp=auto picks fp32")
    p.add_argument("--batch-size", type=int, default=None, help="samples per step (default: train.batch_size, 16)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (usual: 2)")
    p.add_argument("--repeats", type=int, default=6, help="timed rounds; the median is reported (usual: 6)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time everything with the backbone and heads compiled (train.compile)",
    )
    p.add_argument(
        "--schedule",
        action="store_true",
        help="also measure end to end on AGD20K-sized JPEGs (loader, cache build, cached and uncached training) and "
        "report one epoch and the 15-epoch schedule on AGD20K Seen's counts (takes minutes on a CPU)",
    )
    p.add_argument("--views", type=int, default=4, help="data.views of the cached setting of --schedule (usual: 4)")
    p.add_argument("--schedule-steps", type=int, default=4, help="timed uncached training steps of --schedule")
    p.add_argument(
        "--schedule-exo", type=int, default=12, help="exocentric JPEGs per folder (16 folders) of --schedule's tree"
    )
    p.add_argument(
        "--locate-json",
        default=None,
        metavar="PATH",
        help="rates of LOCATE's public code measured on this machine (keys train_step.samples_per_s, "
        "test_forward_b16.images_per_s, test_forward_b1.images_per_s; docs/benchmarks.md says how): adds LOCATE's "
        "schedule and the speed-ups",
    )
    p.add_argument("--out", default="benchmark.json", help="where the JSON results go")
    p.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    # random weights: the benchmark measures cost, and must run offline
    cfg = load_config(args.config, [*args.overrides, "model.backbone.weights=", "model.text.clip_weights="])
    device = select_device(args.device or cfg.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch_size or cfg.train.batch_size
    policy = resolve_amp_dtype(cfg.train.amp, device)
    settings: dict[str, torch.dtype | None] = {"fp32": None}
    if policy is not None or args.amp:
        settings["bf16"] = torch.bfloat16
    if args.amp and device.type == "cpu" and not cpu_has_native_bf16():
        logger.warning(
            "--amp on a CPU without bf16 units (no AMX-BF16 or AVX512-BF16): bf16 is emulated there, much slower "
            "than fp32 (the bf16 column can take many times as long), and train.amp=auto would train in fp32"
        )
    results: dict[str, dict[str, float]] = {}
    for name, dtype in settings.items():
        logger.info("benchmark %s on %s, batch %d, %s at %d px", name, device, batch, cfg.model.backbone.name,
                    cfg.data.image_size)  # fmt: skip
        results[name] = run_benchmark(cfg, device, dtype, batch, args.warmup, args.repeats)
        if args.compile:
            compiled = run_benchmark(cfg, device, dtype, batch, args.warmup, args.repeats, compile_model=True)
            results[f"{name}+compile"] = compiled
    # the same record as every run's metrics.json (device and CPU name, kernels, threads, library versions)
    machine: dict[str, Any] = environment_info(device, policy)
    machine.pop("precision")  # each column has its own; the training policy says which one training uses
    machine["training_policy"] = f"train.amp={cfg.train.amp} -> {'bf16' if policy is not None else 'fp32'}"
    report = {"machine": machine, "batch_size": batch, "backbone": cfg.model.backbone.name,
              "image_size": cfg.data.image_size, "num_exo": cfg.data.num_exo, "results": results}  # fmt: skip
    policy_column = results["bf16" if policy is not None else "fp32"]
    locate = _read_locate(args.locate_json) if args.locate_json else None
    if locate:
        report["locate"] = locate
        report["inference_speedup_vs_locate"] = policy_column["inference_images_per_s"] / locate["test_images_per_s"]
    if args.schedule:
        from utils.tools.schedule import measure_schedule, schedule_times

        rates = measure_schedule(
            cfg, device, steps=args.schedule_steps, views=args.views, exo_per_folder=args.schedule_exo
        )
        report["schedule_rates"] = rates
        report["schedule"] = schedule_times(rates, policy_column["evaluation_images_per_s"], args.views, locate=locate)
    report["peak_memory_mib"] = peak_memory_mb(device)
    report["targets"] = _targets(report, policy_column)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(format_table(results))
    if "schedule" in report:
        print("\n" + format_schedule(report["schedule"]))
    for name, (value, target, met) in report["targets"].items():
        print(f"target {name}: {value:.2f} (>= {target}) {'met' if met else 'NOT met'}")
    print(
        f"\nmeasured on {describe_device(machine)} with {machine['torch_threads']} threads, torch {machine['torch']}, "
        f"{machine['training_policy']}"
        f"\nwritten: {args.out}"
    )
    return 0


def _read_locate(path: str) -> dict[str, float]:
    """LOCATE's rates from the JSON of a timing of its public code (see ``--locate-json``)."""
    try:
        return _read_locate_dict(json.loads(Path(path).read_text()))
    except ValueError as e:
        raise ValueError(f"--locate-json {path}: {e}") from e


def _read_locate_dict(data: dict[str, Any]) -> dict[str, float]:
    try:
        return {
            "train_samples_per_s": float(data["train_step"]["samples_per_s"]),
            "test_images_per_s": float(data["test_forward_b16"]["images_per_s"]),
            "test_images_per_s_batch1": float(data["test_forward_b1"]["images_per_s"]),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            "expected train_step.samples_per_s, test_forward_b16.images_per_s and test_forward_b1.images_per_s, "
            f"found keys {sorted(data)} ({e!r})"
        ) from e


def _targets(report: dict[str, Any], column: dict[str, float]) -> dict[str, tuple[float, float, bool]]:
    """Each target that this report can check: (value, target, met)."""
    out = {"inference / backbone floor": (column["inference_over_backbone"], INFERENCE_MIN_RATIO)}
    if "inference_speedup_vs_locate" in report:
        out["inference vs LOCATE"] = (report["inference_speedup_vs_locate"], 2.0)
    for key, target in SCHEDULE_TARGETS.items():
        if key in report.get("schedule", {}):
            out[f"schedule {key}"] = (report["schedule"][key], target)
    return {name: (value, target, value >= target) for name, (value, target) in out.items()}


def format_schedule(s: dict[str, Any]) -> str:
    """The schedule report as text: hours of an epoch and of the schedule, uncached, cached and LOCATE."""
    c = s["counts"]
    lines = [
        f"AGD20K Seen-sized schedule: {c['train_samples']} training samples ({c['train_images']} images), "
        f"{c['test_images']} test images, {s['epochs']} epochs each followed by an evaluation",
        f"  cache build ({s['views']} views per image, {s['cache_disk_gib']:.1f} GiB on disk): "
        f"{s['cache_build_s'] / 3600:.2f} h",
        f"  one epoch: {s['epoch_s'] / 3600:.2f} h uncached, {s['epoch_cached_s'] / 3600:.2f} h cached",
        f"  schedule:  {s['schedule_s'] / 3600:.2f} h uncached, {s['schedule_cached_s'] / 3600:.2f} h with the cache",
    ]
    if "locate_schedule_s" in s:
        lines.append(
            f"  LOCATE's public code: {s['locate_schedule_s'] / 3600:.2f} h "
            f"(ours {s['speedup_vs_locate']:.2f}x faster uncached, {s['speedup_cached_vs_locate']:.2f}x with the cache)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
