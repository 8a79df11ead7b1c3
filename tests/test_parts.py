"""Tests for models.parts: batched k-means, PartIoU and LOCATE's part-prototype selection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.parts import (
    ClassPatchBank,
    PartSelection,
    batched_kmeans,
    contrast_selection,
    kmeans_init_keys,
    part_iou_scores,
    select_part_prototypes,
)


def reference_kmeans(
    x: torch.Tensor, mask: torch.Tensor, k: int, iters: int, seed: int, tol: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain per-sample k-means++ / Lloyd, written independently of the batched code (loops, explicit distances)."""
    b, n, d = x.shape
    centroids = torch.zeros(b, k, d)
    assign = torch.full((b, n), -1, dtype=torch.long)
    valid = torch.zeros(b, dtype=torch.bool)
    for i in range(b):
        idx = torch.nonzero(mask[i]).flatten()
        pts = x[i, idx].float()  # (n_i, D)
        if len(pts) < k:
            continue
        valid[i] = True
        chosen: list[int] = []
        for step in range(k):
            keys = kmeans_init_keys(len(pts), step, seed)
            if not chosen:
                weights = torch.ones(len(pts))
            else:
                dist = torch.stack([((pts - pts[c]) ** 2).sum(-1) for c in chosen]).amin(0)
                weights = dist
            best, best_key = -1, float("inf")
            for j in range(len(pts)):  # exponential race over points with positive weight
                if j not in chosen and weights[j] > 0 and keys[j] / weights[j] < best_key:
                    best, best_key = j, float(keys[j] / weights[j])
            if best < 0:  # every remaining weight is zero: uniform choice among the remaining points
                best = min((j for j in range(len(pts)) if j not in chosen), key=lambda j: float(keys[j]))
            chosen.append(best)
        c = pts[chosen].clone()  # (k, D)
        a = torch.cdist(pts, c).argmin(1)
        for _ in range(iters):
            new_c = c.clone()
            for j in range(k):
                if (a == j).any():
                    new_c[j] = pts[a == j].mean(0)
            new_a = torch.cdist(pts, new_c).argmin(1)
            same = bool((new_a == a).all())
            shift = float((new_c - c).abs().max())
            c, a = new_c, new_a
            if same or shift <= tol:
                break
        centroids[i] = c
        assign[i, idx] = a
    return centroids, assign, valid


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


def random_batch(seed: int = 0, b: int = 6, n: int = 40, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g) * 2
    counts = [40, 25, 7, 3, 2, 13]  # different numbers of valid points, one below k=3
    mask = torch.zeros(b, n, dtype=torch.bool)
    for i, c in enumerate(counts[:b]):
        mask[i, torch.randperm(n, generator=g)[:c]] = True  # scattered, not a prefix
    return x, mask


