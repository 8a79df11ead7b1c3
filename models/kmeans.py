"""Batched k-means for the part prototypes: many small point sets clustered at once, in float32.

Two variants, chosen by ``model.kmeans``:

- :func:`batched_kmeans` (``kmeanspp``, our default): seeded k-means++. Each sample of a batch is clustered exactly
  as a per-sample implementation would: padding never influences anything, and the seeding depends only on the seed
  and the sample's own points, so results do not depend on how samples are batched. The only Python loops run over
  seeding steps (K of them) and Lloyd iterations.
- :func:`batched_kmeans_locate` (``locate``, the reference configs): the k-means LOCATE's published code calls,
  fast-pytorch-kmeans 0.2.2 ``KMeans(n_clusters=K, mode='euclidean', max_iter=300).fit_predict``, re-typed and
  batched: random data points of the global torch RNG as the start, the library's similarity and stopping rule,
  and an empty cluster becomes the zero vector.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from einops import einsum

__all__ = ["LOCATE_KMEANS_TOL", "batched_kmeans", "batched_kmeans_locate", "kmeans_init_keys", "locate_init_index"]

logger = logging.getLogger(__name__)


def kmeans_init_keys(num_points: int, step: int, seed: int) -> torch.Tensor:
    """Exponential random keys for one k-means++ seeding step, identical for any batch layout.

    Step ``j`` of the seeding uses a CPU generator seeded with ``seed + j`` and draws one uniform per point; point
    ``i`` of a sample (its i-th *valid* point, in order) always gets the i-th draw. PyTorch's CPU generator fills a
    tensor sequentially, so the first ``n`` draws of ``torch.rand(N)`` equal ``torch.rand(n)``: a per-sample
    implementation that calls this with the sample's own number of points picks the same centroids as the batched one.

    Args:
        num_points: how many keys to draw.
        step: seeding step (0 for the first centroid).
        seed: base seed.

    Returns:
        (num_points,) float32 CPU tensor of Exp(1) variates, -log(1 - u), finite because u < 1.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + int(step))
    u = torch.rand(num_points, generator=gen, dtype=torch.float32)
    return -torch.log1p(-u)


