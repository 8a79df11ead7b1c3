"""The pieces of the training loop that train.py puts together: loaders, one epoch, evaluation, logs, resume.

Every function here takes what it needs as arguments (no global state), so that a notebook can call
:func:`train_one_epoch` on its own model and loader. Rank 0 alone writes files; the callers guard that.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from utils.config import SPLITS, Config
from utils.distributed import DistInfo, all_reduce_mean, is_distributed, unwrap_model
from utils.optim import current_lr
from utils.runtime import amp_context, seed_worker

__all__ = [
    "LOSS_TERMS",
    "TEST_SELECTED_NOTE",
    "JsonlLog",
    "NonFiniteLossError",
    "SeededShuffleSampler",
    "build_train_loader",
    "eval_due",
    "evaluate_model",
    "final_report",
    "make_writer",
    "model_report",
    "move_batch",
    "resume_run_dir",
    "set_loader_epoch",
    "train_one_epoch",
    "training_panel",
    "write_json",
]

logger = logging.getLogger(__name__)

LOSS_TERMS: tuple[str, ...] = ("ce_ego", "ce_exo", "proto", "conc", "contra", "sep", "border", "total")
"""The loss terms of ``Grounder.forward(...)["losses"]``, in log order."""

TEST_SELECTED_NOTE = "selected on the test set, like the published numbers"


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; training stopped before the optimiser step (nothing was saved)."""


# ------------------------------------------------------------------------------------------------- data


def _mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (so that seeds (0, 1) and (1, 0) give unrelated streams)."""
    return int(np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class SeededShuffleSampler(Sampler[int]):
    """Shuffle indices with a generator seeded by ``(seed, epoch)`` alone (call :meth:`set_epoch` every epoch).

    The order of an epoch does not depend on the global RNG, so a run resumed at an epoch boundary sees the same
    batches as an uninterrupted one. The single-process counterpart of ``DistributedSampler(seed=...)``.
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.num_samples, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_samples