@pytest.mark.parametrize(
    ("k", "iters", "n", "d"),
    [(3, 300, 40, 5), (5, 300, 120, 2), (3, 1, 40, 5)],  # (5, 300, 120, 2) needs many Lloyd iterations
)
def test_kmeans_matches_per_sample_reference(k, iters, n, d):
    x, mask = random_batch(n=n, d=d)
    mask[0, : n // 2] = True  # a sample with many points
    c, a, v = batched_kmeans(x, mask, k=k, iters=iters, seed=7)
    rc, ra, rv = reference_kmeans(x, mask, k=k, iters=iters, seed=7)
    assert v.tolist() == rv.tolist() == [c_ >= k for c_ in mask.sum(1).tolist()]
    assert torch.equal(a, ra)
    torch.testing.assert_close(c, rc, atol=1e-5, rtol=1e-5)


def test_kmeans_result_does_not_depend_on_batch_layout():
    x, mask = random_batch(seed=3)
    c, a, v = batched_kmeans(x, mask, seed=1)
    # Each sample alone, with its valid points compacted and with a different amount of padding.
    for i in range(x.shape[0]):
        pts = x[i, mask[i]]
        padded = torch.cat([pts, torch.randn(5, x.shape[2])]).unsqueeze(0)  # (1, n_i + 5, D)
        pmask = torch.arange(len(pts) + 5).unsqueeze(0) < len(pts)
        ci, ai, vi = batched_kmeans(padded, pmask, seed=1)
        assert bool(vi[0]) == bool(v[i])
        torch.testing.assert_close(ci[0], c[i], atol=1e-5, rtol=1e-5)
        assert torch.equal(ai[0, : len(pts)], a[i, mask[i]])


def test_kmeans_padding_never_influences():
    x, mask = random_batch(seed=5)
    poisoned = x.clone()
    poisoned[~mask] = float("nan")
    c1, a1, _ = batched_kmeans(x, mask)
    c2, a2, _ = batched_kmeans(poisoned, mask)
    assert torch.equal(c1, c2) and torch.equal(a1, a2)
    assert (a1[~mask] == -1).all() and (a1[mask & (mask.sum(1, keepdim=True) >= 3)] >= 0).all()


def test_kmeans_recovers_well_separated_blobs():
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    labels = torch.randint(0, 3, (2, 60), generator=g)
    labels[:, :3] = torch.arange(3)  # every blob present
    x = means[labels] + 0.1 * torch.randn(2, 60, 3, generator=g)
    mask = torch.ones(2, 60, dtype=torch.bool)
    mask[1, 30:] = False
    c, a, v = batched_kmeans(x, mask, k=3)
    assert v.all()
    for i, n_valid in enumerate([60, 30]):
        lab, asg = labels[i, :n_valid], a[i, :n_valid]
        # the clustering equals the blob labelling up to a permutation
        for blob in range(3):
            assert asg[lab == blob].unique().numel() == 1
        assert asg.unique().numel() == 3
        for blob in range(3):
            cluster = int(asg[lab == blob][0])
            torch.testing.assert_close(c[i, cluster], x[i, :n_valid][lab == blob].mean(0))


def test_kmeans_fewer_than_k_points_is_invalid():
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    c, a, v = batched_kmeans(x, mask, k=3)
    assert v.tolist() == [False, True]
    assert torch.equal(c[0], torch.zeros(3, 3))
    assert (a[0] == -1).all()
    # all samples invalid: still well formed
    c, a, v = batched_kmeans(x, torch.zeros(2, 4, dtype=torch.bool), k=3)
    assert not v.any() and (c == 0).all() and (a == -1).all()


def test_kmeans_duplicate_points_keep_empty_cluster_centroid():
    x = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [5.0, 5.0]]])
    c, a, v = batched_kmeans(x, torch.ones(1, 5, dtype=torch.bool), k=3)
    assert v.all() and torch.isfinite(c).all()
    # two centroids coincide at the origin (one of them empty, kept), one sits on the outlier
    assert sorted(c[0].sum(-1).tolist()) == [0.0, 0.0, 10.0]
    assert a[0, 4] != a[0, 0]


def test_kmeans_deterministic_under_seed():
    x, mask = random_batch(seed=11)
    r1 = batched_kmeans(x, mask, seed=4)
    r2 = batched_kmeans(x, mask, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(r1, r2))
    # with no Lloyd iteration the centroids are the seeding points: data points, and they depend on the seed
    c0, _, v = batched_kmeans(x, mask, seed=0, iters=0)
    c1, _, _ = batched_kmeans(x, mask, seed=1, iters=0)
    for i in torch.nonzero(v).flatten():
        pts = x[i, mask[i]]
        assert all((pts == cent).all(-1).any() for cent in c0[i])
    assert not torch.equal(c0[v], c1[v])


def test_kmeans_runs_in_fp32_for_bf16_input():
    x, mask = random_batch(seed=2)
    xb = x.to(torch.bfloat16)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        c, a, v = batched_kmeans(xb, mask)
    assert c.dtype == torch.float32
    c_ref, a_ref, v_ref = batched_kmeans(xb.float(), mask)
    assert torch.equal(c, c_ref) and torch.equal(a, a_ref) and torch.equal(v, v_ref)


def test_kmeans_no_grad_and_shape_errors():
    x = torch.randn(2, 10, 4, requires_grad=True)
    c, _, _ = batched_kmeans(x, torch.ones(2, 10, dtype=torch.bool))
    assert not c.requires_grad
    with pytest.raises(ValueError, match=r"expected mask of shape \(2, 10\)"):
        batched_kmeans(x, torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"expected x of shape \(B, N, D\)"):
        batched_kmeans(x[0], torch.ones(10, dtype=torch.bool))


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


def _one_hot_images(patches: list[list[int]], dim: int = 4) -> torch.Tensor:
    """Egocentric descriptors (B, dim, 1, n) whose patch j is the unit vector e_{patches[b][j]}."""
    return torch.stack([F.one_hot(torch.tensor(p), dim).float().T.unsqueeze(1) for p in patches])