def _sq_dists(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (B, N, k) between points x (B, N, D) and centroids c (B, k, D)."""
    cross = einsum(x, c, "b n d, b k d -> b n k")
    c_sq = c.square().sum(-1)  # (B, k)
    return (x_sq.unsqueeze(-1) - 2.0 * cross + c_sq.unsqueeze(1)).clamp_min_(0.0)


def _kmeanspp_init(x: torch.Tensor, x_sq: torch.Tensor, mask: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Seeded k-means++ seeding (Arthur & Vassilvitskii, 2007), batched, returns (B, k, D) centroids.

    Sampling a point with probability ∝ w_i is done with the exponential race argmin_i E_i / w_i (E_i ~ Exp(1)), so
    that the randomness is a fixed key per valid point (see :func:`kmeans_init_keys`) instead of a batch-dependent
    draw. The first centroid uses w_i = 1. When every remaining weight is zero (duplicated points) the next centroid is
    a uniformly chosen valid point not chosen yet.
    """
    b, n, _ = x.shape
    rank = (mask.long().cumsum(dim=1) - 1).clamp_min(0)  # (B, N) index of each point among its sample's valid points
    inf = torch.tensor(float("inf"), device=x.device)
    chosen = torch.zeros(b, n, dtype=torch.bool, device=x.device)
    centroids = []
    min_d = None  # (B, N) squared distance to the nearest chosen centroid
    batch_idx = torch.arange(b, device=x.device)
    for step in range(k):
        keys = kmeans_init_keys(n, step, seed).to(x.device)[rank]  # (B, N)
        free = mask & ~chosen
        uniform = torch.where(free, keys, inf)
        if min_d is None:
            score = uniform
        else:
            weighted = torch.where(free & (min_d > 0), keys / min_d, inf)
            has_weight = torch.isfinite(weighted).any(dim=1, keepdim=True)  # (B, 1)
            score = torch.where(has_weight, weighted, uniform)
        idx = score.argmin(dim=1)  # (B,)
        chosen[batch_idx, idx] = True
        c = x[batch_idx, idx]  # (B, D)
        centroids.append(c)
        d = _sq_dists(x, x_sq, c.unsqueeze(1)).squeeze(-1)  # (B, N)
        min_d = d if min_d is None else torch.minimum(min_d, d)
    return torch.stack(centroids, dim=1)  # (B, k, D)


def batched_kmeans(
    x: torch.Tensor,
    mask: torch.Tensor,
    k: int = 3,
    iters: int = 300,
    seed: int = 0,
    tol: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Euclidean k-means on a padded batch of point sets, in float32, without gradients.

    Each sample is clustered exactly as a per-sample implementation would: seeded k-means++ seeding that depends only
    on ``seed`` and the sample's own valid points, then Lloyd iterations (assign to the nearest centroid, move each
    centroid to the mean of its points; an empty cluster keeps its previous centroid). A sample stops (and is frozen)
    when its assignment no longer changes or its centroids move by at most ``tol`` (max absolute coordinate change);
    the loop ends when every sample has stopped or after ``iters`` iterations.

    Args:
        x: (B, N, D) points; any float dtype (cast to float32 inside, autocast disabled).
        mask: (B, N) bool, True for real points, False for padding (padding never influences anything).
        k: number of clusters.
        iters: maximum number of Lloyd iterations.
        seed: seed of the k-means++ seeding.
        tol: per-sample stopping threshold on the centroid movement.

    Returns:
        centroids: (B, k, D) float32, zeros for invalid samples.
        assign: (B, N) long cluster index of every valid point, -1 for padding and for invalid samples.
        valid: (B,) bool, False for samples with fewer than k valid points.
    """
    if x.dim() != 3:
        raise ValueError(f"batched_kmeans: expected x of shape (B, N, D), got {tuple(x.shape)}")
    if mask.shape != x.shape[:2]:
        raise ValueError(f"batched_kmeans: expected mask of shape {tuple(x.shape[:2])} (B, N), got {tuple(mask.shape)}")
    if k < 1 or iters < 0:
        raise ValueError(f"batched_kmeans: expected k >= 1 and iters >= 0, got k={k}, iters={iters}")
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        x = x.detach().float()
        mask = mask.to(device=x.device, dtype=torch.bool)
        b, n, d = x.shape
        valid = mask.sum(dim=1) >= k  # (B,)
        if b == 0 or n == 0 or not bool(valid.any()):
            return (
                x.new_zeros(b, k, d),
                torch.full((b, n), -1, dtype=torch.long, device=x.device),
                valid,
            )
        # Padding is zeroed so that a NaN/inf in an unused slot cannot leak through the matmuls.
        x = torch.where(mask.unsqueeze(-1), x, x.new_zeros(()))
        x_sq = x.square().sum(-1)  # (B, N)
        # Invalid samples run through the (per-sample) arithmetic with no points at all and are zeroed at the end;
        # nothing crosses samples, so they cannot affect the valid ones.
        work_mask = mask & valid.unsqueeze(1)

        centroids = _kmeanspp_init(x, x_sq, work_mask, k, seed)  # (B, k, D)
        assign = _sq_dists(x, x_sq, centroids).argmin(dim=-1)  # (B, N)
        active = valid.clone()  # (B,) samples still iterating
        weights = work_mask.float()  # (B, N)
        it = 0
        for it in range(1, iters + 1):  # noqa: B007 (it is logged after the loop)
            one_hot = F.one_hot(assign, k).float() * weights.unsqueeze(-1)  # (B, N, k)
            sums = einsum(one_hot, x, "b n k, b n d -> b k d")
            counts = one_hot.sum(dim=1)  # (B, k)
            moved = torch.where(counts.unsqueeze(-1) > 0, sums / counts.clamp_min(1.0).unsqueeze(-1), centroids)
            new_centroids = torch.where(active.view(b, 1, 1), moved, centroids)  # frozen samples keep theirs
            new_assign = _sq_dists(x, x_sq, new_centroids).argmin(dim=-1)  # (B, N)
            new_assign = torch.where(active.unsqueeze(1), new_assign, assign)
            same = ((new_assign == assign) | ~work_mask).all(dim=1)  # (B,)
            shift = (new_centroids - centroids).abs().flatten(1).amax(dim=1)  # (B,)
            centroids, assign = new_centroids, new_assign
            active = active & ~same & (shift > tol)
            if not bool(active.any()):
                break
        logger.debug("batched_kmeans: %d samples, %d valid, stopped after %d iterations", b, int(valid.sum()), it)
        centroids = torch.where(valid.view(b, 1, 1), centroids, centroids.new_zeros(()))
        assign = torch.where(work_mask, assign, torch.full_like(assign, -1))
        return centroids, assign, valid


LOCATE_KMEANS_TOL = 1e-4
"""fast-pytorch-kmeans' default ``tol``: a sample stops once its summed squared centroid shift is at most this."""


def locate_init_index(counts: torch.Tensor, k: int) -> torch.Tensor:
    """The initial points fast-pytorch-kmeans draws for each sample, as LOCATE calls it, from the global torch RNG.

    The library starts from ``X[torch.randint(0, n, size=[k], device=X.device)]``: ``k`` data points drawn with
    replacement (duplicates happen), one call per clustered sample, in sample order; LOCATE skips samples with fewer
    than ``k`` points, which therefore draw nothing. Each draw is its own RNG call (on CUDA each call advances the
    generator's offset), so the draws are made one sample at a time, as the published loop makes them.

    Args:
        counts: (B,) number of points of each sample.
        k: number of clusters.

    Returns:
        (B, k) long indices into each sample's points (its i-th point in order); zeros for samples with fewer than
        ``k`` points.
    """
    index = torch.zeros(counts.shape[0], k, dtype=torch.long, device=counts.device)
    for s, n in enumerate(counts.tolist()):
        if n >= k:
            index[s] = torch.randint(0, int(n), (k,), device=counts.device)
    return index


def _euclidean_similarity(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """fast-pytorch-kmeans' ``euc_sim``, batched: 2 x·c − |x|² − |c|², i.e. −|x − c|² by the matmul trick, (B, N, k).

    The expression (not ``cdist``, not a clamp) is the library's, so that near-ties resolve as there.
    """
    return 2 * einsum(x, c, "b n d, b k d -> b n k") - x_sq.unsqueeze(-1) - c.square().sum(-1).unsqueeze(1)


def batched_kmeans_locate(
    x: torch.Tensor,
    mask: torch.Tensor,
    k: int = 3,
    iters: int = 300,
    tol: float = LOCATE_KMEANS_TOL,
    init_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LOCATE's k-means (fast-pytorch-kmeans 0.2.2, full batch, Euclidean), on a padded batch of point sets.

    Per sample with at least ``k`` points, exactly as the library's ``fit_predict``:

    1. start: ``k`` of the sample's points drawn with replacement (:func:`locate_init_index`, or ``init_index``);
    2. assign every point to ``argmax_j (2 x·c_j − |x|² − |c_j|²)``, the lowest index on ties (so of two equal
       centroids the second gets no point);
    3. move every centroid to the mean of its points; an empty cluster becomes the zero vector (the library's
       0 / 0 turned to 0 by ``nan_to_num``), it does not keep its centroid;
    4. stop the sample when Σ_j |c_j,new − c_j,old|² ≤ ``tol``, checked after the move, so the final centroids are
       the means of the last assignment; at most ``iters`` iterations.

    Samples with fewer than ``k`` points are not clustered (LOCATE skips them) and draw nothing from the RNG.

    Args:
        x: (B, N, D) points (cast to float32, autocast disabled; the published call gets float32 descriptors).
        mask: (B, N) bool, True for real points, False for padding.
        k: number of clusters.
        iters: maximum number of iterations (LOCATE: 300).
        tol: stopping threshold on the summed squared centroid shift (the library's default 1e-4).
        init_index: (B, k) indices of the starting points among each sample's real points, in order (the i-th True
            of its mask); None draws them from the global torch RNG as the published code does. For tests and for
            comparisons with a recorded run.

    Returns:
        centroids: (B, k, D) float32, zeros for samples that were not clustered.
        assign: (B, N) long, the last assignment (made against the previous centroids, as the labels the library
            returns), -1 for padding and for samples that were not clustered.
        valid: (B,) bool, False for samples with fewer than k points.
    """
    if x.dim() != 3:
        raise ValueError(f"batched_kmeans_locate: expected x of shape (B, N, D), got {tuple(x.shape)}")
    if mask.shape != x.shape[:2]:
        raise ValueError(
            f"batched_kmeans_locate: expected mask of shape {tuple(x.shape[:2])} (B, N), got {tuple(mask.shape)}"
        )
    if k < 1 or iters < 0:
        raise ValueError(f"batched_kmeans_locate: expected k >= 1 and iters >= 0, got k={k}, iters={iters}")
    b, n, d = x.shape
    if init_index is not None and tuple(init_index.shape) != (b, k):
        raise ValueError(
            f"batched_kmeans_locate: expected init_index of shape {(b, k)} (B, k), got {tuple(init_index.shape)}"
        )
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        x = x.detach().float()
        mask = mask.to(device=x.device, dtype=torch.bool)
        counts = mask.sum(dim=1)  # (B,)
        valid = counts >= k
        if init_index is None:
            init_index = locate_init_index(counts, k)
        init_index = init_index.to(device=x.device, dtype=torch.long)
        if b == 0 or n == 0 or not bool(valid.any()):
            return x.new_zeros(b, k, d), torch.full((b, n), -1, dtype=torch.long, device=x.device), valid
        bad = valid & ((init_index < 0) | (init_index >= counts.unsqueeze(1))).any(dim=1)
        if bool(bad.any()):
            raise ValueError(
                f"batched_kmeans_locate: init_index of samples {torch.nonzero(bad).flatten().tolist()} points outside "
                f"their {counts[bad].tolist()} points"
            )
        x = torch.where(mask.unsqueeze(-1), x, x.new_zeros(()))  # padding: zeros, never NaN/inf
        x_sq = x.square().sum(-1)  # (B, N)
        work_mask = mask & valid.unsqueeze(1)
        # The i-th real point of a sample sits at the i-th position of a stable sort that puts real points first.
        order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)  # (B, N)
        start = order.gather(1, init_index.clamp_min(0).clamp_max(max(n - 1, 0)))  # (B, k) positions
        centroids = x.gather(1, start.unsqueeze(-1).expand(b, k, d))  # (B, k, D)
        assign = torch.full((b, n), -1, dtype=torch.long, device=x.device)
        active = valid.clone()
        it = 0
        for it in range(1, iters + 1):  # noqa: B007 (it is logged after the loop)
            closest = _euclidean_similarity(x, x_sq, centroids).argmax(dim=-1)  # (B, N), first index on ties
            member = F.one_hot(closest, k).to(x.dtype) * work_mask.unsqueeze(-1).to(x.dtype)  # (B, N, k)
            sums = einsum(member, x, "b n k, b n d -> b k d")
            moved = torch.nan_to_num(sums / member.sum(dim=1).unsqueeze(-1))  # (B, k, D), empty cluster: 0/0 -> 0
            error = (moved - centroids).square().sum(dim=(1, 2))  # (B,) summed squared shift
            centroids = torch.where(active.view(b, 1, 1), moved, centroids)  # stopped samples keep theirs
            assign = torch.where(active.unsqueeze(1), closest, assign)
            active = active & ~(error <= tol)
            if not bool(active.any()):
                break
        logger.debug("batched_kmeans_locate: %d samples, %d clustered, %d iterations", b, int(valid.sum()), it)
        centroids = torch.where(valid.view(b, 1, 1), centroids, centroids.new_zeros(()))
        assign = torch.where(work_mask, assign, torch.full_like(assign, -1))
        return centroids, assign, valid
