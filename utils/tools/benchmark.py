"""Speed and memory benchmark: backbone floor, training step, inference, evaluation, peak memory.

    python -m utils.tools.benchmark --config configs/locate_dino-vits16_agd20k-seen.yaml [--device cpu|cuda] [--amp]

Every number is the median over ``--repeats`` timed rounds (each round runs every measurement once, so slow drifts of
the machine do not favour one of them) after ``--warmup`` untimed ones, on random weights and
random inputs of the configured size (ViT-S/16 at 224, batch 16 by default). It runs once in fp32 and once with
the training precision policy (``train.amp``; ``--amp`` forces bf16), so the two columns can be compared.

Targets (issue 8), set by arithmetic on the published heads: a full training step (1 ego + num_exo exo images per
sample, forward + backward + optimiser step) costs at most 1.6x the frozen backbone forward of the same images, and
inference runs at least 0.8x the backbone-only rate.
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
    cpu_has_native_bf16,
    environment_info,
    resolve_amp_dtype,
    select_device,
    setup_logging,
)
from utils.tools.compare_runs import describe_device

logger = logging.getLogger(__name__)

TRAIN_STEP_MAX_RATIO = 1.6  # train step time / backbone forward time of the same images
INFERENCE_MIN_RATIO = 0.8  # inference images/s / backbone images/s


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
) -> dict[str, float]:
    """Measure one precision setting; returns rates (per second), seconds and memory in MiB."""
    from models.grounder import build_model
    from utils.evaluation.metrics import kld, nss, prepare_prediction, sim

    torch.manual_seed(0)
    class_names = [f"affordance_{i}" for i in range(num_classes)]
    model = build_model(cfg, class_names).to(device)
    s, n = cfg.data.image_size, cfg.data.num_exo
    ego = torch.randn(batch_size, 3, s, s, device=device)
    exo = torch.randn(batch_size, n, 3, s, s, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    gt = torch.rand(batch_size, cfg.data.eval_size, cfg.data.eval_size, device=device)
    all_images = torch.cat([ego, exo.flatten(0, 1)])  # (B * (1 + n), 3, s, s): the images of one training step
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def backbone_forward(images: torch.Tensor) -> None:
        with torch.no_grad(), amp_context(device, dtype):
            model.backbone(images)

    def train_step() -> None:
        model.train()
        with amp_context(device, dtype):
            out = model({"exo": exo, "ego": ego, "label": labels}, epoch=1)
        opt.zero_grad(set_to_none=True)
        out["losses"]["total"].backward()
        opt.step()

    def inference() -> torch.Tensor:
        model.eval()
        with torch.no_grad(), amp_context(device, dtype):
            return model.predict(ego, labels)["maps"]

    def evaluation() -> None:
        maps = inference()
        pred = prepare_prediction(maps.float(), cfg.data.eval_size)
        kld(pred, gt), sim(pred, gt), nss(pred, gt)

    t = time_interleaved(
        {
            "bb_batch": lambda: backbone_forward(ego),
            "bb_step": lambda: backbone_forward(all_images),
            "train": train_step,
            "inference": inference,
            "evaluation": evaluation,
        },
        device,
        warmup,
        repeats,
    )
    return {
        "backbone_images_per_s": batch_size / t["bb_batch"],
        "train_samples_per_s": batch_size / t["train"],
        "inference_images_per_s": batch_size / t["inference"],
        "evaluation_images_per_s": batch_size / t["evaluation"],
        "backbone_step_images_s": t["bb_step"],
        "train_step_s": t["train"],
        "train_step_over_backbone": t["train"] / t["bb_step"],
        "inference_over_backbone": t["bb_batch"] / t["inference"],
        "peak_memory_mib": peak_memory_mb(device),
        "trainable_params_m": sum(p.numel() for p in params) / 1e6,
        "frozen_params_m": sum(p.numel() for p in model.parameters() if not p.requires_grad) / 1e6,
    }


ROWS = (
    ("backbone_images_per_s", "backbone forward (images/s)", "{:.1f}"),
    ("train_samples_per_s", "training step (samples/s)", "{:.2f}"),
    ("inference_images_per_s", "inference (images/s)", "{:.1f}"),
    ("evaluation_images_per_s", "evaluation (images/s)", "{:.1f}"),
    ("train_step_over_backbone", f"train step / backbone fwd (target <= {TRAIN_STEP_MAX_RATIO})", "{:.2f}"),
    ("inference_over_backbone", f"inference / backbone rate (target >= {INFERENCE_MIN_RATIO})", "{:.2f}"),
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
    p.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported (usual: 5)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
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
    # the same record as every run's metrics.json (device and CPU name, kernels, threads, library versions)
    machine: dict[str, Any] = environment_info(device, policy)
    machine.pop("precision")  # each column has its own; the training policy says which one training uses
    machine["training_policy"] = f"train.amp={cfg.train.amp} -> {'bf16' if policy is not None else 'fp32'}"
    report = {"machine": machine, "batch_size": batch, "backbone": cfg.model.backbone.name,
              "image_size": cfg.data.image_size, "num_exo": cfg.data.num_exo, "results": results}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(format_table(results))
    print(
        f"\nmeasured on {describe_device(machine)} with {machine['torch_threads']} threads, torch {machine['torch']}, "
        f"{machine['training_policy']}"
        f"\nwritten: {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
