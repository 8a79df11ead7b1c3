"""LOCATE's part prototypes: cluster exocentric interaction patches and keep the cluster that looks like an object part.

Li et al., "LOCATE: Localize and Transfer Object Parts for Weakly Supervised Affordance Grounding", CVPR 2023, §3.2.
Per sample, the raw descriptors of the exocentric patches whose (min-max normalised) affordance CAM exceeds
``cam_thd`` are clustered into K = 3 groups (human, object part, background). Each L2-normalised centroid gives a
cosine-similarity map on the egocentric image, binarised at its mean (S_k); the egocentric saliency binarised at its
mean (A) scores each cluster with

    p_k = ½ (|S_k ∩ A| / |S_k| + |A| / |S_k ∪ A|),

and the best cluster becomes the sample's part prototype when max_k p_k ≥ ``iou_thd``.

Everything here is batched: samples are padded to a common number of points and carried with a validity mask, and
the only Python loops run over k-means++ seeding steps (K of them) and Lloyd iterations. The outputs are training
*targets*, so they are computed without gradients and in float32 whatever the autocast state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import einsum, rearrange

from models.losses import weighted_pool
from utils.maps import normalize_minmax

__all__ = [
    "ClassPatchBank",
    "PartSelection",
    "batched_kmeans",
    "contrast_selection",
    "kmeans_init_keys",
    "mask_prototypes",
    "part_iou_scores",
    "select_part_prototypes",
]

logger = logging.getLogger(__name__)


@dataclass
class PartSelection:
    """What :func:`select_part_prototypes` found for each sample of a batch.

    Attributes:
        prototypes: (B, D) L2-normalised centroid of the selected part cluster; zeros where ``has_prototype`` is False.
        has_prototype: (B,) bool, True when the sample had at least K selected patches and max score ≥ ``iou_thd``.
        part_scores: (B, K) the PartIoU score p_k of every cluster (zeros for samples without clusters).
        part_sim: (B, K, h, w) min-max normalised cosine-similarity maps of the centroids on the ego descriptors,
            in [0, 1] (zeros for samples without clusters).
        best: (B,) long, index of the highest-scoring cluster (0 for samples without clusters).
        centroids: (B, K, D) raw (not normalised) k-means centroids, zeros for samples without clusters.
    """

    prototypes: torch.Tensor
    has_prototype: torch.Tensor
    part_scores: torch.Tensor
    part_sim: torch.Tensor
    best: torch.Tensor
    centroids: torch.Tensor


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


def part_iou_scores(part_masks: torch.Tensor, saliency_mask: torch.Tensor) -> torch.Tensor:
    """LOCATE's PartIoU score of every part mask against the saliency mask.

    p_k = ½ (|S_k ∩ A| / |S_k| + |A| / |S_k ∪ A|): the first term is the fraction of the part inside the salient
    object, the second rewards parts that cover little beyond it. An empty part mask (|S_k| = 0) scores 0 (the
    published code divides by zero there); then |S_k ∪ A| = |A| and the score is otherwise undefined.

    Args:
        part_masks: (B, K, h, w) bool (or {0, 1}) part masks S_k.
        saliency_mask: (B, h, w) bool (or {0, 1}) saliency mask A.

    Returns:
        (B, K) float32 scores in [0, 1].
    """
    if part_masks.dim() != 4 or saliency_mask.dim() != 3 or part_masks.shape[0] != saliency_mask.shape[0]:
        raise ValueError(
            "part_iou_scores: expected part_masks (B, K, h, w) and saliency_mask (B, h, w), got "
            f"{tuple(part_masks.shape)} and {tuple(saliency_mask.shape)}"
        )
    if part_masks.shape[-2:] != saliency_mask.shape[-2:]:
        raise ValueError(
            f"part_iou_scores: grid sizes differ, part_masks {tuple(part_masks.shape[-2:])} vs saliency_mask "
            f"{tuple(saliency_mask.shape[-2:])}; resize one of them first"
        )
    s = part_masks.bool()
    a = saliency_mask.bool().unsqueeze(1)  # (B, 1, h, w)
    size_s = s.sum(dim=(-2, -1)).float()  # (B, K)
    size_a = a.sum(dim=(-2, -1)).float()  # (B, 1)
    inter = (s & a).sum(dim=(-2, -1)).float()  # (B, K)
    union = size_s + size_a - inter
    score = 0.5 * (inter / size_s.clamp_min(1.0) + size_a / union.clamp_min(1.0))
    return torch.where(size_s > 0, score, torch.zeros_like(score))


def select_part_prototypes(
    exo_desc: torch.Tensor,
    exo_cam: torch.Tensor,
    ego_desc: torch.Tensor,
    ego_saliency: torch.Tensor,
    cam_thd: float = 0.6,
    iou_thd: float = 0.6,
    k: int = 3,
    iters: int = 300,
    seed: int = 0,
) -> PartSelection:
    """Find each sample's part prototype from its exocentric CAMs (LOCATE, CVPR 2023, §3.2), batched.

    Args:
        exo_desc: (B, n, D, h, w) raw exocentric descriptors.
        exo_cam: (B, n, h, w) raw exocentric CAMs of the sample's label (``gt_aff_cam``); min-max normalised here.
        ego_desc: (B, D, h, w) raw egocentric descriptors.
        ego_saliency: (B, h, w) egocentric saliency in [0, 1] (binarised here at its mean).
        cam_thd: patches whose normalised exo CAM is strictly above this are clustered.
        iou_thd: minimum best PartIoU score for a sample to get a prototype.
        k: number of clusters.
        iters: maximum Lloyd iterations.
        seed: k-means seed.

    Returns:
        A :class:`PartSelection`; every tensor is float32/bool/long, detached.
    """
    if exo_desc.dim() != 5 or exo_cam.dim() != 4:
        raise ValueError(
            "select_part_prototypes: expected exo_desc (B, n, D, h, w) and exo_cam (B, n, h, w), got "
            f"{tuple(exo_desc.shape)} and {tuple(exo_cam.shape)}"
        )
    b, n, d, h, w = exo_desc.shape
    if exo_cam.shape != (b, n, h, w):
        raise ValueError(
            f"select_part_prototypes: expected exo_cam of shape {(b, n, h, w)}, got {tuple(exo_cam.shape)}"
        )
    if ego_desc.shape[:2] != (b, d) or ego_desc.dim() != 4:
        raise ValueError(
            f"select_part_prototypes: expected ego_desc of shape ({b}, {d}, h', w'), got {tuple(ego_desc.shape)}"
        )
    eh, ew = ego_desc.shape[-2:]
    if ego_saliency.shape != (b, eh, ew):
        raise ValueError(
            f"select_part_prototypes: expected ego_saliency of shape {(b, eh, ew)}, got {tuple(ego_saliency.shape)}"
        )
    with torch.no_grad(), torch.autocast(device_type=exo_desc.device.type, enabled=False):
        exo_desc = exo_desc.detach().float()
        cam = normalize_minmax(exo_cam.detach().float())  # (B, n, h, w)
        points = rearrange(exo_desc, "b n d h w -> b (n h w) d")
        mask = rearrange(cam > cam_thd, "b n h w -> b (n h w)")
        centroids, _, valid = batched_kmeans(points, mask, k=k, iters=iters, seed=seed)  # (B, K, D)
        protos = F.normalize(centroids, dim=-1)  # (B, K, D); zero rows stay zero

        ego = F.normalize(ego_desc.detach().float(), dim=1)  # (B, D, h', w')
        sim = einsum(protos, ego, "b k d, b d h w -> b k h w")
        part_sim = normalize_minmax(sim)  # (B, K, h', w')
        part_sim = torch.where(valid.view(b, 1, 1, 1), part_sim, part_sim.new_zeros(()))
        part_masks = part_sim > part_sim.mean(dim=(-2, -1), keepdim=True)
        sal = ego_saliency.detach().float()
        sal_mask = sal > sal.mean(dim=(-2, -1), keepdim=True)
        scores = part_iou_scores(part_masks, sal_mask) * valid.unsqueeze(1)  # (B, K)

        best_score, best = scores.max(dim=1)  # (B,), (B,)
        has_prototype = valid & (best_score >= iou_thd)
        chosen = protos[torch.arange(b, device=protos.device), best]  # (B, D)
        prototypes = torch.where(has_prototype.unsqueeze(1), chosen, chosen.new_zeros(()))
    return PartSelection(
        prototypes=prototypes,
        has_prototype=has_prototype,
        part_scores=scores,
        part_sim=part_sim,
        best=best,
        centroids=centroids,
    )


@torch.no_grad()
def mask_prototypes(desc: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The *true* part prototype of each image: its descriptors averaged inside a part mask, L2-normalised.

    Only the synthetic world has part masks; this serves the ``oracle_prototypes`` diagnostic and
    utils/tools/part_diagnostics.py, never the method.

    Args:
        desc: (B, D, h, w) descriptors (in the space the prototypes are compared in).
        mask: (B, H, W) part masks in [0, 1] at image resolution; area-averaged to the (h, w) grid.

    Returns:
        ``(prototypes (B, D) float32, weights (B, h, w))``; a row whose mask misses the grid is zero.
    """
    h, w = desc.shape[-2:]
    weights = F.adaptive_avg_pool2d(mask.to(desc.device).float().unsqueeze(1), (h, w)).squeeze(1)
    with torch.autocast(device_type=desc.device.type, enabled=False):
        return F.normalize(weighted_pool(desc.float(), weights), dim=-1), weights


