"""Tests of models/parts.py: PartIoU and LOCATE's part-prototype selection, batched and as a PartSelector."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.outputs import PartSelection
from models.parts import PartIoUSelector, PartSelector, part_iou_scores, select_part_prototypes


def reference_part_iou(s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-part loop of p_k = ½(|S∩A|/|S| + |A|/|S∪A|), 0 for an empty S."""
    out = torch.zeros(s.shape[:2])
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            sk, ai = s[i, j].bool(), a[i].bool()
            if sk.sum() == 0:
                continue
            inter = float((sk & ai).sum())
            union = float((sk | ai).sum())
            out[i, j] = 0.5 * (inter / float(sk.sum()) + float(ai.sum()) / union)
    return out


def test_part_iou_hand_computed():
    a = torch.zeros(1, 4, 4, dtype=torch.bool)
    a[0, :2, :2] = True  # |A| = 4
    s = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    s[0, 0, :2, :2] = True  # S == A: ½(4/4 + 4/4) = 1
    s[0, 1, :2, :] = True  # top half: ½(4/8 + 4/8) = 0.5
    s[0, 2, 2:, 2:] = True  # disjoint: ½(0/4 + 4/8) = 0.25
    # s[0, 3] empty: defined as 0
    scores = part_iou_scores(s, a)
    torch.testing.assert_close(scores, torch.tensor([[1.0, 0.5, 0.25, 0.0]]))
    # empty saliency: ½(0 + 0) = 0 for any part
    torch.testing.assert_close(part_iou_scores(s, torch.zeros_like(a)), torch.zeros(1, 4))


def test_part_iou_matches_reference_on_random_masks():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(5, 3, 6, 7, generator=g) > 0.6
    s[0, 1] = False
    a = torch.rand(5, 6, 7, generator=g) > 0.5
    torch.testing.assert_close(part_iou_scores(s, a), reference_part_iou(s, a))


def test_part_iou_shape_errors():
    with pytest.raises(ValueError, match="grid sizes differ"):
        part_iou_scores(torch.zeros(1, 3, 4, 4, dtype=torch.bool), torch.zeros(1, 5, 5, dtype=torch.bool))


