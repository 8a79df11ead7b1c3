"""LOCATE's k-means (models/kmeans.py ``batched_kmeans_locate``) against fast-pytorch-kmeans 0.2.2, re-typed.

``_published_fit`` below is re-typed from reading fast-pytorch-kmeans 0.2.2 (``KMeans.fit_predict`` with
``mode='euclidean'``, ``minibatch=None``, ``tol=1e-4``), the call LOCATE's ``models/locate.py`` makes once per
sample. The hand-made cases say in comments what the library computes, step by step.
"""

from __future__ import annotations

import pytest
import torch

from models.kmeans import LOCATE_KMEANS_TOL, batched_kmeans_locate, locate_init_index


def _published_fit(
    points: torch.Tensor, init_idx: list[int], max_iter: int = 300, tol: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """fast-pytorch-kmeans 0.2.2 ``fit_predict`` of one sample from given start indices: (centroids, labels, iters)."""
    k = len(init_idx)
    centroids = points[torch.tensor(init_idx)]
    arranged = torch.arange(k)[:, None]
    closest, iters = None, 0
    for _ in range(max_iter):
        iters += 1
        sim = 2 * points @ centroids.transpose(-2, -1) - (points**2).sum(dim=1)[..., :, None]
        sim = sim - (centroids**2).sum(dim=1)[..., None, :]
        closest = sim.max(dim=-1)[1]
        mask = (closest[None].expand(k, -1) == arranged).to(points.dtype)
        c_grad = mask @ points / mask.sum(-1)[..., :, None]
        torch.nan_to_num_(c_grad)
        error = (c_grad - centroids).pow(2).sum()
        lr = 1
        centroids = centroids * (1 - lr) + c_grad * lr
        if error <= tol:
            break
    return centroids, closest, iters


def _line(*xs: float) -> torch.Tensor:
    """Points on the x axis of the plane, (N, 2)."""
    return torch.tensor([[x, 0.0] for x in xs])


def _one(points: torch.Tensor, init: list[int], **kw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """batched_kmeans_locate of a single sample from given start indices."""
    mask = torch.ones(1, points.shape[0], dtype=torch.bool)
    return batched_kmeans_locate(points[None], mask, k=len(init), init_index=torch.tensor([init]), **kw)


def test_hand_made_run_moves_to_the_means_and_stops_after_the_update():
    # Points 0, 2, 3, 5, 10 from the start (2, 3). Iteration 1: 0, 2 -> c0 and 3, 5, 10 -> c1, so c = (1, 6),
    # shift 1 + 9 = 10. Iteration 2: 3 is now nearer c0 (2 < 3), c = (5/3, 7.5). Iteration 3: nothing moves
    # (shift 0 <= 1e-4): the library stops with the means of the last assignment.
    points = _line(0, 2, 3, 5, 10)
    centroids, assign, valid = _one(points, [1, 2])
    assert valid.tolist() == [True]
    torch.testing.assert_close(centroids[0, :, 0], torch.tensor([5 / 3, 7.5]))
    assert assign[0].tolist() == [0, 0, 0, 1, 1]
    theirs, labels, iters = _published_fit(points, [1, 2])
    assert iters == 3
    torch.testing.assert_close(centroids[0], theirs, rtol=0, atol=0)
    assert torch.equal(assign[0], labels)


def test_stopping_rule_is_the_summed_squared_shift_at_most_tol():
    points = _line(0, 2, 3, 5, 10)
    # After iteration 1 the shifts are 1 and 9: summed 10, the largest 9.
    stop, _, _ = _one(points, [1, 2], tol=10.0)  # 10 <= 10: stops, with the means of iteration 1
    torch.testing.assert_close(stop[0, :, 0], torch.tensor([1.0, 6.0]))
    assert _published_fit(points, [1, 2], tol=10.0)[2] == 1
    # Summed 10 > 9.5 (a per-centroid rule, 9 <= 9.5, would stop here); iteration 2 moves by 4/9 + 9/4 <= 9.5.
    go_on, _, _ = _one(points, [1, 2], tol=9.5)
    torch.testing.assert_close(go_on[0, :, 0], torch.tensor([5 / 3, 7.5]))
    assert _published_fit(points, [1, 2], tol=9.5)[2] == 2
    capped, _, _ = _one(points, [1, 2], iters=1)  # at most `iters` iterations
    torch.testing.assert_close(capped[0, :, 0], torch.tensor([1.0, 6.0]))
    assert LOCATE_KMEANS_TOL == 1e-4


def test_duplicate_start_leaves_an_empty_cluster_that_becomes_a_zero_centroid():
    # Start (p0, p0, p2): the two equal centroids tie for every point and the lower index wins, so cluster 1 gets no
    # point; the library's 0/0 becomes 0 (nan_to_num): centroid 1 is the zero vector, not its previous value.
    # Iteration 1: c = ((5.5, 5), (0, 0), (15.5, 5)), shift 0.25 + 50 + 0.25. Iteration 2: (0, 0) is farther
    # from every point than its own centroid, nothing moves, the run stops.
    points = torch.tensor([[5.0, 5.0], [6.0, 5.0], [15.0, 5.0], [16.0, 5.0]])
    centroids, assign, _ = _one(points, [0, 0, 2])
    torch.testing.assert_close(centroids[0], torch.tensor([[5.5, 5.0], [0.0, 0.0], [15.5, 5.0]]))
    assert assign[0].tolist() == [0, 0, 2, 2]
    theirs, labels, iters = _published_fit(points, [0, 0, 2])
    assert iters == 2
    torch.testing.assert_close(centroids[0], theirs, rtol=0, atol=0)
    assert torch.equal(assign[0], labels)


def test_batched_equals_the_library_per_sample_and_padding_never_leaks():
    gen = torch.Generator().manual_seed(0)
    counts, k, d = [9, 2, 14, 6], 3, 5
    n = max(counts)
    x = torch.full((len(counts), n, d), float("nan"))  # padding is NaN: it must not reach any result
    mask = torch.zeros(len(counts), n, dtype=torch.bool)
    starts = torch.zeros(len(counts), k, dtype=torch.long)
    for s, c in enumerate(counts):
        x[s, :c] = torch.randn(c, d, generator=gen) + 3 * torch.randn(1, d, generator=gen)
        mask[s, :c] = True
        starts[s] = torch.randint(0, c, (k,), generator=gen)
    # real points anywhere in the row: the i-th True of the mask is the sample's i-th point
    perm = torch.randperm(n, generator=gen)
    x, mask = x[:, perm], mask[:, perm]
    centroids, assign, valid = batched_kmeans_locate(x, mask, k=k, init_index=starts)
    assert valid.tolist() == [True, False, True, True]
    assert torch.isfinite(centroids).all()
    assert torch.equal(centroids[1], torch.zeros(k, d)) and (assign[1] == -1).all()
    assert (assign[~mask] == -1).all()
    for s, c in enumerate(counts):
        if c < k:
            continue
        pts = x[s][mask[s]]
        theirs, labels, _ = _published_fit(pts, starts[s].tolist())
        torch.testing.assert_close(centroids[s], theirs, rtol=0, atol=1e-6)
        assert torch.equal(assign[s][mask[s]], labels)


def test_start_is_drawn_from_the_global_rng_one_call_per_clustered_sample_in_order():
    counts = torch.tensor([5, 2, 7, 3])
    torch.manual_seed(11)
    ours = locate_init_index(counts, 3)
    torch.manual_seed(11)  # the published loop: samples with fewer than k points skip the call
    expected = [torch.randint(0, 5, (3,)), None, torch.randint(0, 7, (3,)), torch.randint(0, 3, (3,))]
    for s, e in enumerate(expected):
        if e is None:
            assert ours[s].tolist() == [0, 0, 0]
        else:
            assert torch.equal(ours[s], e)
    # and batched_kmeans_locate without init_index starts from exactly these points
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 7, 2, generator=gen)
    mask = torch.arange(7)[None] < counts[:, None]
    torch.manual_seed(11)
    drawn, _, _ = batched_kmeans_locate(x, mask, k=3, iters=0)  # iters=0: the start itself
    for s in (0, 2, 3):
        torch.testing.assert_close(drawn[s], x[s][ours[s]], rtol=0, atol=0)


def test_invalid_arguments_say_what_is_wrong():
    x, mask = torch.zeros(2, 4, 2), torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"init_index of samples \[1\] points outside"):
        batched_kmeans_locate(x, mask, k=2, init_index=torch.tensor([[0, 3], [0, 4]]))
    with pytest.raises(ValueError, match=r"expected init_index of shape \(2, 2\)"):
        batched_kmeans_locate(x, mask, k=2, init_index=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"expected x of shape \(B, N, D\)"):
        batched_kmeans_locate(x[0], mask[0])
