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
from pathlib import Path
from typing import Any

__all__ = ["main", "parse_args"]

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


def _log_proof_targets(results: dict[str, Any]) -> None:
    """With the centre and object baselines evaluated (the synthetic world), say whether the proof's bars hold."""
    from utils.tools.compare_runs import failed_targets, rows_from_metrics

    for row in rows_from_metrics("", results):
        failed = failed_targets(row)
        if failed is None:
            continue
        logger.info(
            "%s offline-proof targets (docs/offline_proof.md): %s",
            row.split,
            "met" if not failed else "NOT met: " + "; ".join(failed),
        )


def main(argv: list[str] | None = None) -> int:
    """Train every split of the configuration; returns the process exit status (0)."""
    from utils.config import load_config, save_config
    from utils.engine.atomic_files import remove_stale_temp_files
    from utils.engine.checkpoint import load_checkpoint
    from utils.engine.distributed import barrier, broadcast_object, cleanup_distributed, init_distributed
    from utils.engine.fit import check_input_size, train_split
    from utils.engine.logs import write_json
    from utils.engine.runs import new_run_dir, resume_run_dir, split_finished
    from utils.engine.runtime import seed_everything, setup_logging

    args = parse_args(argv)
    config_path = args.config
    if config_path is None and args.resume not in (None, "auto"):
        # a run folder remembers its configuration: `--resume PATH` alone continues it as it was
        run_cfg = Path(args.resume).resolve().parent.parent / "config.yaml"
        if run_cfg.is_file():
            config_path = str(run_cfg)
    cfg = load_config(config_path, args.overrides)
    check_input_size(cfg)  # before any folder is made
    dist, device = init_distributed(cfg.device)
    try:
        # ============================================================================================ run
        run_dir = resume_run_dir(args.resume, cfg, cfg.data.splits) if dist.is_main else None
        if run_dir is None and dist.is_main:
            run_dir = new_run_dir(cfg)
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
            if args.resume is not None and split_finished(split_dir, cfg.train.epochs):
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
    from datasets.synthetic import WorldFolderError
    from utils.config import ConfigError
    from utils.engine.checkpoint import CheckpointError, CheckpointMismatchError
    from utils.engine.trainer import NonFiniteLossError

    expected = (ConfigError, CheckpointError, CheckpointMismatchError, NonFiniteLossError, FileNotFoundError)
    try:
        sys.exit(main())
    except (*expected, WorldFolderError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        sys.exit(1)
