"""Tests of models/losses.py against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from models.losses import (
    border_loss,
    classification_losses,
    concentration_loss,
    contrastive_loss,
    prototype_loss,
    separation_loss,
    weighted_pool,
)


def test_classification_losses_hand_values():
    labels = torch.tensor([0, 1])
    ce_ego, ce_exo = classification_losses(torch.zeros(2, 4), torch.zeros(2, 3, 4), labels)
    assert ce_ego.item() == pytest.approx(math.log(4))
    assert ce_exo.item() == pytest.approx(math.log(4))
    # Views: view 0 scores the label at +log(3) (CE = log 2), views 1 and 2 are uniform (CE = log 4).
    exo = torch.zeros(2, 3, 4)
    exo[0, 0, 0] = math.log(3.0)
    exo[1, 0, 1] = math.log(3.0)
    _, ce_exo = classification_losses(torch.zeros(2, 4), exo, labels)
    assert ce_exo.item() == pytest.approx((math.log(2) + 2 * math.log(4)) / 3, rel=1e-6)


def test_weighted_pool_guards_zero_mask():
    feats = torch.tensor([[[[1.0, 3.0]], [[2.0, 4.0]]]])  # (1, 2, 1, 2)
    torch.testing.assert_close(weighted_pool(feats, torch.tensor([[[1.0, 1.0]]])), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(weighted_pool(feats, torch.tensor([[[0.0, 2.0]]])), torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(weighted_pool(feats, torch.zeros(1, 1, 2)), torch.zeros(1, 2))
    masks = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]]])  # (1, K=2, 1, 2)
    torch.testing.assert_close(weighted_pool(feats, masks), torch.tensor([[[1.0, 2.0], [0.0, 0.0]]]))


def test_prototype_loss_hand_values():
    desc = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]).unsqueeze(0).repeat(3, 1, 1, 1)  # (3, D=2, 1, 2)
    cam = torch.tensor([[1.0, 0.0]]).expand(3, 1, 2).clone()  # embedding = desc at position 0 = [1, 0]
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # cos 1, 0, -1 -> hinge 0, 0.5, 1.5
    every = prototype_loss(desc, cam, protos, torch.tensor([True, True, True]))
    assert every.item() == pytest.approx((0.0 + 0.5 + 1.5) / 3)
    some = prototype_loss(desc, cam, protos, torch.tensor([False, True, True]))
    assert some.item() == pytest.approx(1.0)
    assert prototype_loss(desc, cam, protos, torch.tensor([False, True, False]), margin=0.25).item() == pytest.approx(
        0.75
    )


def test_prototype_loss_without_prototypes_or_with_empty_cam_is_finite():
    desc = torch.randn(2, 4, 3, 3)
    cam = torch.zeros(2, 3, 3, requires_grad=True)
    none = prototype_loss(desc, cam, torch.zeros(2, 4), torch.tensor([False, False]))
    assert none.item() == 0.0
    none.backward()
    assert torch.isfinite(cam.grad).all()
    # An all-zero CAM pools to a zero embedding: cosine 0, hinge 1 - 0 - 0.5.
    loss = prototype_loss(desc, torch.zeros(2, 3, 3), torch.ones(2, 4), torch.tensor([True, True]))
    assert loss.item() == pytest.approx(0.5)


def test_concentration_loss_hand_values():
    # One row of two pixels: min-max gives [1, 0]; + 1e-3 and normalised p = [1.001, 0.001] / 1.002 on x = [-1, 0].
    # Var_x = p0 p1 (two points one apart), Var_y = 0.
    p0, p1 = 1.001 / 1.002, 0.001 / 1.002
    peaked = concentration_loss(torch.tensor([[[[5.0, 1.0]]]]))
    assert peaked.item() == pytest.approx(p0 * p1, rel=1e-5)
    # A constant map becomes uniform: on x = [-1, 0] the variance is 1/4; the loss averages over (B, C).
    flat = concentration_loss(torch.ones(1, 1, 1, 2))
    assert flat.item() == pytest.approx(0.25, rel=1e-6)
    both = concentration_loss(torch.tensor([[[[5.0, 1.0]], [[2.0, 2.0]]]]))
    assert both.item() == pytest.approx((p0 * p1 + 0.25) / 2, rel=1e-5)
    # 2x2 uniform: coordinates {-1, 0} on both axes, variance 1/4 + 1/4.
    assert concentration_loss(torch.zeros(2, 3, 2, 2)).item() == pytest.approx(0.5, rel=1e-6)


def test_concentration_loss_prefers_concentrated_maps_and_gives_gradient():
    spread = torch.rand(1, 1, 6, 6)
    point = torch.zeros(1, 1, 6, 6)
    point[0, 0, 2, 3] = 1.0
    assert concentration_loss(point) < concentration_loss(spread)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    concentration_loss(x).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_contrastive_loss_hand_value():
    img = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    # cos = identity; logits = 1 * I / 0.5 = 2 I; CE = log(1 + e^-2) for both samples.
    loss = contrastive_loss(img, txt, torch.tensor([0, 1]), torch.tensor(1.0), temperature=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    wrong = contrastive_loss(img, txt, torch.tensor([1, 0]), 1.0, temperature=0.5)
    assert wrong.item() == pytest.approx(math.log(1 + math.exp(2)), rel=1e-6)


def test_losses_are_float32_under_autocast():
    maps = torch.randn(2, 3, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conc = concentration_loss(maps)
        ce, _ = classification_losses(
            torch.randn(2, 3).bfloat16(), torch.randn(2, 2, 3).bfloat16(), torch.tensor([0, 1])
        )
        con = contrastive_loss(torch.randn(2, 4).bfloat16(), torch.randn(3, 4).bfloat16(), torch.tensor([0, 2]), 10.0)
        proto = prototype_loss(
            torch.randn(2, 4, 3, 3).bfloat16(), torch.rand(2, 3, 3), torch.randn(2, 4), torch.tensor([True, False])
        )
    assert {conc.dtype, ce.dtype, con.dtype, proto.dtype} == {torch.float32}


def test_separation_loss_hand_values():
    # Two classes, equally likely (q = 0.5 each); 2x2 maps.
    logits = torch.zeros(1, 2)
    same = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]]])  # identical maps: overlap 1
    assert separation_loss(same, logits).item() == pytest.approx(1.0, abs=1e-6)
    apart = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]]])
    # min-max + 1e-3 then / sum: the peak holds (1 + e) / (1 + 4e) and each other cell e / (1 + 4e); the two
    # distributions share the two cold cells and each other's cold cell under the peak: 4e / (1 + 4e)
    e = 1e-3
    assert separation_loss(apart, logits).item() == pytest.approx(4 * e / (1 + 4 * e), rel=1e-5)


def test_separation_loss_weights_pairs_by_their_probabilities():
    # Class 0 and 1 overlap fully, class 2 is apart from both. With q mostly on (0, 1) the loss is near 1; with q
    # mostly on (0, 2) it is near the small apart overlap.
    maps = torch.zeros(1, 3, 2, 2)
    maps[0, 0, 0, 0] = maps[0, 1, 0, 0] = 1.0
    maps[0, 2, 1, 1] = 1.0
    near_one = separation_loss(maps, torch.tensor([[5.0, 5.0, -5.0]])).item()
    near_zero = separation_loss(maps, torch.tensor([[5.0, -5.0, 5.0]])).item()
    assert near_one > 0.99 and near_zero < 0.01


def test_separation_loss_moves_maps_not_the_classifier():
    maps = torch.randn(2, 3, 4, 4, requires_grad=True)
    logits = torch.randn(2, 3, requires_grad=True)
    loss = separation_loss(maps, logits)
    assert 0.0 <= loss.item() <= 1.0
    loss.backward()
    assert maps.grad is not None and torch.isfinite(maps.grad).all() and maps.grad.abs().sum() > 0
    assert logits.grad is None


def test_border_loss_is_the_label_maps_share_on_the_outer_ring():
    maps = torch.zeros(3, 2, 5, 5)
    maps[0, 1, 2, 2] = 1.0  # label 1: all on the centre -> only the eps floor lies on the ring
    maps[1, 0, 0, :] = 1.0  # label 0: the top row, part of the ring
    maps[2, 1] = 1.0  # label 1: flat -> uniform -> the ring's share of the positions, 16/25
    maps[0, 0] = torch.rand(5, 5)  # other classes' maps do not count
    labels = torch.tensor([1, 0, 1])
    eps = 1e-3
    centre = 16 * eps / (1 + 25 * eps)
    top_row = (5 * (1 + eps) + 11 * eps) / (5 + 25 * eps)
    expected = (centre + top_row + 16 / 25) / 3
    assert border_loss(maps, labels).item() == pytest.approx(expected, rel=1e-5)
    # A map moved off the ring scores lower, and the loss has a gradient.
    moved = maps.clone().requires_grad_(True)
    loss = border_loss(moved, labels)
    loss.backward()
    assert moved.grad is not None and moved.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="h, w >= 3"):
        border_loss(torch.zeros(1, 1, 2, 5), torch.tensor([0]))
