"""Baselines (utils.evaluation.baselines): their maps, their errors and their scores through the evaluation path."""

from __future__ import annotations

import math

import pytest
import torch

from utils.evaluation.baselines import BASELINES, CenterBaseline, ObjectMaskBaseline, UniformBaseline, build_baseline
from utils.evaluation.metrics import prepare_prediction, sim


def batch_of(b: int, h: int, w: int, **extra: torch.Tensor) -> dict:
    return {"image": torch.zeros(b, 3, 2 * h, 2 * w), "gt": torch.zeros(b, h, w), **extra}


def test_center_gaussian_values() -> None:
    maps = CenterBaseline(sigma_frac=0.25)(batch_of(2, 9, 9))
    assert maps.shape == (2, 9, 9)
    # 9 pixels, centre at index 4, σ = .25 · 9 = 2.25 (2σ² = 10.125). At (4, 4): 1.
    # At (4, 6) (2 px right): exp(-4 / 10.125) = 0.67368;  at (0, 0): exp(-(16 + 16) / 10.125) = 0.04241.
    assert maps[0, 4, 4].item() == pytest.approx(1.0)
    assert maps[0, 4, 6].item() == pytest.approx(math.exp(-4 / 10.125), rel=1e-6)
    assert maps[1, 0, 0].item() == pytest.approx(math.exp(-32 / 10.125), rel=1e-6)
    assert torch.allclose(maps, maps.flip(-1)) and torch.allclose(maps, maps.flip(-2))  # centred
    # Sized from the GT, σ per axis from each side.
    rect = CenterBaseline()(batch_of(1, 4, 8))
    assert rect.shape == (1, 4, 8)
    with pytest.raises(ValueError, match="sigma_frac"):
        CenterBaseline(sigma_frac=0)


def test_uniform_is_scored_as_the_uniform_distribution() -> None:
    maps = UniformBaseline()(batch_of(3, 5, 5))
    assert maps.shape == (3, 5, 5) and bool((maps == maps[0, 0, 0]).all())
    pred = prepare_prediction(maps, 5)
    gt = torch.zeros(3, 5, 5)
    gt[:, 1:3, 1:3] = 1  # 4 cells of G' = 1/4; P' = 1/25 -> SIM = 4 · min(1/25, 1/4) = 4/25
    assert torch.allclose(sim(pred, gt), torch.full((3,), 4 / 25, dtype=torch.float64))


def test_object_baseline_blurs_the_mask() -> None:
    mask = torch.zeros(1, 21, 21)
    mask[0, 5:16, 5:16] = 1
    batch = batch_of(1, 21, 21, object_mask=mask)
    assert torch.equal(ObjectMaskBaseline(sigma_frac=0)(batch), mask)
    blurred = ObjectMaskBaseline(sigma_frac=0.05)(batch)  # σ = 1.05 px
    assert blurred.shape == (1, 21, 21)
    assert blurred[0, 10, 10].item() == pytest.approx(1.0, abs=1e-6)  # deep inside: unchanged
    assert 0.0 < blurred[0, 4, 10].item() < 0.5 < blurred[0, 5, 10].item() < 1.0  # soft edge
    assert blurred[0, 0, 0].item() == pytest.approx(0.0, abs=1e-6)  # far outside


def test_object_baseline_without_masks_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match=r"object_mask.*with_masks=True"):
        ObjectMaskBaseline()(batch_of(1, 4, 4))


def test_build_baseline() -> None:
    assert set(BASELINES) == {"center", "uniform", "object"}
    assert isinstance(build_baseline("center", sigma_frac=0.3), CenterBaseline)
    assert build_baseline("center", sigma_frac=0.3).sigma_frac == 0.3
    assert isinstance(build_baseline("object"), ObjectMaskBaseline)
    with pytest.raises(ValueError, match="center, uniform, object"):
        build_baseline("centre")


def test_baselines_on_a_tiny_synthetic_world(tiny_world) -> None:
    from datasets.agd20k import AGD20KTest
    from utils.evaluation.evaluate import evaluate

    test_set = AGD20KTest(tiny_world, "Seen", image_size=32, eval_size=32, with_masks=True)
    scores = {name: evaluate(build_baseline(name), test_set, progress=False).summary for name in BASELINES}
    for s in scores.values():
        assert s["num_images"] == len(test_set)
        assert all(math.isfinite(s[m]) for m in ("KLD", "SIM", "NSS"))
    assert scores["uniform"]["NSS"] == 0.0
    # Knowing where the object is beats knowing nothing: the GT lies on a part of the object.
    assert scores["object"]["KLD"] < scores["uniform"]["KLD"]
    assert scores["object"]["SIM"] > scores["uniform"]["SIM"]
    assert scores["object"]["NSS"] > 0


def test_every_configurable_baseline_exists() -> None:
    from utils.config import BASELINES
    from utils.evaluation.baselines import build_baseline

    assert all(callable(build_baseline(name)) for name in BASELINES)
    with pytest.raises(ValueError, match="expected one of center, uniform, object"):
        build_baseline("median")
