"""Train and evaluate one split: data, model, criterion, optimiser, resume, the epoch loop, the report.

:func:`train_split` is what ``train.py`` runs for every split of ``data.splits``; it reads top to bottom in banner
sections. Everything it writes goes into the split's folder of the run.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["check_input_size", "train_split"]

logger = logging.getLogger("train")


def check_input_size(cfg: Any) -> None:
    """Fail before any work when ``data.image_size`` is not a multiple of the backbone's patch size.

    The ViT is built on the ``meta`` device (no memory, no weights) just to read its patch size.
    """
    import timm
    import torch

    from utils.config import ConfigError

    kwargs = {k: v for k, v in cfg.model.backbone.kwargs.items() if k != "img_size"}
    with torch.device("meta"):
        vit = timm.create_model(cfg.model.backbone.name, pretrained=False, num_classes=0, **kwargs)
    patch = int(vit.patch_embed.patch_size[0])
    size = cfg.data.image_size
    if size % patch:
        raise ConfigError(
            f"data.image_size={size} is invalid: expected a multiple of the patch size {patch} of "
            f"{cfg.model.backbone.name}, e.g. data.image_size={max(patch, size // patch * patch)} (and data.eval_size, "
            "data.resize_size to match)"
        )


def train_split(
    cfg: Any,
    split: str,
    split_dir: Path,
    dist: Any,
    device: Any,
    resume: Path | None = None,
) -> dict[str, Any] | None:
    """Train and evaluate one split in ``split_dir``; returns its report (rank 0) or None (other ranks).

    Args:
        cfg: the resolved :class:`utils.config.Config`.
        split: ``Seen`` or ``Unseen``.
        split_dir: ``<run>/<split>``.
        dist: this process's :class:`utils.engine.distributed.DistInfo`.
        device: this process's device.
        resume: a checkpoint to continue from (None: start afresh).
    """
    from datasets.agd20k import AGD20KTest, AGD20KTrain
    from datasets.agd20k.cached import collate_cached
    from models.build import build_model
    from models.criterion import build_criterion
    from utils.engine.checkpoint import (
        CheckpointMismatchError,
        load_checkpoint,
        restore_training_state,
        save_checkpoint,
    )
    from utils.engine.distributed import barrier, wrap_ddp
    from utils.engine.loader import build_train_loader, set_loader_epoch
    from utils.engine.logs import JsonlLog, make_writer, write_json
    from utils.engine.optim import build_optimizer, build_scheduler
    from utils.engine.runs import eval_due
    from utils.engine.runtime import compile_parts, environment_info, resolve_amp_dtype, seed_everything
    from utils.engine.trainer import train_one_epoch
    from utils.evaluation.split_report import evaluate_model, final_report

    main_proc = dist.is_main
    if main_proc:
        split_dir.mkdir(parents=True, exist_ok=True)

    # ================================================================================================ data
    logger.info("==================== %s: data ====================", split)
    train_set = AGD20KTrain.from_config(cfg, split)
    class_names = list(train_set.class_names)
    test_set = None  # rank 0 alone evaluates
    if main_proc:
        test_set = AGD20KTest.from_config(
            cfg, split, class_names=class_names, with_masks="object" in cfg.eval.baselines
        )

    # =============================================================================================== model
    logger.info("==================== %s: model ====================", split)
    seed_everything(cfg.seed)  # each split's model starts from the same seed whatever ran before it
    if cfg.train.cudnn_deterministic:  # LOCATE's set_seed; only CUDA convolutions are affected
        import torch

        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    model = build_model(cfg, class_names).to(device)
    if cfg.train.compile:
        compile_parts(model)
    train_model = wrap_ddp(model, device)
    amp_dtype = resolve_amp_dtype(cfg.train.amp, device)
    logger.info("device %s, autocast %s", device, amp_dtype or "off (fp32)")

    # ======================================================================================= feature cache
    collate = None
    if cfg.train.cache:
        logger.info("==================== %s: feature cache ====================", split)
        train_set = cached_train_set(model, train_set, cfg, split, dist, device, amp_dtype)
        collate = collate_cached
    loader = build_train_loader(train_set, cfg, dist, device, collate_fn=collate)
    logger.info(
        "%s: %d training samples (%d steps/epoch of %d), %d test images, %d classes",
        split,
        len(train_set),
        len(loader) if not cfg.train.max_steps_per_epoch else min(len(loader), cfg.train.max_steps_per_epoch),
        cfg.train.batch_size,
        len(test_set) if test_set is not None else 0,
        len(class_names),
    )

    # ================================================================================================ loss
    logger.info("==================== %s: loss ====================", split)
    criterion = build_criterion(cfg.loss)
    logger.info(
        "L = CE_ego + CE_exo + %g proto (from epoch %d, margin %g) + %g conc%s%s%s; part selector %s",
        cfg.loss.proto,
        cfg.loss.proto_warmup_epochs + 1,
        cfg.loss.proto_margin,
        cfg.loss.conc,
        f" + {cfg.loss.contra:g} contra" if cfg.model.text.encoder != "none" else "",
        f" + {cfg.loss.sep:g} sep" if cfg.loss.sep > 0 else "",
        f" + {cfg.loss.border:g} border" if cfg.loss.border > 0 else "",
        type(model.parts).__name__,
    )

    # =========================================================================================== optimizer
    logger.info("==================== %s: optimizer ====================", split)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    logger.info(
        "%s, base lr %g, weight decay %g, StepLR x%g every %s epochs, %d epochs",
        cfg.train.optimizer,
        cfg.train.lr,
        cfg.train.weight_decay,
        cfg.train.lr_gamma,
        cfg.train.lr_step or "never",
        cfg.train.epochs,
    )

    # ============================================================================================== resume
    logger.info("==================== %s: resume ====================", split)
    start_epoch, global_step = 0, 0
    history: list[dict[str, Any]] = []
    jsonl = JsonlLog(split_dir / "log.jsonl")
    if resume is not None:
        ckpt = load_checkpoint(resume)
        if ckpt.get("split") and ckpt["split"] != split:
            raise CheckpointMismatchError(
                f"--resume {resume} holds a model of split {ckpt['split']!r}, not {split!r}; pass the last.pth of "
                f"the {split} folder"
            )
        info = restore_training_state(ckpt, model, optimizer, scheduler, cfg, class_names)
        start_epoch, global_step = info["epoch"], info["step"]
        history = list(info["extra"].get("history", []))
        logger.info("resumed from %s: %d epochs done, step %d", resume, start_epoch, global_step)
        if main_proc:
            jsonl.truncate_after(start_epoch)
    else:
        logger.info("starting afresh")
    writer = make_writer(split_dir, cfg.output.tensorboard and main_proc, purge_step=global_step or None)

    # ================================================================================================ loop
    logger.info("==================== %s: loop ====================", split)
    last_result: dict[str, Any] | None = None
    best_kld = min((r["KLD"] for r in history), default=float("inf"))
    ckpt_kwargs = {"cfg": cfg, "class_names": class_names, "split": split}
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            set_loader_epoch(loader, epoch, cfg.seed)
            stats = train_one_epoch(
                train_model,
                criterion,
                loader,
                optimizer,
                epoch,
                device=device,
                cfg=cfg,
                amp_dtype=amp_dtype,
                global_step=global_step,
                writer=writer,
                class_names=class_names,
                picture_dir=split_dir / "pictures" if main_proc else None,
                desc=f"{split} {epoch + 1}/{cfg.train.epochs}",
                show_progress=main_proc,
            )
            global_step += int(stats["steps"])
            scheduler.step()
            record: dict[str, Any] = {"epoch": epoch + 1, "step": global_step, **stats}

            new_best = False
            if eval_due(epoch, cfg.train.epochs, cfg.eval.every):
                barrier()
                if main_proc:
                    last_result = evaluate_model(model, test_set, cfg, device, desc=f"{split} test, epoch {epoch + 1}")
                    entry = {"epoch": epoch + 1, **last_result["metrics"]}
                    history.append(entry)
                    record.update({f"eval_{k}": v for k, v in last_result["metrics"].items()})
                    new_best = entry["KLD"] < best_kld
                    best_kld = min(best_kld, entry["KLD"])
                    if writer is not None:
                        for k, v in last_result["metrics"].items():
                            writer.add_scalar(f"eval/{k}", v, global_step)
                barrier()
            if main_proc:
                # the log line first: a kill before the checkpoint below is resumed from the previous epoch, whose
                # resume drops this line (truncate_after) and writes it again; the other order could lose it
                jsonl.append(record)
                extra = {"history": history, "best_kld": best_kld}
                save_checkpoint(
                    split_dir / "last.pth",
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    epoch=epoch + 1,
                    step=global_step,
                    extra=extra,
                    **ckpt_kwargs,
                )
                if new_best:
                    save_checkpoint(
                        split_dir / "best.pth",
                        model=model,
                        epoch=epoch + 1,
                        step=global_step,
                        extra=extra,
                        **ckpt_kwargs,
                    )
                if writer is not None:
                    for k, v in stats.items():  # epoch averages, smoother than the per-step train/* curves
                        writer.add_scalar(f"epoch/{k}", v, epoch + 1)
                    writer.flush()
                logger.info(
                    "%s epoch %d/%d: loss %.4f, acc_ego %.3f, %.1f images/s, %.1f s%s",
                    split,
                    epoch + 1,
                    cfg.train.epochs,
                    stats["total"],
                    stats["acc_ego"],
                    stats["images_per_s"],
                    stats["epoch_time"],
                    "".join(f", {k} {record[f'eval_{k}']:.4f}" for k in ("KLD", "SIM", "NSS") if f"eval_{k}" in record),
                )
            barrier()

        # ========================================================================================== report
        report = None
        if main_proc:
            logger.info("==================== %s: report ====================", split)
            report = final_report(
                model,
                test_set,
                cfg,
                device,
                history,
                last_result,
                split_dir,
                epochs_done=max(start_epoch, cfg.train.epochs),
            )
            report["environment"] = environment_info(device, amp_dtype)
            write_json(split_dir / "metrics.json", report)
            last = report["model"]["last_epoch"]
            best = report["model"]["best_epoch_test_selected"]
            logger.info(
                "%s result (last epoch %d): KLD %.4f, SIM %.4f, NSS %.4f | test-selected best epoch %d: KLD %.4f",
                split,
                last["epoch"],
                last["KLD"],
                last["SIM"],
                last["NSS"],
                best["epoch"],
                best["KLD"],
            )
        barrier()
    finally:
        if writer is not None:
            writer.close()
    return report


def cached_train_set(model: Any, train_set: Any, cfg: Any, split: str, dist: Any, device: Any, amp_dtype: Any) -> Any:
    """``train_set`` served from the feature cache of its views: rank 0 builds (or reuses) the cache, the other
    ranks wait for it and open it."""
    from datasets.agd20k.cached import CachedTrainSet
    from datasets.feature_store import FeatureStore
    from datasets.loader import resolve_num_workers
    from utils.engine.distributed import barrier, broadcast_object
    from utils.engine.feature_cache import prepare_feature_cache

    folder = None
    if dist.is_main:
        store = prepare_feature_cache(
            model,
            train_set,
            cfg.train.cache_dir,
            device,
            dtype=cfg.train.cache_dtype,
            amp_dtype=amp_dtype,
            batch_size=cfg.eval.batch_size,
            num_workers=resolve_num_workers(cfg.data.num_workers),
            progress=sys.stderr.isatty(),
        )
        folder = str(store.folder)
    folder = broadcast_object(folder)
    barrier()
    return CachedTrainSet.from_config(cfg, split, class_names=train_set.class_names, store=FeatureStore(folder))
