"""Train a weakly supervised affordance grounder (LOCATE / BiT-Align) on AGD20K or the offline synthetic world.

Usage::

    python train.py --config configs/locate_dino-vits16_agd20k-seen.yaml [section.key=value ...]
    python train.py --config configs/synthetic.yaml                 # the offline demo (generates its data)
    python train.py --config CFG --resume auto                      # continue the newest run of this name
    python train.py --resume runs/<name>-<time>/Seen/last.pth       # continue that run (its config.yaml)
    torchrun --nproc_per_node 2 train.py --config CFG               # several GPUs (or CPU processes, gloo)

Each split of ``data.splits`` trains its own fresh model on ``<Split>/trainset`` and is evaluated on
``<Split>/testset``. The run folder (``output.dir`` or ``runs/<output.name>-<YYYYmmdd-HHMMSS>/``) holds
``config.yaml``, ``train.log``, ``metrics.json`` (every split) and per split ``<Split>/``: ``log.jsonl`` (one line per
epoch), ``last.pth``, ``best.pth``, TensorBoard events, ``pictures/`` and ``metrics.json``.

The reported result is the last epoch of the fixed schedule; the best epoch by test KLD is reported beside it,
labelled as selected on the test set (as the published numbers were).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "parse_args", "train_split"]

logger = logging.getLogger("train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; ``--help`` lists every configuration option."""
    from utils.config import config_help

    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train an affordance grounder. Options are set in a YAML file (--config) and/or as "
        "section.key=value overrides; every option is listed below.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="configuration options (section.key=value):\n" + config_help(),
    )
    parser.add_argument(
        "--config",
        default=None,
        help="YAML file holding what differs from the defaults (see configs/). With --resume PATH and no --config, "
        "the run's own config.yaml is used.",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="auto|PATH",
        help="Continue a run: 'auto' takes <run>/<Split>/last.pth of output.dir or of the newest runs/<name>-* "
        "folder; PATH a given checkpoint. Finished splits are skipped.",
    )
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="Overrides, e.g. train.lr=0.01.")
    return parser.parse_args(argv)


