"""KLD / SIM / NSS (utils.evaluation.metrics): hand-computed cases, identities, edge cases, published formulas."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from utils.evaluation.metrics import EPS, compute_metrics, kld, nss, prepare_prediction, sim


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------------------------------- hand-computed 2x2
# P = [[1, 1], [0, 0]] -> ΣP = 2, P' = [[.5, .5], [0, 0]];  G = [[1, 0], [1, 0]] -> G' = [[.5, 0], [.5, 0]].
P2 = t([[1, 1], [0, 0]])
G2 = t([[1, 0], [1, 0]])


def test_kld_2x2_hand_computed() -> None:
    # (0,0): .5 · ln(.5 / .5 + ε) = .5 · ln(1 + ε) ≈ 0
    # (1,0): .5 · ln(.5 / (0 + ε) + ε) = .5 · ln(.5e12) = .5 · (ln .5 + 12 ln 10) = .5 · 26.9378737 = 13.4689369
    # (0,1), (1,1): G' = 0, the term is 0 · ln ε = 0.
    expected = 0.5 * math.log(0.5 / EPS)
    assert expected == pytest.approx(13.4689369, abs=1e-6)
    assert kld(P2, G2).item() == pytest.approx(expected, rel=1e-9)


def test_sim_2x2_hand_computed() -> None:
    # min(P', G') = [[.5, 0], [0, 0]] -> SIM = .5
    assert sim(P2, G2).item() == pytest.approx(0.5, abs=1e-9)


def test_nss_2x2_hand_computed() -> None:
    # P = [[1, 1], [0, 0]]: mean .5, population std .5 (sample std would be .577) -> Z = [[1, 1], [-1, -1]].
    # G = [[1, .5], [.05, 0]]: min-max keeps it; F = G > .1 = [[1, 1], [0, 0]] (.05 is below the threshold).
    # NSS = (1 + 1) / (2 + 4ε) = 1.
    g = t([[1, 0.5], [0.05, 0]])
    assert nss(P2, g).item() == pytest.approx(1.0, abs=1e-9)
    # With G2 = [[1, 0], [1, 0]]: F = G2, Σ Z·F = 1 + (-1) = 0 -> NSS = 0.
    assert nss(P2, G2).item() == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------- hand-computed 3x3
# P = [[0, .5, 0], [.5, 1, .5], [0, .5, 0]] (ΣP = 3): P' = 1/3 in the centre, 1/6 on the edges, 0 in the corners.
# G = [[0, 0, 0], [0, 1, 1], [0, 1, 1]] (ΣG = 4): G' = 1/4 on the four bottom-right cells (1,1) (1,2) (2,1) (2,2).
P3 = t([[0, 0.5, 0], [0.5, 1, 0.5], [0, 0.5, 0]])
G3 = t([[0, 0, 0], [0, 1, 1], [0, 1, 1]])


def test_kld_3x3_hand_computed() -> None:
    # (1,1): G'/P' = (1/4)/(1/3) = .75;  (1,2), (2,1): (1/4)/(1/6) = 1.5;  (2,2): P' = 0 -> (1/4)/ε = 2.5e11.
    # KLD = .25 · (ln .75 + 2 ln 1.5 + ln 2.5e11) = .25 · (-0.2876821 + 0.8109302 + 26.2447267) = 6.6919937
    expected = 0.25 * (math.log(0.75) + 2 * math.log(1.5) + math.log(0.25 / EPS))
    assert expected == pytest.approx(6.6919937, abs=1e-6)
    assert kld(P3, G3).item() == pytest.approx(expected, rel=1e-9)


def test_sim_3x3_hand_computed() -> None:
    # min(P', G'): (1,1) min(1/3, 1/4) = 1/4; (1,2), (2,1) min(1/6, 1/4) = 1/6; (2,2) min(0, 1/4) = 0.
    # SIM = 1/4 + 2/6 = 7/12
    assert sim(P3, G3).item() == pytest.approx(7 / 12, abs=1e-9)


def test_nss_3x3_hand_computed() -> None:
    # mean P = (4 · .5 + 1) / 9 = 1/3; E[P²] = (4 · .25 + 1) / 9 = 2/9; var = 2/9 - 1/9 = 1/9 -> std = 1/3.
    # Z = (P - 1/3) / (1/3) = 3P - 1: corners -1, edges .5, centre 2.
    # F = G3: Σ Z·F = Z(1,1) + Z(1,2) + Z(2,1) + Z(2,2) = 2 + .5 + .5 - 1 = 2;  Σ(F + ε) = 4 + 9ε -> NSS = .5
    assert nss(P3, G3).item() == pytest.approx(0.5, abs=1e-9)


def test_nss_min_max_normalises_the_gt_before_the_threshold() -> None:
    # G = .2 everywhere except 1 in the centre and .24 in a corner. Min-max: (G - .2) / .8 -> 0, 1 and .05.
    # Only the centre is > .1, so NSS = Z(centre) = 2. Thresholding the raw G (all > .1) would give Σ Z / 9 = 0.
    g = t([[0.2, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.2, 0.24]])
    assert nss(P3, g).item() == pytest.approx(2.0, abs=1e-9)


# ------------------------------------------------------------------------------------------------- identities
def test_identities_sim_one_kld_zero() -> None:
    x = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.01
    assert torch.allclose(sim(x, x), torch.ones(4, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(kld(x, x), torch.zeros(4, dtype=torch.float64), atol=1e-9)
    # KLD is never negative up to the ε terms; a scaled copy has the same distribution.
    assert torch.allclose(kld(3 * x, x), torch.zeros(4, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(nss(3 * x + 1, x), nss(x, x), atol=1e-9)  # Z is invariant to affine maps of P


# ------------------------------------------------------------------------------------------------- edge cases
def test_all_zero_gt_scores_zero() -> None:
    pred = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1))
    gt = torch.zeros(2, 8, 8)
    for fn in (kld, sim, nss):
        values = fn(pred, gt)
        assert torch.isfinite(values).all(), fn.__name__
        assert torch.equal(values, torch.zeros(2, dtype=torch.float64)), fn.__name__


def test_constant_prediction_has_nss_zero_not_nan() -> None:
    gt = t([[0, 0.5], [1, 0]])
    for value in (0.0, 0.7, 1.0, 1234.5):
        pred = torch.full((2, 2), value, dtype=torch.float64)
        assert nss(pred, gt).item() == 0.0, value
    # A constant map up to float rounding (a few ulps) is constant too.
    assert nss(t([[0.3, 0.3 + 1e-17], [0.3, 0.3]]), gt).item() == 0.0


def test_all_zero_prediction_is_finite() -> None:
    # P' = 0 everywhere: KLD = Σ G' ln(G' / ε + ε), large but finite; SIM = 0.
    gt = t([[0, 0.5], [0.5, 0]])
    assert kld(torch.zeros(2, 2), gt).item() == pytest.approx(math.log(0.5 / EPS), rel=1e-9)
    assert sim(torch.zeros(2, 2), gt).item() == 0.0


def test_shapes_dtype_and_batch_equals_one_by_one() -> None:
    g = torch.Generator().manual_seed(2)
    pred = torch.rand(5, 12, 10, generator=g)
    gt = torch.rand(5, 12, 10, generator=g) * (torch.rand(5, 12, 10, generator=g) > 0.6)
    batched = compute_metrics(pred, gt)
    for name, fn in (("kld", kld), ("sim", sim), ("nss", nss)):
        values = fn(pred, gt)
        assert values.shape == (5,) and values.dtype == torch.float64
        assert torch.allclose(values, batched[name], rtol=0, atol=1e-12)
        single = torch.stack([fn(pred[i], gt[i]) for i in range(5)])
        assert fn(pred[0], gt[0]).dim() == 0
        assert torch.allclose(values, single, rtol=0, atol=1e-12), name


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="same shape"):
        kld(torch.rand(2, 4, 4), torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        nss(torch.rand(4), torch.rand(4))


# ----------------------------------------------------------------------------- the published formulas, to 1e-6
def _published_kld(pred: np.ndarray, gt: np.ndarray, eps: float = 1e-12) -> float:
    # Cross-View-AG / LOCATE utils/evaluation/evaluate.py cal_kl, re-typed from the formula.
    p, g = pred / (pred.sum() + eps), gt / (gt.sum() + eps)
    return float(np.sum(g * np.log(g / (p + eps) + eps)))


def _published_sim(pred: np.ndarray, gt: np.ndarray, eps: float = 1e-12) -> float:
    p, g = pred / (pred.sum() + eps), gt / (gt.sum() + eps)
    return float(np.sum(np.minimum(p, g)))


def _published_nss(pred: np.ndarray, gt: np.ndarray) -> float:
    # LOCATE's cal_nss divides both maps by 255 once more and binarises with a per-pixel loop.
    pred, gt = pred / 255.0, gt / 255.0
    z = (pred - pred.mean()) / pred.std()
    fix = (gt - gt.min()) / (gt.max() - gt.min() + 1e-12)
    fix = np.array([[1.0 if v > 0.1 else 0.0 for v in row] for row in fix])
    return float(np.sum(z * fix) / np.sum(fix + 1e-12))


def test_matches_the_published_formulas_to_1e6() -> None:
    rng = np.random.default_rng(3)
    low = rng.random((6, 14, 14)).astype(np.float32)  # the model's patch-grid maps
    gt = rng.random((6, 56, 56)) * (rng.random((6, 56, 56)) > 0.5)  # sparse soft GT in [0, 1]
    pred = prepare_prediction(torch.from_numpy(low), 56)
    ours = compute_metrics(pred, torch.from_numpy(gt))
    for i in range(6):
        p = pred[i].numpy()
        assert ours["kld"][i].item() == pytest.approx(_published_kld(p, gt[i]), abs=1e-6)
        assert ours["sim"][i].item() == pytest.approx(_published_sim(p, gt[i]), abs=1e-6)
        assert ours["nss"][i].item() == pytest.approx(_published_nss(p, gt[i]), abs=1e-6)


def test_formulas_hold_for_any_input_including_negative_and_dense_maps() -> None:
    # KLD and SIM are summed over the G != 0 pixels only; with negative predictions the SIM terms of the G = 0
    # pixels (min(P', 0) < 0) must still count, as in the dense published formula.
    rng = np.random.default_rng(5)
    pred = rng.normal(0.3, 1.0, (4, 9, 7))  # negative values in every map
    gt = rng.random((4, 9, 7)) * (rng.random((4, 9, 7)) > 0.3)
    gt[1] = rng.random((9, 7)) + 0.01  # a GT without zeros
    pred[2] = np.abs(pred[2])  # one non-negative row among negative ones
    ours = compute_metrics(torch.from_numpy(pred), torch.from_numpy(gt))
    for i in range(4):
        p = pred[i]
        assert ours["sim"][i].item() == pytest.approx(_published_sim(p, gt[i]), abs=1e-9)
        if p.min() >= 0:  # the published KLD takes the log of a negative ratio otherwise (NaN for both)
            assert ours["kld"][i].item() == pytest.approx(_published_kld(p, gt[i]), abs=1e-9)
        assert ours["nss"][i].item() == pytest.approx(_published_nss(p, gt[i]), abs=1e-9)


def test_prepare_prediction_matches_the_published_resize_and_min_max() -> None:
    # LOCATE's normalize_map: cv2.resize (bilinear, half-pixel centres) on float32, then min-max with 1e-10.
    # (KLD itself cannot be compared through two resize implementations: where G > 0 and P is exactly 0 after
    # min-max, a 1e-9 change of P moves the term G' ln(G' / (P' + ε)) by G' · ln(1e3), so only the maps are.)
    low = np.random.default_rng(4).random((3, 14, 14)).astype(np.float32)
    pred = prepare_prediction(torch.from_numpy(low), 224)
    for i in range(3):
        p = cv2.resize(low[i], (224, 224), interpolation=cv2.INTER_LINEAR).astype(np.float64)
        p = (p - p.min()) / (p.max() - p.min() + 1e-10)
        assert np.abs(pred[i].numpy() - p).max() < 1e-6


# --------------------------------------------------------------------------------------- prepare_prediction
def test_prepare_prediction_upsamples_bilinear_half_pixel_then_min_max() -> None:
    # Row [0, 1] to 4 columns, align_corners=False: source x = (i + .5) / 2 - .5 = -.25, .25, .75, 1.25 ->
    # clamped -> 0, .25, .75, 1. Min-max keeps [0, .25, .75, 1].
    low = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])  # (1, 2, 2)
    out = prepare_prediction(low, 4)
    assert out.shape == (1, 4, 4) and out.dtype == torch.float64
    assert torch.allclose(out[0, 0], torch.tensor([0, 0.25, 0.75, 1], dtype=torch.float64), atol=1e-9)
    # Values are rescaled to [0, 1] whatever their range; 2-d input gives a 2-d output; (H, W) sizes work.
    out = prepare_prediction(torch.tensor([[2.0, 4.0], [6.0, 10.0]]), (2, 3))
    assert out.shape == (2, 3) and out.min().item() == 0.0 and out.max().item() == pytest.approx(1.0)


def test_prepare_prediction_constant_map_becomes_uniform() -> None:
    out = prepare_prediction(torch.full((2, 3, 3), 5.0), 6)
    assert torch.equal(out, torch.ones(2, 6, 6, dtype=torch.float64))
    # Scored as the uniform distribution: SIM = Σ min(1/N, G') is meaningful, NSS = 0.
    gt = torch.zeros(2, 6, 6)
    gt[:, 0, 0] = 1
    assert torch.allclose(sim(out, gt), torch.full((2,), 1 / 36, dtype=torch.float64))
    assert torch.equal(nss(out, gt), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        prepare_prediction(torch.rand(1, 1, 2, 2), 4)
