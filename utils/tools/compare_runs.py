"""Compare finished runs: one Markdown table of last-epoch results against the baselines, and the proof's targets.

    python -m utils.tools.compare_runs runs/synthetic-seed0 runs/synthetic-seed1 runs/synthetic-seed2
    python -m utils.tools.compare_runs --split Seen --no-targets runs/synthetic runs/no-proto  # ablation table
    python -m utils.tools.compare_runs --over-seeds runs/proof/*   # per configuration: the mean over training seeds

Each argument is a run folder written by ``train.py`` (it reads ``<run>/metrics.json``). A row is one (run, split):
the honest last-epoch KLD / SIM / NSS, the test-selected best epoch's KLD (labelled), and the centre-prior and
object-mask baselines that the same run evaluated. With targets on (the default), each row also says whether the
offline proof's bars (docs/offline_proof.md) hold for it:

- Seen: KLD at least 40 % below the centre prior, KLD below the object mask, SIM above both;
- Unseen: KLD at least 25 % below the centre prior, KLD below the object mask.

With ``--over-seeds``, runs whose saved configurations (``<run>/config.yaml``) differ only in the training seed
(``seed``) and the output folder (``output.*``) form one group, and a second table gives each group's mean over its
runs, checks the bars on the means, and counts the runs that beat the object mask on their own. On the synthetic
world, runs of the same recipe differ by up to 0.06 (Seen) and 0.21 (Unseen) KLD with the training seed alone
(docs/offline_proof.md), so a change is judged on these means, not on one run.

Nothing here trains or evaluates; it only reads JSON and YAML, so it is safe to run on any machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "TARGETS",
    "Group",
    "Row",
    "check_targets",
    "describe_device",
    "describe_environment",
    "failed_targets",
    "group_over_seeds",
    "group_table",
    "load_rows",
    "main",
    "markdown_table",
    "rows_from_metrics",
    "spread",
]

#: Minimum relative KLD reduction against the centre prior, per split (the offline proof's bars).
TARGETS: dict[str, float] = {"Seen": 0.40, "Unseen": 0.25}


@dataclass
class Row:
    """One split of one run."""

    run: str
    split: str
    kld: float
    sim: float
    nss: float
    epoch: int
    best_kld: float
    best_epoch: int
    baselines: dict[str, dict[str, float]]
    environment: dict[str, str | int] = field(default_factory=dict)
    folder: str = ""  #: the run folder as given (``run`` is its name)

    def baseline(self, name: str, metric: str) -> float | None:
        entry = self.baselines.get(name)
        return None if entry is None else float(entry[metric])


def rows_from_metrics(run: str, data: dict, splits: Sequence[str] | None = None) -> list[Row]:
    """Rows of the split reports in one run's metrics (the content of ``metrics.json``), in their order."""
    rows = []
    for split, report in data.items():
        if not isinstance(report, dict) or "model" not in report or (splits and split not in splits):
            continue
        last = report["model"]["last_epoch"]
        best = report["model"]["best_epoch_test_selected"]
        rows.append(
            Row(
                run=run,
                split=split,
                kld=float(last["KLD"]),
                sim=float(last["SIM"]),
                nss=float(last["NSS"]),
                epoch=int(last["epoch"]),
                best_kld=float(best["KLD"]),
                best_epoch=int(best["epoch"]),
                baselines=report.get("baselines", {}),
                environment=report.get("environment", {}),
            )
        )
    return rows


def load_rows(run_dirs: Sequence[str | Path], splits: Sequence[str] | None = None) -> list[Row]:
    """Rows of every split found in each run's ``metrics.json`` (restricted to ``splits`` when given).

    Raises:
        FileNotFoundError: a run folder has no ``metrics.json`` (the run did not finish).
        ValueError: the file is not a train.py report.
    """
    rows = []
    for run in run_dirs:
        path = Path(run) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: expected the metrics.json that train.py writes when a run finishes. "
                "Pass a finished run folder (runs/<name>-<time>/), or finish the run with --resume auto."
            )
        found = rows_from_metrics(Path(run).name, json.loads(path.read_text()), splits)
        if not found:
            raise ValueError(f"{path} holds no split report{' for ' + ', '.join(splits) if splits else ''}")
        for r in found:
            r.folder = str(run)
        rows += found
    return rows


def check_targets(row: Row) -> dict[str, bool] | None:
    """The proof's bars for this row, or None when its split has no target or a needed baseline is missing."""
    need = TARGETS.get(row.split)
    center_kld, object_kld = row.baseline("center", "KLD"), row.baseline("object", "KLD")
    if need is None or center_kld is None or object_kld is None:
        return None
    checks = {
        f"KLD >= {need:.0%} below centre": row.kld <= (1.0 - need) * center_kld,
        "KLD below object": row.kld < object_kld,
    }
    if row.split == "Seen":
        checks["SIM above centre and object"] = row.sim > max(
            row.baseline("center", "SIM") or 0.0, row.baseline("object", "SIM") or 0.0
        )
    return checks


