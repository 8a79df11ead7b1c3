"""The evaluation loop (utils.evaluation.evaluate) and its aggregation (utils.evaluation.scores): the batched loop,
errors, pictures, the table."""

from __future__ import annotations

import json
import logging

import cv2
import pytest
import torch
from torch.utils.data import Dataset

from utils.evaluation.evaluate import EvalResult, evaluate
from utils.evaluation.metrics import compute_metrics, prepare_prediction
from utils.evaluation.pictures import write_pictures
from utils.evaluation.scores import Evaluator, format_table


class TinyTestSet(Dataset):
    """Items shaped like AGD20KTest's: 3 affordances x 2 objects, 16x16 images, 8x8 GT; item 4 has an all-zero GT."""

    def __init__(self, n: int = 10, size: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 16, 16, generator=g)
        self.gts = torch.rand(n, size, size, generator=g) * (torch.rand(n, size, size, generator=g) > 0.5)
        self.gts[4] = 0
        self.affs = [["cut", "hold", "pour"][i % 3] for i in range(n)]
        self.objs = [["knife", "cup"][i % 2] for i in range(n)]

    def __len__(self) -> int:
        return len(self.gts)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.images[i],
            "gt": self.gts[i],
            "label": i % 3,
            "affordance": self.affs[i],
            "object": self.objs[i],
            "path": f"img_{i}.jpg",
        }


def test_evaluator_aggregates_per_class_and_counts_zero_gt() -> None:
    ev = Evaluator()
    ev.add([1.0, 2.0, 3.0], [0.1, 0.2, 0.3], [1.0, 0.0, 2.0], ["cut", "cut", "hold"], ["knife", "axe", "knife"])
    ev.add(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), ["hold"], ["cup"], ["z.jpg"], [7], [True])
    s = ev.summary()
    assert s["num_images"] == 4 and len(ev) == 4
    # plain means over the 4 images: KLD (1 + 2 + 3 + 0) / 4 = 1.5, SIM .6 / 4 = .15, NSS 3 / 4 = .75
    assert s["KLD"] == pytest.approx(1.5) and s["SIM"] == pytest.approx(0.15) and s["NSS"] == pytest.approx(0.75)
    assert s["per_affordance"]["cut"] == pytest.approx({"KLD": 1.5, "SIM": 0.15, "NSS": 0.5, "count": 2})
    assert s["per_affordance"]["hold"] == pytest.approx({"KLD": 1.5, "SIM": 0.15, "NSS": 1.0, "count": 2})
    assert s["per_object"]["knife"] == pytest.approx({"KLD": 2.0, "SIM": 0.2, "NSS": 1.5, "count": 2})
    assert list(s["per_object"]) == ["axe", "cup", "knife"]  # sorted
    assert s["zero_gt"] == 1 and s["zero_gt_paths"] == ["z.jpg"]
    assert [r.index for r in ev.records] == [0, 1, 2, 7]
    assert json.loads(json.dumps(s)) == s  # JSON-serialisable as is


def test_evaluator_errors() -> None:
    ev = Evaluator()
    with pytest.raises(ValueError, match="one entry per image"):
        ev.add([1.0, 2.0], [0.1, 0.2], [0.0, 0.0], ["cut"], ["knife", "cup"])
    with pytest.raises(ValueError, match="non-finite"):
        ev.add([float("nan")], [0.1], [0.0], ["cut"], ["knife"], ["bad.jpg"])
    assert ev.summary()["KLD"] is None  # empty: no mean