def build_train_loader(dataset: Dataset, cfg: Config, dist: DistInfo, device: torch.device) -> DataLoader:
    """The training loader: seeded shuffling (distributed or not), full batches only, seeded workers.

    Workers are not persistent: each epoch's workers receive the dataset after its ``set_epoch``, which is what
    makes the pairing depend on (seed, epoch, index) only.

    Raises:
        ValueError: the dataset cannot fill a single batch on every process.
    """
    bs = cfg.train.batch_size
    if dist.enabled:
        sampler: Sampler[int] = DistributedSampler(
            dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
    else:
        sampler = SeededShuffleSampler(len(dataset), seed=cfg.seed)
    per_process = len(dataset) // dist.world_size
    if per_process < bs:
        raise ValueError(
            f"the training set has {len(dataset)} samples, {per_process} per process, fewer than train.batch_size="
            f"{bs}: lower train.batch_size or use fewer processes"
        )
    return DataLoader(
        dataset,
        batch_size=bs,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        drop_last=True,  # BatchNorm and the per-batch k-means want full batches
        pin_memory=device.type == "cuda",
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(cfg.seed),
        persistent_workers=False,
    )


def set_loader_epoch(loader: DataLoader, epoch: int, seed: int) -> None:
    """Make ``epoch``'s data a function of (seed, epoch): sampler order, dataset pairing, worker seeds."""
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(_mix_seed(seed, epoch, 1))


def move_batch(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of a batch moved to ``device`` (non-blocking from pinned memory); other values kept as they are."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------- one epoch


def _check_finite(values: dict[str, float], epoch: int, step: int, global_step: int, device: torch.device) -> None:
    bad = not all(math.isfinite(v) for v in values.values())
    if is_distributed():
        # every process must stop together, or the others hang in the next all-reduce
        flag = torch.tensor([1.0 if bad else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        bad = bool(flag.item() > 0)
    if bad:
        terms = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch + 1}, step {step + 1} of the epoch (global step {global_step + 1}): "
            f"{terms}. Training stopped before the optimiser step; the last checkpoint was left untouched. "
            "Lower train.lr, set train.grad_clip (e.g. 1.0), or try train.amp=off, then resume from last.pth."
        )


def training_panel(
    outputs: Mapping[str, Any], batch: Mapping[str, Any], class_names: Sequence[str], num: int
) -> np.ndarray:
    """One picture of the first ``num`` samples of a training batch: for each, utils.viz.model_panel.

    Shows the egocentric prediction beside its pseudo-GT, the exocentric images with their ``gt_aff_cam``, the
    saliency and selected head, and the part similarity maps with their scores.
    """
    from utils.viz import make_grid, model_panel  # local: only needed when pictures are on

    labels = batch["label"].tolist()
    panels = [
        [model_panel(batch["ego"][i], outputs, class_names, int(labels[i]), exo=batch["exo"][i], index=i)]
        for i in range(min(num, len(labels)))
    ]
    return make_grid(panels)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    optimizer: torch.optim.Optimizer,
    epoch: int,
    *,
    device: torch.device,
    cfg: Config,
    amp_dtype: torch.dtype | None = None,
    global_step: int = 0,
    writer: Any | None = None,
    class_names: Sequence[str] = (),
    picture_dir: Path | None = None,
    desc: str = "train",
    show_progress: bool = True,
) -> dict[str, float]:
    """Train ``model`` for one epoch (at most ``cfg.train.max_steps_per_epoch`` steps).

    Args:
        model: the grounder (or its DDP wrapper); ``model(batch, epoch=epoch)`` returns outputs with ``losses``.
        loader: the training loader (its epoch already set with :func:`set_loader_epoch`).
        optimizer: the optimiser.
        epoch: 0-based epoch, passed to the model (the prototype loss starts after its warm-up).
        device: where the batches go.
        cfg: the configuration (``train.grad_clip``, ``train.log_every``, ``viz.every``, ``viz.num``, ...).
        amp_dtype: autocast dtype around the forward (None: fp32), from ``utils.runtime.resolve_amp_dtype``.
        global_step: optimiser steps before this epoch (TensorBoard x axis).
        writer: a TensorBoard ``SummaryWriter`` (rank 0) or None.
        class_names: class names, for the pictures.
        picture_dir: where training pictures are also saved as PNG (None: TensorBoard only).
        desc: progress-bar label.
        show_progress: show a tqdm bar (it hides itself when stderr is not a terminal).

    Returns:
        Averages over the epoch (and over processes): every loss term, ``acc_ego``, ``acc_exo`` (accuracy of the
        ego/exo logits), ``proto_rate`` (samples with a part prototype), ``lr``, ``images_per_s``,
        ``samples_per_s``, ``epoch_time`` (s) and ``steps``.

    Raises:
        NonFiniteLossError: a loss term is NaN or infinite (the message names the step and every term).
    """
    model.train()
    limit = cfg.train.max_steps_per_epoch
    total_steps = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    if limit and total_steps is not None:
        total_steps = min(total_steps, limit)
    tty = sys.stderr.isatty()
    bar = tqdm(
        total=total_steps,
        desc=desc,
        disable=None if show_progress else True,  # None: hidden when stderr is not a terminal
        dynamic_ncols=True,
        leave=False,
    )
    params = [p for g in optimizer.param_groups for p in g["params"]]
    sums: dict[str, float] = {}
    samples = images = steps = 0
    t0 = time.perf_counter()
    lr = current_lr(optimizer)
    for step, batch in enumerate(loader):
        if limit and step >= limit:
            break
        batch = move_batch(batch, device)
        with amp_context(device, amp_dtype):
            out = model(batch, epoch=epoch)
        losses = out["losses"]
        values = {k: float(v.detach().float()) for k, v in losses.items()}
        _check_finite(values, epoch, step, global_step, device)

        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        if cfg.train.grad_clip > 0:
            values["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip))
        optimizer.step()
        global_step += 1

        label = batch["label"].view(-1)
        b = label.shape[0]
        n = batch["exo"].shape[1]
        with torch.no_grad():
            values["acc_ego"] = float((out["logits_ego"].argmax(-1) == label).float().mean())
            values["acc_exo"] = float((out["logits_exo"].argmax(-1) == label[:, None]).float().mean())
            if out.get("has_prototype") is not None:
                values["proto_rate"] = float(out["has_prototype"].float().mean())
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        samples += b
        images += b * (n + 1)
        steps += 1
        elapsed = max(time.perf_counter() - t0, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{values['total']:.4f}", img_s=f"{images / elapsed:.1f}")

        if cfg.train.log_every and global_step % cfg.train.log_every == 0:
            if writer is not None:
                for k, v in values.items():
                    writer.add_scalar(f"train/{k}", v, global_step)
                writer.add_scalar("train/lr", lr, global_step)
            if not tty or not show_progress:
                logger.info(
                    "%s step %d/%s: loss %.4f (%s), %.1f images/s",
                    desc,
                    step + 1,
                    total_steps if total_steps is not None else "?",
                    values["total"],
                    ", ".join(f"{k} {values[k]:.4f}" for k in LOSS_TERMS if k in values and k != "total"),
                    images / elapsed,
                )
        if writer is not None and cfg.viz.every and global_step % cfg.viz.every == 0:
            try:
                pic = training_panel(out, batch, class_names or unwrap_model(model).class_names, cfg.viz.num)
            except Exception as e:  # a picture must never stop training
                logger.warning("could not draw the training picture at step %d: %s", global_step, e)
            else:
                writer.add_image("train/panel", pic, global_step, dataformats="HWC")
                if picture_dir is not None:
                    from utils.viz import save_png

                    save_png(Path(picture_dir) / f"train_step{global_step:06d}.png", pic)
    bar.close()
    if steps == 0:
        raise ValueError("the training loader gave no batch: the dataset is smaller than one batch")
    elapsed = time.perf_counter() - t0
    stats = {k: v / steps for k, v in sums.items()}
    stats.update(images_per_s=images / elapsed, samples_per_s=samples / elapsed)
    world = torch.distributed.get_world_size() if is_distributed() else 1
    stats = all_reduce_mean(stats, device)
    stats["images_per_s"] *= world  # throughput of all processes together
    stats["samples_per_s"] *= world
    stats.update(lr=lr, epoch_time=elapsed, steps=steps)
    return stats


# ------------------------------------------------------------------------------------------------- outputs


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (temporary file + ``os.replace``), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


class JsonlLog:
    """``log.jsonl``: one JSON object per epoch, appended and flushed (a crash loses at most the current line)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def truncate_after(self, epoch: int) -> None:
        """Drop lines of epochs after ``epoch`` (1-based), e.g. written after the checkpoint a run resumes from."""
        if not self.path.is_file():
            return
        kept = [ln for ln in self.read() if int(ln.get("epoch", 0)) <= epoch]
        self.path.write_text("".join(json.dumps(r, default=_json_default) + "\n" for r in kept))

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one line."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(dict(record), default=_json_default) + "\n")
            fh.flush()

    def read(self) -> list[dict[str, Any]]:
        """Every line, parsed (an unfinished last line is skipped)."""
        if not self.path.is_file():
            return []
        out = []
        for ln in self.path.read_text().splitlines():
            try:
                out.append(json.loads(ln))
            except json.JSONDecodeError:
                continue
        return out


def make_writer(log_dir: Path, enabled: bool, purge_step: int | None = None) -> Any | None:
    """A TensorBoard SummaryWriter in ``log_dir`` (None when disabled); ``purge_step`` drops a crashed tail."""
    if not enabled:
        return None
    from torch.utils.tensorboard import SummaryWriter  # local: importing tensorboard costs a second

    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def model_report(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The honest and the test-selected numbers from the evaluation history (one entry per evaluated epoch).

    Returns:
        ``{"last_epoch": the last entry, "best_epoch_test_selected": the lowest-KLD entry with a note}``; the
        last epoch of the fixed schedule is the reported result, the other is for comparison with published numbers.
    """
    if not history:
        raise ValueError("no evaluation in the history: evaluate at least after the last epoch")
    last = dict(history[-1])
    best = dict(min(history, key=lambda r: (r["KLD"], r["epoch"])))
    best["note"] = TEST_SELECTED_NOTE
    return {"last_epoch": last, "best_epoch_test_selected": best}


def resume_run_dir(spec: str | None, cfg: Config, splits: Sequence[str], runs_root: str | Path = "runs") -> Path | None:
    """The run folder a ``--resume`` continues (None: start a new one).

    ``--resume PATH`` continues the run holding ``PATH`` when it lies in a run's split folder
    (``<run>/<Split>/last.pth``), else ``output.dir`` or a new run folder; ``--resume auto`` continues ``output.dir``
    or the newest ``runs/<name>-*`` folder with a ``last.pth`` of any split.
    """
    if spec is None:
        return None
    if spec != "auto":
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"--resume {spec}: no such checkpoint file; pass a last.pth or --resume auto")
        if path.resolve().parent.name in SPLITS:
            return path.resolve().parent.parent
        return Path(cfg.output.dir) if cfg.output.dir else None
    if cfg.output.dir:
        return Path(cfg.output.dir)
    for run in sorted(Path(runs_root).glob(f"{cfg.output.name}-*"), key=lambda p: p.name, reverse=True):
        if any((run / s / "last.pth").is_file() for s in splits):
            return run
    logger.warning("--resume auto: no run folder runs/%s-* with a last.pth; starting a new run", cfg.output.name)
    return None


def eval_due(epoch: int, epochs: int, every: int) -> bool:
    """Evaluate after 0-based ``epoch``: every ``every`` epochs, and always after the last."""
    return epoch + 1 == epochs or (every > 0 and (epoch + 1) % every == 0)


# ---------------------------------------------------------------------------------------------- evaluation


def evaluate_model(
    model: nn.Module, test_set: Dataset, cfg: Config, device: torch.device, desc: str = "evaluate"
) -> dict[str, Any]:
    """Score the model's maps for each test image's label with KLD / SIM / NSS (utils.evaluation, SPEC §2).

    Returns:
        ``{"metrics": {"KLD", "SIM", "NSS"}, "result": utils.evaluation.EvalResult}``.
    """
    from utils.evaluation import evaluate, model_predict_fn

    result = evaluate(
        model_predict_fn(unwrap_model(model), cfg.data.eval_size),
        test_set,
        batch_size=cfg.eval.batch_size,
        num_workers=cfg.data.num_workers,
        device=device,
        progress=sys.stderr.isatty(),
        amp="off",  # reported numbers come from fp32 maps, as test.py's, whatever the training precision
        keep_size=112 if cfg.eval.viz else None,
        desc=desc,
    )
    metrics = {k: float(result.summary[k]) for k in ("KLD", "SIM", "NSS")}
    return {"metrics": metrics, "result": result}


def final_report(
    model: nn.Module,
    test_set: Dataset,
    cfg: Config,
    device: torch.device,
    history: list[dict[str, Any]],
    last: dict[str, Any] | None,
    split_dir: Path,
    epochs_done: int,
) -> dict[str, Any]:
    """The split's ``metrics.json``: last-epoch and test-selected numbers, baselines, per-class means, pictures.

    Args:
        model: the trained model.
        test_set: the split's test set.
        cfg: the configuration (``eval.baselines``, ``eval.viz``).
        history: one ``{"epoch", "KLD", "SIM", "NSS"}`` entry per evaluated epoch (appended to when ``last`` is
            None and the final epoch is missing).
        last: :func:`evaluate_model` of the final weights, or None to evaluate them now (a resumed, finished run).
        split_dir: where ``pictures/`` goes.
        epochs_done: epochs trained.
    """
    from utils.baselines import build_baseline
    from utils.evaluation import evaluate, write_pictures

    if last is None:
        last = evaluate_model(model, test_set, cfg, device, desc="evaluate final")
        if not history or history[-1]["epoch"] != epochs_done:
            history.append({"epoch": epochs_done, **last["metrics"]})
    summary = last["result"].summary
    baselines: dict[str, Any] = {}
    for name in cfg.eval.baselines:
        res = evaluate(
            build_baseline(name),
            test_set,
            batch_size=cfg.eval.batch_size,
            num_workers=cfg.data.num_workers,
            device=device,
            progress=False,
            keep_size=None,
            desc=f"baseline {name}",
        )
        baselines[name] = {k: res.summary[k] for k in ("KLD", "SIM", "NSS", "num_images")}
    pictures: list[str] = []
    if cfg.eval.viz:
        paths = write_pictures(last["result"], test_set, split_dir / "pictures", n=cfg.eval.viz)
        pictures = [str(Path(p).relative_to(split_dir)) for p in paths]
    report = model_report(history)
    return {
        "model": report,
        "baselines": baselines,
        "per_affordance": summary["per_affordance"],
        "per_object": summary["per_object"],
        "images": summary["num_images"],
        "zero_gt": summary["zero_gt"],
        "epochs": epochs_done,
        "history": history,
        "eval_seconds": last["result"].timing(),
        "pictures": pictures,
    }
