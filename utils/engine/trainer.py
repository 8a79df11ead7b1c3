"""One training epoch: forward, criterion, backward, optimiser step, with logs, pictures and a finite-loss check.

:func:`train_one_epoch` takes what it needs as arguments (no global state), so that a notebook can call it on its
own model, criterion and loader. Rank 0 alone writes files; the callers guard that.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from models.criterion import LOSS_TERMS, Criterion
from utils.config import Config
from utils.engine.distributed import all_reduce_mean, is_distributed, unwrap_model
from utils.engine.loader import move_batch
from utils.engine.optim import current_lr
from utils.engine.runtime import amp_context

__all__ = [
    "NonFiniteLossError",
    "train_one_epoch",
]

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; training stopped before the optimiser step (nothing was saved)."""


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


def _view_images(loader: Any, batch: Mapping[str, Any], num: int) -> dict[str, torch.Tensor]:
    """``ego`` (k, 3, S, S) and ``exo`` (k, n, 3, S, S) images of the first k samples of a cached batch, decoded
    again for the pictures (the batch itself holds only their features)."""
    dataset = loader.dataset
    k = min(num, len(batch["ego_path"]))
    ego = torch.stack([dataset.view_image(batch["ego_path"][i], int(batch["ego_view"][i])) for i in range(k)])
    exo = torch.stack(
        [
            torch.stack(
                [
                    dataset.view_image(paths[i], int(batch["exo_views"][i, s]))
                    for s, paths in enumerate(batch["exo_paths"])
                ]
            )
            for i in range(k)
        ]
    )
    return {"ego": ego, "exo": exo}


def train_one_epoch(
    model: nn.Module,
    criterion: Criterion,
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
        model: the grounder (or its DDP wrapper); ``model(batch)`` returns a :class:`models.outputs.GrounderOutput`.
        criterion: turns the output into the loss terms (``criterion(out, epoch)``).
        loader: the training loader (its epoch already set with :func:`set_loader_epoch`).
        optimizer: the optimiser.
        epoch: 0-based epoch, passed to the criterion (the prototype loss starts after its warm-up).
        device: where the batches go.
        cfg: the configuration (``train.grad_clip``, ``train.log_every``, ``viz.every``, ``viz.num``, ...).
        amp_dtype: autocast dtype around the forward (None: fp32), from ``utils.engine.runtime.resolve_amp_dtype``.
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
            out = model(batch)
            losses = criterion(out, epoch)
        values = {k: float(v.detach().float()) for k, v in losses.items()}
        _check_finite(values, epoch, step, global_step, device)

        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        if cfg.train.grad_clip > 0:
            values["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip))
        optimizer.step()
        global_step += 1

        label = out.label
        b, n = out.gt_aff_cam.shape[:2]
        with torch.no_grad():
            values["acc_ego"] = float((out.logits_ego.argmax(-1) == label).float().mean())
            values["acc_exo"] = float((out.logits_exo.argmax(-1) == label[:, None]).float().mean())
            values["proto_rate"] = float(out.parts.has_prototype.float().mean())
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
            from utils.viz.panels import training_panel  # local: only needed when pictures are on

            try:
                shown = batch if "ego" in batch else {**batch, **_view_images(loader, batch, cfg.viz.num)}
                pic = training_panel(out, shown, class_names or unwrap_model(model).class_names, cfg.viz.num)
            except Exception as e:  # a picture must never stop training
                logger.warning("could not draw the training picture at step %d: %s", global_step, e)
            else:
                writer.add_image("train/panel", pic, global_step, dataformats="HWC")
                if picture_dir is not None:
                    from utils.viz.draw import save_png

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
