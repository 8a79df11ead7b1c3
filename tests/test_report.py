"""The run-comparison report: table rows, target checks on hand-made numbers, spread, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from utils.tools.compare_runs import check_targets, failed_targets, load_rows, main, markdown_table, spread


def _split(kld: float, sim: float, best_kld: float, center=(2.0, 0.2), obj=(1.2, 0.4)) -> dict:
    return {
        "model": {
            "last_epoch": {"epoch": 10, "KLD": kld, "SIM": sim, "NSS": 1.0},
            "best_epoch_test_selected": {"epoch": 8, "KLD": best_kld, "SIM": sim, "NSS": 1.0, "note": "test"},
        },
        "baselines": {
            "center": {"KLD": center[0], "SIM": center[1], "NSS": 0.5, "num_images": 4},
            "object": {"KLD": obj[0], "SIM": obj[1], "NSS": 1.5, "num_images": 4},
        },
    }


def _run(tmp_path: Path, name: str, **splits: dict) -> Path:
    run = tmp_path / name
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps(splits))
    return run


def test_targets_hold_exactly_at_the_bars(tmp_path: Path) -> None:
    # Seen: 40 % below the centre prior 2.0 is 1.2; the object mask is at 1.25, SIM must beat 0.4.
    good = _run(tmp_path, "good", Seen=_split(1.2, 0.41, 1.1, obj=(1.25, 0.4)), Unseen=_split(1.5, 0.3, 1.4))
    rows = load_rows([good])
    assert [r.split for r in rows] == ["Seen", "Unseen"]
    assert all(check_targets(rows[0]).values())
    # Unseen: 25 % below 2.0 is 1.5, and 1.5 < object 1.2 fails
    unseen = check_targets(rows[1])
    assert unseen == {"KLD >= 25% below centre": True, "KLD below object": False}
    assert failed_targets(rows[0]) == [] and failed_targets(rows[1]) == ["KLD below object"]
    rows[1].split = "Val"  # a split without targets
    assert failed_targets(rows[1]) is None


def test_each_seen_bar_can_fail_on_its_own(tmp_path: Path) -> None:
    run = _run(
        tmp_path,
        "r",
        Seen=_split(1.21, 0.5, 1.0, obj=(1.3, 0.4)),  # 39.5 % below the centre: fails only the first bar
    )
    assert check_targets(load_rows([run])[0]) == {
        "KLD >= 40% below centre": False,
        "KLD below object": True,
        "SIM above centre and object": True,
    }
    run2 = _run(tmp_path, "r2", Seen=_split(1.0, 0.39, 1.0, obj=(1.3, 0.4)))
    assert check_targets(load_rows([run2])[0])["SIM above centre and object"] is False


def test_table_lists_model_baselines_best_epoch_and_verdict(tmp_path: Path) -> None:
    run = _run(tmp_path, "synthetic", Seen=_split(1.0, 0.5, 0.9))
    table = markdown_table(load_rows([run]))
    lines = table.splitlines()
    assert len(lines) == 3
    assert "| synthetic | Seen | 1.000 | 0.500 | 1.000 | +50 % | 2.000 / 0.200 | 1.200 / 0.400 |" in lines[2]
    assert "0.900 (epoch 8)" in lines[2] and lines[2].endswith("| met |")
    assert "targets" not in markdown_table(load_rows([run]), targets=False)


def test_split_filter_and_spread_over_seeds(tmp_path: Path) -> None:
    runs = [_run(tmp_path, f"s{i}", Seen=_split(k, 0.4, k), Unseen=_split(2.0, 0.2, 2.0)) for i, k in enumerate([1, 2])]
    rows = load_rows(runs, splits=["Seen"])
    assert {r.split for r in rows} == {"Seen"}
    s = spread(rows)["Seen"]
    assert s["kld_mean"] == pytest.approx(1.5) and s["kld_std"] == pytest.approx(0.5)
    assert (s["kld_min"], s["kld_max"]) == (1, 2)


def test_cli_strict_exit_codes_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok = _run(tmp_path, "ok", Seen=_split(1.0, 0.5, 1.0))
    bad = _run(tmp_path, "bad", Seen=_split(1.9, 0.3, 1.9))
    assert main([str(ok), "--strict"]) == 0
    assert main([str(ok), str(bad), "--strict"]) == 1
    assert "over 2 runs" in capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.json").write_text("{}")
    assert main([str(tmp_path / "empty")]) == 2
    assert "no split report" in capsys.readouterr().err


def test_the_report_says_what_each_run_was_measured_with(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"precision": "fp32", "device": "cpu", "device_name": "AMD EPYC", "cpu_capability": "AVX2", "torch": "2.14.1"}
    a = _run(tmp_path, "a", Seen={**_split(1.0, 0.5, 1.0), "environment": env})
    b = _run(tmp_path, "b", Seen={**_split(1.1, 0.5, 1.1), "environment": env})
    assert main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "measured with fp32 on cpu (AMD EPYC, AVX2 kernels), torch 2.14.1" in out and ": a, b" in out
    assert "not strictly comparable" not in out
    c = _run(tmp_path, "c", Seen={**_split(1.0, 0.5, 1.0), "environment": {**env, "precision": "bf16"}})
    old = _run(tmp_path, "old", Seen=_split(1.0, 0.5, 1.0))  # written before runs recorded their environment
    assert main([str(a), str(c), str(old)]) == 0
    out = capsys.readouterr().out
    assert "measured with bf16 on cpu" in out and "unknown (a run from before" in out
    assert "not strictly comparable" in out


def _config_run(tmp_path: Path, name: str, world: int, seed: int, kld: float, obj: float = 1.2) -> Path:
    run = _run(tmp_path, name, Seen=_split(kld, 0.5, kld, center=(2.5, 0.2), obj=(obj, 0.4)))
    cfg = {"data": {"root": f"data/w{world}", "synthetic": {"seed": world}}, "seed": seed, "output": {"dir": name}}
    (run / "config.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    return run


def test_over_seeds_groups_by_configuration_and_judges_the_means(tmp_path: Path) -> None:
    from utils.tools.compare_runs import group_over_seeds, group_table

    runs = [
        _config_run(tmp_path, "w0_t0", 0, 0, 1.0),
        _config_run(tmp_path, "w1_t0", 1, 0, 1.1),
        _config_run(tmp_path, "w0_t1", 0, 1, 1.3),  # the mean of world 0, 1.15, is below the object mask's 1.2
        _config_run(tmp_path, "w1_t1", 1, 1, 1.4),  # the mean of world 1, 1.25, is not
    ]
    groups = group_over_seeds(load_rows(runs))
    assert [(g.label, g.seeds, [r.run for r in g.rows]) for g in groups] == [
        ("data.root=data/w0, data.synthetic.seed=0", [0, 1], ["w0_t0", "w0_t1"]),
        ("data.root=data/w1, data.synthetic.seed=1", [0, 1], ["w1_t0", "w1_t1"]),
    ]
    means = [g.mean_row() for g in groups]
    assert [m.kld for m in means] == pytest.approx([1.15, 1.25])
    assert failed_targets(means[0]) == [] and failed_targets(means[1]) == ["KLD below object"]
    table = group_table(groups).splitlines()
    assert "| 0, 1 | 1.150 ± 0.150 (1.000 to 1.300) | 0.500 | +54 % |" in table[2]
    assert table[2].endswith("| 1 of 2 | met |") and table[3].endswith("| 1 of 2 | not met: KLD below object |")
    # one configuration: labelled by its first run
    assert [g.label for g in group_over_seeds(load_rows(runs[::2]))] == ["w0_t0"]


def test_over_seeds_cli_exit_code_follows_the_means(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _config_run(tmp_path, "a", 0, 0, 1.25)  # misses the object mask (1.2) on its own
    b = _config_run(tmp_path, "b", 0, 1, 1.05)  # the mean, 1.15, meets it
    assert main([str(a), str(b), "--strict"]) == 1
    assert main([str(a), str(b), "--strict", "--over-seeds"]) == 0
    assert "Mean over training seeds" in capsys.readouterr().out
    (a / "config.yaml").unlink()
    assert main([str(a), str(b), "--over-seeds"]) == 2
    assert "config.yaml does not exist" in capsys.readouterr().err