def _new_run_dir(cfg: Any, runs_root: Path = Path("runs")) -> Path:
    if cfg.output.dir:
        return Path(cfg.output.dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = runs_root / f"{cfg.output.name}-{stamp}"
    i = 1
    while run.exists():  # two runs started in the same second
        run = runs_root / f"{cfg.output.name}-{stamp}-{i}"
        i += 1
    return run


def _check_input_size(cfg: Any) -> None:
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


def _finished(split_dir: Path, epochs: int) -> bool:
    """True when ``split_dir`` holds the report of a run trained for at least ``epochs`` epochs."""
    path = split_dir / "metrics.json"
    if not path.is_file():
        return False
    try:
        done = json.loads(path.read_text())["model"]["last_epoch"]["epoch"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return False
    return int(done) >= epochs


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
    from models.grounder import build_model
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
    from utils.engine.runtime import environment_info, resolve_amp_dtype, seed_everything
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
    loader = build_train_loader(train_set, cfg, dist, device)
    logger.info(
        "%s: %d training samples (%d steps/epoch of %d), %d test images, %d classes",
        split,
        len(train_set),
        len(loader) if not cfg.train.max_steps_per_epoch else min(len(loader), cfg.train.max_steps_per_epoch),
        cfg.train.batch_size,
        len(test_set) if test_set is not None else 0,
        len(class_names),
    )

    # =============================================================================================== model
    logger.info("==================== %s: model ====================", split)
    seed_everything(cfg.seed)  # each split's model starts from the same seed whatever ran before it
    model = build_model(cfg, class_names).to(device)
    train_model = wrap_ddp(model, device)
    amp_dtype = resolve_amp_dtype(cfg.train.amp, device)
    logger.info("device %s, autocast %s", device, amp_dtype or "off (fp32)")

    # ================================================================================================ loss
    logger.info("==================== %s: loss ====================", split)
    logger.info(
        "L = CE_ego + CE_exo + %g proto (from epoch %d, margin %g) + %g conc%s%s%s; prototypes chosen by %s",
        cfg.loss.proto,
        cfg.loss.proto_warmup_epochs + 1,
        cfg.loss.proto_margin,
        cfg.loss.conc,
        f" + {cfg.loss.contra:g} contra" if cfg.model.text.encoder != "none" else "",
        f" + {cfg.loss.sep:g} sep" if cfg.loss.sep > 0 else "",
        f" + {cfg.loss.border:g} border" if cfg.loss.border > 0 else "",
        cfg.model.part_selection,
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


def _log_proof_targets(results: dict[str, Any]) -> None:
    """With the centre and object baselines evaluated (the synthetic world), say whether the proof's bars hold."""
    from utils.tools.compare_runs import failed_targets, rows_from_metrics

    for row in rows_from_metrics("", results):
        failed = failed_targets(row)
        if failed is None:
            continue
        logger.info(
            "%s offline-proof targets (README, Results): %s",
            row.split,
            "met" if not failed else "NOT met: " + "; ".join(failed),
        )


def main(argv: list[str] | None = None) -> int:
    """Train every split of the configuration; returns the process exit status (0)."""
    from utils.config import load_config, save_config
    from utils.engine.checkpoint import load_checkpoint, remove_stale_temp_files
    from utils.engine.distributed import barrier, broadcast_object, cleanup_distributed, init_distributed
    from utils.engine.logs import write_json
    from utils.engine.runs import resume_run_dir
    from utils.engine.runtime import seed_everything, setup_logging

    args = parse_args(argv)
    config_path = args.config
    if config_path is None and args.resume not in (None, "auto"):
        # a run folder remembers its configuration: `--resume PATH` alone continues it as it was
        run_cfg = Path(args.resume).resolve().parent.parent / "config.yaml"
        if run_cfg.is_file():
            config_path = str(run_cfg)
    cfg = load_config(config_path, args.overrides)
    _check_input_size(cfg)  # before any folder is made
    dist, device = init_distributed(cfg.device)
    try:
        # ============================================================================================ run
        run_dir = resume_run_dir(args.resume, cfg, cfg.data.splits) if dist.is_main else None
        if run_dir is None and dist.is_main:
            run_dir = _new_run_dir(cfg)
        run_dir = Path(broadcast_object(str(run_dir)))
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
        setup_logging(run_dir, rank=dist.rank)
        logger.info("run folder %s (%d process%s, device %s)", run_dir, dist.world_size, "es" * dist.enabled, device)
        seed_everything(cfg.seed)

        if cfg.data.synthetic.enabled:
            s = cfg.data.synthetic
            if dist.is_main:
                from datasets.synthetic import ensure_world

                ensure_world(
                    cfg.data.root,
                    seed=s.seed,
                    image_size=s.image_size,
                    exo_per_folder=s.exo_per_folder,
                    ego_per_folder=s.ego_per_folder,
                    test_per_folder=s.test_per_folder,
                    progress=sys.stderr.isatty(),
                )
            barrier()

        from datasets.agd20k import load_class_names

        for split in cfg.data.splits:
            load_class_names(cfg.data.root, split)  # every split's folder and class list, before training any

        given = Path(args.resume) if args.resume not in (None, "auto") else None
        # the split a given checkpoint continues is the one it was trained on (whatever folder it now lies in)
        given_split = load_checkpoint(given).get("split") if given is not None else None
        metrics_path = run_dir / "metrics.json"
        results: dict[str, Any] = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        for split in cfg.data.splits:
            split_dir = run_dir / split
            if args.resume is not None and _finished(split_dir, cfg.train.epochs):
                logger.info("%s already finished (%s): skipped", split, split_dir / "metrics.json")
                results[split] = json.loads((split_dir / "metrics.json").read_text())
                continue
            resume = None
            if args.resume is not None:
                if dist.is_main:
                    remove_stale_temp_files(split_dir)  # writes a kill interrupted: never read, now deleted
                if given is not None and given_split == split:
                    resume = given
                elif (split_dir / "last.pth").is_file():
                    resume = split_dir / "last.pth"
                    load_checkpoint(resume)  # fail early, naming the file, if it is damaged
            elif dist.is_main and (split_dir / "last.pth").is_file():
                logger.warning(
                    "%s already holds a checkpoint: starting afresh overwrites it (pass --resume auto to continue it)",
                    split_dir,
                )
            report = train_split(cfg, split, split_dir, dist, device, resume=resume)
            if dist.is_main and report is not None:
                results[split] = report
                write_json(metrics_path, results)
        if dist.is_main:
            logger.info("metrics: %s", metrics_path)
            _log_proof_targets(results)
            for split in cfg.data.splits:
                logger.info(
                    "%s pictures: %s (TensorBoard: tensorboard --logdir %s)",
                    split,
                    run_dir / split / "pictures",
                    run_dir,
                )
        barrier()
    finally:
        cleanup_distributed()
    return 0


if __name__ == "__main__":
    from utils.config import ConfigError
    from utils.engine.checkpoint import CheckpointError, CheckpointMismatchError
    from utils.engine.trainer import NonFiniteLossError

    try:
        sys.exit(main())
    except (ConfigError, CheckpointError, CheckpointMismatchError, NonFiniteLossError, FileNotFoundError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        sys.exit(1)
