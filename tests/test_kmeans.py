"""Tests of models/kmeans.py: the batched, seeded k-means against a per-sample reference, padding, seeding, dtypes."""

from __future__ import annotations

import pytest
import torch

from models.kmeans import batched_kmeans, kmeans_init_keys


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