def failed_targets(row: Row) -> list[str] | None:
    """The names of the proof's bars this row misses (empty when all hold), or None when it has no target."""
    checks = check_targets(row)
    return None if checks is None else [name for name, ok in checks.items() if not ok]


def _reduction(row: Row) -> str:
    center = row.baseline("center", "KLD")
    return "" if center is None else f"{100.0 * (1.0 - row.kld / center):+.0f} %"


def _baseline_pair(row: Row, name: str) -> str:
    """A baseline's "KLD / SIM" cell, or "n/a" when the run did not evaluate it."""
    k, s = row.baseline(name, "KLD"), row.baseline(name, "SIM")
    return "n/a" if k is None else f"{k:.3f} / {s:.3f}"


def _verdict(row: Row) -> str:
    failed = failed_targets(row)
    return "n/a" if failed is None else "met" if not failed else "not met: " + "; ".join(failed)


def _markdown(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row], targets: bool = True) -> str:
    """A Markdown table, one line per row, baselines beside the model."""
    head = [
        "run",
        "split",
        "KLD ↓",
        "SIM ↑",
        "NSS ↑",
        "KLD vs centre",
        "centre KLD / SIM",
        "object KLD / SIM",
        "best epoch (test-selected) KLD",
    ]
    if targets:
        head.append("targets")
    body = []
    for r in rows:
        cells = [
            r.run,
            r.split,
            f"{r.kld:.3f}",
            f"{r.sim:.3f}",
            f"{r.nss:.3f}",
            _reduction(r),
            _baseline_pair(r, "center"),
            _baseline_pair(r, "object"),
            f"{r.best_kld:.3f} (epoch {r.best_epoch})",
        ]
        body.append([*cells, _verdict(r)] if targets else cells)
    return _markdown(head, body)


def describe_device(env: dict[str, str | int]) -> str:
    """The device of an environment record (``environment_info``), e.g. "cpu (AMD EPYC, AVX2 kernels)"."""
    return f"{env.get('device')} ({env.get('device_name')}, {env.get('cpu_capability')} kernels)"


def describe_environment(env: dict[str, str | int]) -> str:
    """One line of what a row's numbers were measured with (``metrics.json``'s ``environment``), or "unknown"."""
    if not env:
        return "unknown (a run from before metrics.json recorded it)"
    return f"{env.get('precision')} on {describe_device(env)}, torch {env.get('torch')}, timm {env.get('timm')}"


def spread(rows: Sequence[Row]) -> dict[str, dict[str, float]]:
    """Per split: mean, population std, min and max of the last-epoch KLD and SIM over the rows (e.g. seeds)."""
    out: dict[str, dict[str, float]] = {}
    for split in sorted({r.split for r in rows}):
        sel = [r for r in rows if r.split == split]
        for metric in ("kld", "sim"):
            values = [getattr(r, metric) for r in sel]
            out.setdefault(split, {}).update(
                {
                    f"{metric}_mean": statistics.fmean(values),
                    f"{metric}_std": statistics.pstdev(values),
                    f"{metric}_min": min(values),
                    f"{metric}_max": max(values),
                }
            )
    return out


#: Configuration keys that do not define a group: the training seed and where the run was written.
_SEED_KEYS = ("seed",)
_IGNORED_PREFIXES = ("output.",)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _run_config(folder: str) -> dict[str, Any]:
    path = Path(folder) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: --over-seeds groups runs by the configuration train.py saves beside "
            "metrics.json. Pass run folders written by train.py, or leave out --over-seeds."
        )
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} is not a configuration (expected a mapping, found {type(data).__name__})")
    return _flatten(data)


@dataclass
class Group:
    """The runs of one configuration that differ only in the training seed, for one split."""

    label: str
    split: str
    rows: list[Row]
    seeds: list[Any]

    def mean_row(self) -> Row:
        """A row of the means over the group's runs (baselines too), for :func:`check_targets`."""
        names = sorted({name for r in self.rows for name in r.baselines})
        baselines = {}
        for name in names:
            have = [r.baselines[name] for r in self.rows if name in r.baselines]
            baselines[name] = {m: statistics.fmean(float(b[m]) for b in have) for m in ("KLD", "SIM", "NSS")}
        return Row(
            run=self.label,
            split=self.split,
            kld=statistics.fmean(r.kld for r in self.rows),
            sim=statistics.fmean(r.sim for r in self.rows),
            nss=statistics.fmean(r.nss for r in self.rows),
            epoch=self.rows[0].epoch,
            best_kld=statistics.fmean(r.best_kld for r in self.rows),
            best_epoch=self.rows[0].best_epoch,
            baselines=baselines,
        )