class ClassPatchBank:
    """The patch descriptors of the last ``size`` egocentric images of every class, for :func:`contrast_selection`.

    Descriptors are stored detached and L2-normalised per patch, as (D, h·w) tensors on the device they came from.
    The bank is working memory of the training loop, not a parameter: it is not saved in checkpoints and refills in
    the first steps after a resume (until a class has an image, its samples keep the PartIoU choice).

    Args:
        num_classes: C.
        size: images kept per class (the oldest is dropped first).
    """

    def __init__(self, num_classes: int, size: int) -> None:
        if num_classes < 1 or size < 1:
            raise ValueError(f"ClassPatchBank: expected num_classes >= 1 and size >= 1, got {num_classes}, {size}")
        self.num_classes = num_classes
        self.size = size
        self.items: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]

    def __len__(self) -> int:
        return sum(len(v) for v in self.items)

    def clear(self) -> None:
        self.items = [[] for _ in range(self.num_classes)]

    @torch.no_grad()
    def add(self, desc: torch.Tensor, labels: torch.Tensor) -> None:
        """Store every image of a batch: ``desc`` (B, D, h, w), ``labels`` (B,) int64."""
        flat = F.normalize(desc.detach().float().flatten(2), dim=1)  # (B, D, hw)
        for j, c in enumerate(labels.tolist()):
            bank = self.items[int(c)]
            bank.append(flat[j])
            if len(bank) > self.size:
                bank.pop(0)

    @torch.no_grad()
    def presence(self, protos: torch.Tensor, topk: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
        """How visible each candidate is in each class's stored images.

        Args:
            protos: (B, K, D) L2-normalised candidate prototypes.
            topk: the presence of a candidate in one image is the mean of its ``topk`` highest patch cosines.

        Returns:
            ``(presence, known)``: (B, C, K) float32, a candidate's presence averaged over the class's images (0 for
            classes without images), and (C,) bool, the classes that have images.
        """
        b, k, _ = protos.shape
        out = protos.new_zeros(b, self.num_classes, k, dtype=torch.float32)
        known = torch.zeros(self.num_classes, dtype=torch.bool, device=protos.device)
        for c, stored in enumerate(self.items):
            if not stored:
                continue
            shapes = {t.shape for t in stored}
            groups = [torch.stack(stored)] if len(shapes) == 1 else [t.unsqueeze(0) for t in stored]
            per_image = []
            for g in groups:  # (m, D, hw)
                cos = einsum(protos.float(), g.to(protos.device), "b k d, m d n -> b m k n")
                per_image.append(cos.topk(min(topk, cos.shape[-1]), dim=-1).values.mean(dim=-1))  # (b, m, K)
            out[:, c] = torch.cat(per_image, dim=1).mean(dim=1)
            known[c] = True
        return out, known


@torch.no_grad()
def contrast_selection(
    parts: PartSelection, presence: torch.Tensor, known: torch.Tensor, labels: torch.Tensor, weight: float = 0.5
) -> PartSelection:
    """Choose each sample's part by how much more visible it is in its own class than in any other class (ours).

    PartIoU keeps the cluster that overlaps the egocentric saliency most, which is the whole object, or the
    background, as often as the part. This rule scores cluster k of a sample of class a by

        presence_a(k) − weight · max_{c ≠ a} presence_c(k),

    with presence from :meth:`ClassPatchBank.presence`: the background is present in every class's images and the
    food of "cut_with" or the person in none, so both score about 0 or below, while the blade, found on the objects
    of "cut_with" and on few others, scores high. A sample gets a prototype when its best score is above 0.

    Args:
        parts: the PartIoU selection (its ``centroids`` are the candidates).
        presence: (B, C, K) from :meth:`ClassPatchBank.presence` of the normalised centroids.
        known: (C,) bool, the classes the bank has images of.
        labels: (B,) int64 class of each sample.
        weight: how much a candidate's presence in the other classes counts against it.

    Returns:
        A new :class:`PartSelection`: ``best``, ``has_prototype``, ``prototypes`` and (for the samples it chose)
        ``part_scores`` come from this rule; samples whose class the bank has no image of, or that have no
        clusters, keep PartIoU's.
    """
    b, c, _ = presence.shape
    rows = torch.arange(b, device=presence.device)
    own = presence[rows, labels]  # (B, K)
    is_other = known.view(1, c).expand(b, c).clone()
    is_other[rows, labels] = False
    others = presence.masked_fill(~is_other.unsqueeze(-1), float("-inf")).max(dim=1).values  # (B, K)
    others = torch.where(torch.isfinite(others), others, torch.zeros_like(others))
    score = own - weight * others
    valid = parts.centroids.abs().sum(dim=(1, 2)) > 0
    usable = valid & known[labels]
    top, choice = score.max(dim=1)
    best = torch.where(usable, choice, parts.best)
    has = torch.where(usable, top > 0, parts.has_prototype)
    protos = F.normalize(parts.centroids, dim=-1)
    chosen = protos[rows, best]
    return PartSelection(
        prototypes=torch.where(has.unsqueeze(1), chosen, chosen.new_zeros(())),
        has_prototype=has,
        part_scores=torch.where(usable.unsqueeze(1), score, parts.part_scores),
        part_sim=parts.part_sim,
        best=best,
        centroids=parts.centroids,
    )