@pytest.fixture
def two_threads():
    """Two intra-op threads for one test (the suite runs with one, see conftest), so that a change shows."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_evaluate_scores_every_image_in_order(two_threads) -> None:
    data = TinyTestSet()
    threads = torch.get_num_threads()
    assert threads == 2
    # Predict the GT itself at half resolution: the loop must upsample, normalise and score it.
    result = evaluate(
        lambda b: b["gt"][:, ::2, ::2] + 0.5 * b["label"][:, None, None], data, batch_size=4, progress=False
    )
    assert isinstance(result, EvalResult)
    assert [r.index for r in result.records] == list(range(10))
    assert [r.path for r in result.records] == [f"img_{i}.jpg" for i in range(10)]
    expected = compute_metrics(prepare_prediction(data.gts[:, ::2, ::2], 8), data.gts)
    assert torch.allclose(torch.tensor([r.kld for r in result.records], dtype=torch.float64), expected["kld"])
    assert torch.allclose(torch.tensor([r.nss for r in result.records], dtype=torch.float64), expected["nss"])
    s = result.summary
    assert s["num_images"] == 10 and s["zero_gt"] == 1 and s["zero_gt_paths"] == ["img_4.jpg"]
    assert s["KLD"] == pytest.approx(expected["kld"].mean().item())
    assert {k: v["count"] for k, v in s["per_affordance"].items()} == {"cut": 4, "hold": 3, "pour": 3}
    assert result.records[4].kld == 0.0 and result.records[4].zero_gt
    assert result.maps.shape == (10, 112, 112) and result.maps.dtype == torch.uint8
    assert result.eval_size == (8, 8) and result.metric_seconds > 0 and result.model_seconds >= 0
    assert result.timing().keys() == {"model", "metrics", "total"}
    assert torch.get_num_threads() == threads  # the metrics' single thread is restored afterwards


def test_evaluate_perfect_prediction() -> None:
    data = TinyTestSet()
    data.gts[4] = torch.rand(8, 8)  # no zero GT here
    data.gts = torch.nn.functional.pad(data.gts[:, 1:-1, 1:-1], (1, 1, 1, 1))  # border 0 -> min 0
    data.gts = data.gts / data.gts.flatten(1).amax(1)[:, None, None]  # max 1: min-max leaves it unchanged
    s = evaluate(lambda b: b["gt"], data, batch_size=3, progress=False, amp="bf16").summary
    assert s["SIM"] == pytest.approx(1.0, abs=1e-6) and s["KLD"] == pytest.approx(0.0, abs=1e-5)


def test_evaluate_rejects_bad_predictions() -> None:
    data = TinyTestSet()
    with pytest.raises(ValueError, match=r"\(B, h, w\) maps with B = 4"):
        evaluate(lambda b: torch.rand(4, 3, 8, 8), data, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"NaN/inf maps for \['img_0.jpg'"):
        evaluate(lambda b: torch.full((len(b["gt"]), 4, 4), float("nan")), data, progress=False)
    with pytest.raises(TypeError, match="tensor"):
        evaluate(lambda b: [0.0], data, progress=False)


class FlaggedTestSet(TinyTestSet):
    """TinyTestSet whose items 2 and 7 failed to decode (as AGD20KTest flags them) and one file left out at build."""

    def __init__(self) -> None:
        super().__init__()
        self.unreadable = ["gone.jpg: truncated JPEG (no end-of-image marker)"]

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        bad = i in (2, 7)
        if bad:
            item.update(image=torch.zeros(3, 16, 16), gt=torch.zeros(8, 8))
        return {**item, "readable": not bad, "problem": "Could not decode it" if bad else ""}


def test_unreadable_items_are_left_out_counted_and_listed(caplog) -> None:
    data = FlaggedTestSet()
    with caplog.at_level(logging.WARNING, logger="utils.evaluation"):
        result = evaluate(lambda b: b["gt"], data, batch_size=3, progress=False)
    kept = [i for i in range(10) if i not in (2, 7)]
    assert [r.index for r in result.records] == kept and result.maps.shape[0] == 8
    s = result.summary
    assert s["num_images"] == 8 and sum(d["count"] for d in s["per_affordance"].values()) == 8
    assert s["unreadable"] == [
        "gone.jpg: truncated JPEG (no end-of-image marker)",
        "img_2.jpg: Could not decode it",
        "img_7.jpg: Could not decode it",
    ]
    plain = evaluate(lambda b: b["gt"], torch.utils.data.Subset(TinyTestSet(), kept), progress=False)
    assert s["KLD"] == pytest.approx(plain.summary["KLD"]) and plain.summary["unreadable"] == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "3 unreadable test image(s)" in warnings[0] and "img_7.jpg" in warnings[0]
    assert "3 unreadable test image(s) left out of the means" in format_table(s)
    # NaN maps of unreadable items are never scored, so they are no error
    nan_for_bad = evaluate(lambda b: b["gt"] / b["readable"][:, None, None].float(), data, progress=False)
    assert nan_for_bad.summary["num_images"] == 8
    only_bad = torch.utils.data.Subset(data, [2, 7])
    with pytest.raises(ValueError, match="no test image could be read"):
        evaluate(lambda b: b["gt"], only_bad, progress=False)


def test_format_table() -> None:
    data = TinyTestSet()
    result = evaluate(lambda b: b["gt"] + 0.1, data, progress=False, keep_size=None)
    table = format_table(result.summary, per_object=True, title="tiny")
    lines = table.splitlines()
    assert lines[0] == "tiny" and "KLD" in lines[1] and "SIM" in lines[1] and "NSS" in lines[1]
    overall = next(line for line in lines if line.startswith("overall"))
    assert f"{result.summary['KLD']:.4f}" in overall and overall.rstrip().endswith("10")
    assert any(line.startswith("hold") for line in lines) and any(line.startswith("knife") for line in lines)
    assert "all-zero GT" in table
    assert "knife" not in format_table(result.summary)  # per-object rows only when asked


def test_write_pictures(tmp_path) -> None:
    data = TinyTestSet()
    result = evaluate(lambda b: b["gt"][:, ::2, ::2], data, progress=False)
    paths = write_pictures(result, data, tmp_path / "pics", n=3, n_extremes=2, tile=48)
    names = sorted(p.name for p in paths)
    assert len(names) == 4 and "worst_best_kld.png" in names
    assert "triptych_00000_cut_knife.png" in names  # the first and last images are among the spread
    for p in paths:
        img = cv2.imread(str(p))
        assert img is not None and img.shape[0] > 48 and img.shape[1] >= 3 * 48
    without = evaluate(lambda b: b["gt"], data, progress=False, keep_size=None)
    with pytest.raises(ValueError, match="keep_size"):
        write_pictures(without, data, tmp_path / "none", n=1)


def test_benchmark_runs_on_agd20k_like_maps(capsys) -> None:
    from utils.tools.metrics_benchmark import _RandomTestSet, benchmark_metrics, main

    data = _RandomTestSet(6, 32)
    gt = data.gt
    assert gt.shape == (6, 32, 32) and torch.allclose(gt.flatten(1).amax(1), torch.ones(6))
    assert torch.equal(gt, torch.round(gt * 255) / 255)  # 8-bit levels
    result = benchmark_metrics(num_images=6, size=32, grid=4, batch_size=4)
    assert result.summary["num_images"] == 6 and result.metric_seconds > 0
    assert main(["--images", "4", "--size", "16", "--repeats", "1"]) == 0
    assert "metric time for 4 images at 16x16" in capsys.readouterr().out