def group_over_seeds(rows: Sequence[Row]) -> list[Group]:
    """Group rows by their run's configuration without ``seed`` and ``output.*``, in order of first appearance.

    A group is labelled by the settings that tell it from the other groups (``data.synthetic.seed=1``), or by its
    first run's name when they all share one configuration.

    Raises:
        FileNotFoundError: a run folder has no ``config.yaml``.
    """
    folders = [r.folder or r.run for r in rows]
    configs = {folder: _run_config(folder) for folder in dict.fromkeys(folders)}
    keys = {
        folder: tuple(
            sorted(
                (k, json.dumps(v, sort_keys=True))
                for k, v in cfg.items()
                if k not in _SEED_KEYS and not k.startswith(_IGNORED_PREFIXES)
            )
        )
        for folder, cfg in configs.items()
    }
    distinct = [dict(key) for key in dict.fromkeys(keys.values())]
    varying = sorted({k for d in distinct for k in d if len({e.get(k) for e in distinct}) > 1})
    groups: dict[tuple[tuple[tuple[str, str], ...], str], Group] = {}
    for r, folder in zip(rows, folders, strict=True):
        key, cfg = keys[folder], configs[folder]
        if (key, r.split) not in groups:
            label = ", ".join(f"{k}={cfg.get(k)}" for k in varying) or r.run
            groups[(key, r.split)] = Group(label=label, split=r.split, rows=[], seeds=[])
        g = groups[(key, r.split)]
        g.rows.append(r)
        g.seeds.append(cfg.get("seed"))
    return list(groups.values())


def group_table(groups: Sequence[Group], targets: bool = True) -> str:
    """A Markdown table, one line per group: means over the training seeds, their spread, and the bars on the means."""
    head = [
        "configuration",
        "split",
        "training seeds",
        "KLD ↓ mean ± std (min to max)",
        "SIM ↑ mean",
        "KLD vs centre",
        "centre KLD / SIM",
        "object KLD / SIM",
        "runs below object KLD",
    ]
    if targets:
        head.append("targets on the means")
    body = []
    for g in groups:
        m = g.mean_row()
        klds = [r.kld for r in g.rows]
        obj = [(r.kld, r.baseline("object", "KLD")) for r in g.rows]
        beaten = "n/a" if any(o is None for _, o in obj) else f"{sum(k < o for k, o in obj)} of {len(obj)}"
        cells = [
            g.label,
            g.split,
            ", ".join(str(s) for s in g.seeds),
            f"{m.kld:.3f} ± {statistics.pstdev(klds):.3f} ({min(klds):.3f} to {max(klds):.3f})",
            f"{m.sim:.3f}",
            _reduction(m),
            _baseline_pair(m, "center"),
            _baseline_pair(m, "object"),
            beaten,
        ]
        body.append([*cells, _verdict(m)] if targets else cells)
    return _markdown(head, body)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table (and the spread over several runs); exit 0, or 1 with --strict when a target fails."""
    p = argparse.ArgumentParser(prog="python -m utils.tools.compare_runs", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="finished run folders (each holds metrics.json)")
    p.add_argument("--split", action="append", help="only this split (repeat for several); default: all")
    p.add_argument("--no-targets", action="store_true", help="leave out the proof's target column")
    p.add_argument("--strict", action="store_true", help="exit 1 when any row misses a target")
    p.add_argument(
        "--over-seeds",
        action="store_true",
        help="also print one line per configuration: the mean over runs that differ only in the training seed, "
        "with the targets checked on the means (with --strict, the means decide the exit code)",
    )
    args = p.parse_args(argv)
    try:
        rows = load_rows(args.runs, args.split)
        groups = group_over_seeds(rows) if args.over_seeds else []
    except (FileNotFoundError, ValueError, yaml.YAMLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown_table(rows, targets=not args.no_targets))
    if groups:
        print("\nMean over training seeds (runs whose configurations differ only in seed and output.*):\n")
        print(group_table(groups, targets=not args.no_targets))
    if len(args.runs) > 1:
        for split, s in spread(rows).items():
            print(
                f"\n{split} over {sum(r.split == split for r in rows)} runs: KLD {s['kld_mean']:.3f} ± "
                f"{s['kld_std']:.3f} (min {s['kld_min']:.3f}, max {s['kld_max']:.3f}); SIM {s['sim_mean']:.3f} ± "
                f"{s['sim_std']:.3f}"
            )
    measured: dict[str, list[str]] = {}
    for r in rows:
        runs = measured.setdefault(describe_environment(r.environment), [])
        if r.run not in runs:
            runs.append(r.run)
    for line, runs in measured.items():
        print(f"\nmeasured with {line}: {', '.join(runs)}")
    if len(measured) > 1:
        print("note: these runs differ in precision, kernels or versions; their numbers are not strictly comparable")
    if args.strict and not args.no_targets:
        judged = [g.mean_row() for g in groups] if groups else rows
        if any(failed_targets(r) for r in judged):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