def test_class_patch_bank_keeps_the_newest_images_and_measures_presence():
    bank = ClassPatchBank(num_classes=3, size=2)
    bank.add(_one_hot_images([[0, 1], [0, 2], [0, 3]]), torch.tensor([0, 0, 0]))
    assert [len(v) for v in bank.items] == [2, 0, 0]  # the oldest image (with e1) was dropped
    bank.add(_one_hot_images([[0, 0]]), torch.tensor([1]))
    protos = torch.eye(4)[:3].unsqueeze(0)  # (1, K=3, D=4): e0, e1, e2
    presence, known = bank.presence(protos, topk=1)
    assert known.tolist() == [True, True, False]
    # class 0 holds [e0, e2] and [e0, e3]: e0 is in both, e1 in none, e2 in one of two
    torch.testing.assert_close(presence[0, 0], torch.tensor([1.0, 0.0, 0.5]))
    torch.testing.assert_close(presence[0, 1], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(presence[0, 2], torch.zeros(3))
    bank.clear()
    assert len(bank) == 0
    with pytest.raises(ValueError, match="size >= 1"):
        ClassPatchBank(3, 0)


def _selection(centroids: torch.Tensor, best: list[int], has: list[bool]) -> PartSelection:
    b, k, _ = centroids.shape
    return PartSelection(
        prototypes=torch.zeros(b, centroids.shape[-1]),
        has_prototype=torch.tensor(has),
        part_scores=torch.full((b, k), 0.7),
        part_sim=torch.zeros(b, k, 1, 2),
        best=torch.tensor(best),
        centroids=centroids,
    )


def test_contrast_selection_prefers_what_only_the_own_class_shows_over_the_background():
    # e0 is "background" (in every class's images), e1 is class 0's part, e2 is in nobody's images ("the person").
    bank = ClassPatchBank(num_classes=3, size=4)
    bank.add(_one_hot_images([[0, 1], [0, 1], [0, 3], [0, 3], [0, 3]]), torch.tensor([0, 0, 1, 1, 2]))
    centroids = torch.eye(4)[:3].unsqueeze(0).repeat(3, 1, 1) * 2.0  # raw (unnormalised) centroids e0, e1, e2
    centroids[2] = 0  # the third sample has no clusters
    parts = _selection(centroids, best=[0, 0, 0], has=[True, True, False])
    presence, known = bank.presence(F.normalize(centroids, dim=-1), topk=1)
    out = contrast_selection(parts, presence, known, torch.tensor([0, 1, 0]), weight=0.5)
    # Sample 0 (class 0): background 1 - 0.5 * 1 = 0.5, part 1 - 0.5 * 0 = 1, person 0 -> the part.
    # Presence alone would tie background and part; PartIoU had picked the background.
    assert out.best.tolist()[0] == 1 and bool(out.has_prototype[0])
    torch.testing.assert_close(out.part_scores[0], torch.tensor([0.5, 1.0, 0.0]))
    torch.testing.assert_close(out.prototypes[0], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    # Sample 1 (class 1 sees only the background): background 0.5, class 0's part 0 - 0.5 = -0.5 -> background.
    assert out.best.tolist()[1] == 0
    # Sample 2 has no clusters: PartIoU's choice and scores are kept, and it has no prototype.
    assert out.best.tolist()[2] == 0 and not bool(out.has_prototype[2])
    torch.testing.assert_close(out.part_scores[2], torch.full((3,), 0.7))
    assert (out.prototypes[2] == 0).all()


def test_contrast_selection_keeps_partiou_for_classes_the_bank_has_not_seen_and_needs_a_positive_score():
    bank = ClassPatchBank(num_classes=2, size=4)
    bank.add(_one_hot_images([[0, 0]]), torch.tensor([0]))  # class 0: only background
    centroids = torch.eye(4)[:2].unsqueeze(0).repeat(2, 1, 1)
    parts = _selection(centroids, best=[1, 1], has=[True, True])
    presence, known = bank.presence(centroids, topk=1)
    out = contrast_selection(parts, presence, known, torch.tensor([0, 1]), weight=1.0)
    # Class 0, no other class known: background scores 1, kept with a prototype.
    assert out.best.tolist()[0] == 0 and bool(out.has_prototype[0])
    # Class 1 has no images in the bank: PartIoU's choice stands.
    assert out.best.tolist()[1] == 1 and bool(out.has_prototype[1])
    torch.testing.assert_close(out.prototypes[1], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    # With weight 1 and class 1 seeing the same background, the best score is 0: no prototype.
    bank.add(_one_hot_images([[0, 0]]), torch.tensor([1]))
    presence, known = bank.presence(centroids, topk=1)
    out = contrast_selection(parts, presence, known, torch.tensor([0, 1]), weight=1.0)
    assert not bool(out.has_prototype[0]) and (out.prototypes[0] == 0).all()