def _toy_scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two exo images whose CAM covers a part (e0), a hand (e1) and background (e2); ego shows the part top-left."""
    g = torch.Generator().manual_seed(0)
    d, h, w = 4, 4, 4
    e = torch.eye(d)
    exo_desc = torch.zeros(1, 2, d, h, w)
    exo_desc[..., :] = e[3].view(1, 1, d, 1, 1)  # the rest of the exo images: an unrelated direction
    for img in range(2):
        exo_desc[0, img, :, 0, :] = (2.0 * e[0]).unsqueeze(-1)  # part, row 0
        exo_desc[0, img, :, 1, :] = (3.0 * e[1]).unsqueeze(-1)  # hand, row 1
        exo_desc[0, img, :, 2, :] = (1.0 * e[2]).unsqueeze(-1)  # background, row 2
    exo_desc = exo_desc + 0.01 * torch.randn(exo_desc.shape, generator=g)
    exo_cam = torch.zeros(1, 2, h, w)
    exo_cam[0, :, :3, :] = 5.0  # rows 0-2 interact (raw values: min-max'd inside)
    ego_desc = torch.zeros(1, d, h, w)
    ego_desc[0, :, :, :] = e[2].view(d, 1, 1)  # background
    ego_desc[0, :, :2, :2] = e[0].view(d, 1, 1)  # the part, top-left
    ego_desc[0, :, 2:, 2:] = e[1].view(d, 1, 1)  # something hand-like, bottom-right
    ego_sal = torch.zeros(1, h, w)
    ego_sal[0, :2, :2] = 0.9  # the object is top-left
    return exo_desc, exo_cam, ego_desc, ego_sal


def test_select_part_prototypes_finds_the_part():
    exo_desc, exo_cam, ego_desc, ego_sal = _toy_scene()
    sel = select_part_prototypes(exo_desc, exo_cam, ego_desc, ego_sal)
    assert isinstance(sel, PartSelection)
    assert sel.has_prototype.tolist() == [True]
    assert sel.prototypes.shape == (1, 4) and sel.part_sim.shape == (1, 3, 4, 4) and sel.centroids.shape == (1, 3, 4)
    torch.testing.assert_close(sel.prototypes[0], torch.tensor([1.0, 0.0, 0.0, 0.0]), atol=0.02, rtol=0)
    best = int(sel.best[0])
    # part cluster: S = top-left 2x2 = A, score ½(4/4 + 4/4) = 1; hand: S = the disjoint bottom-right 2x2,
    # ½(0 + 4/8) = 0.25; background: S = the other 8 cells, ½(0 + 4/12) = 1/6
    scores = sorted(sel.part_scores[0].tolist())
    torch.testing.assert_close(torch.tensor(scores), torch.tensor([1 / 6, 0.25, 1.0]))
    assert sel.part_scores[0, best] == 1.0
    assert float(sel.part_sim.min()) >= 0.0 and float(sel.part_sim.max()) <= 1.0
    # a threshold above the best score: no prototype, zeros
    sel = select_part_prototypes(exo_desc, exo_cam, ego_desc, ego_sal, iou_thd=1.01)
    assert sel.has_prototype.tolist() == [False] and (sel.prototypes == 0).all()


def test_select_part_prototypes_too_few_patches():
    exo_desc, exo_cam, ego_desc, ego_sal = _toy_scene()
    exo_cam = torch.zeros_like(exo_cam)
    exo_cam[0, 0, 0, 0] = 1.0  # one patch above the threshold in image 0, none in the constant image 1
    sel = select_part_prototypes(exo_desc, exo_cam, ego_desc, ego_sal)
    assert sel.has_prototype.tolist() == [False]
    assert (sel.prototypes == 0).all() and (sel.part_scores == 0).all() and (sel.part_sim == 0).all()


def test_select_part_prototypes_batched_equals_single():
    g = torch.Generator().manual_seed(1)
    b, n, d, h, w = 3, 3, 8, 5, 6
    exo_desc = torch.randn(b, n, d, h, w, generator=g)
    exo_cam = torch.randn(b, n, h, w, generator=g, requires_grad=True)
    ego_desc = torch.randn(b, d, h, w, generator=g)
    ego_sal = torch.rand(b, h, w, generator=g)
    sel = select_part_prototypes(exo_desc, exo_cam, ego_desc, ego_sal, iou_thd=0.0)
    assert not sel.part_sim.requires_grad and sel.has_prototype.all()
    for i in range(b):
        one = select_part_prototypes(exo_desc[i : i + 1], exo_cam[i : i + 1], ego_desc[i : i + 1], ego_sal[i : i + 1])
        torch.testing.assert_close(one.part_scores[0], sel.part_scores[i])
        torch.testing.assert_close(one.centroids[0], sel.centroids[i], atol=1e-5, rtol=1e-5)
        assert int(one.best[0]) == int(sel.best[i])
    # the prototype is the normalised centroid of the best cluster
    expected = F.normalize(sel.centroids[torch.arange(b), sel.best], dim=-1)
    torch.testing.assert_close(sel.prototypes, expected)


def test_select_part_prototypes_fp32_under_bf16_autocast():
    exo_desc, exo_cam, ego_desc, ego_sal = _toy_scene()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        sel = select_part_prototypes(
            exo_desc.bfloat16(), exo_cam.bfloat16(), ego_desc.bfloat16(), ego_sal.bfloat16(), iou_thd=0.9
        )
    assert sel.prototypes.dtype == sel.part_scores.dtype == sel.part_sim.dtype == sel.centroids.dtype == torch.float32
    assert sel.has_prototype.tolist() == [True] and float(sel.part_scores.max()) == 1.0


def test_select_part_prototypes_shape_errors():
    exo_desc, exo_cam, ego_desc, ego_sal = _toy_scene()
    with pytest.raises(ValueError, match=r"expected exo_cam of shape \(1, 2, 4, 4\)"):
        select_part_prototypes(exo_desc, exo_cam[:, :1], ego_desc, ego_sal)
    with pytest.raises(ValueError, match="expected ego_saliency"):
        select_part_prototypes(exo_desc, exo_cam, ego_desc, ego_sal[:, :2])


def test_partiou_selector_is_select_part_prototypes_with_its_settings():
    g = torch.Generator().manual_seed(2)
    exo_desc, exo_cam = torch.randn(2, 3, 6, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    ego_desc, ego_sal = torch.randn(2, 6, 4, 4, generator=g), torch.rand(2, 4, 4, generator=g)
    selector = PartIoUSelector(cam_thd=0.3, iou_thd=0.2, num_parts=2, kmeans_iters=7, seed=5)
    assert isinstance(selector, PartSelector) and "num_parts=2" in repr(selector)
    got = selector(exo_desc, exo_cam, ego_desc, ego_sal, torch.tensor([0, 1]), {})
    want = select_part_prototypes(exo_desc, exo_cam, ego_desc, ego_sal, cam_thd=0.3, iou_thd=0.2, k=2, iters=7, seed=5)
    for name in ("prototypes", "has_prototype", "part_scores", "part_sim", "best", "centroids"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert got.part_scores.shape == (2, 2)
    # the settings matter: another seed or cluster count gives other clusters
    other = PartIoUSelector(cam_thd=0.3, iou_thd=0.2, num_parts=3, kmeans_iters=7, seed=5)
    assert other(exo_desc, exo_cam, ego_desc, ego_sal, torch.tensor([0, 1]), {}).centroids.shape == (2, 3, 6)
    with pytest.raises(NotImplementedError):
        PartSelector()(exo_desc, exo_cam, ego_desc, ego_sal, torch.tensor([0, 1]), {})
