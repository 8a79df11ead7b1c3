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

Two k-means (``kmeans``): our seeded k-means++ (``kmeanspp``), or LOCATE's fast-pytorch-kmeans (``locate``, see
:mod:`models.kmeans`) together with what the published code then does with an empty part mask. There an empty
cluster is a zero centroid, whose similarity map is constant, so its mask S_k is empty and the published score
divides 0 by 0: p_k is NaN, ``max p < thd`` is False, ``argmax`` returns the (first) NaN index, and the chosen
prototype is that zero centroid, which the published loss then skips. ``locate`` reproduces this without a NaN: the
first empty part is chosen whatever the other scores, the sample has a prototype only if that part's centroid is
not zero, and its score is stored as 0 (the published ``part_score`` holds NaN there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn

from models.kmeans import batched_kmeans, batched_kmeans_locate
from models.outputs import PartSelection
from utils.maps import normalize_minmax

__all__ = ["KMEANS_VARIANTS", "PartIoUSelector", "PartSelector", "part_iou_scores", "select_part_prototypes"]

KMEANS_VARIANTS: tuple[str, ...] = ("kmeanspp", "locate")
"""Values of ``model.kmeans``."""


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
    kmeans: str = "kmeanspp",
    kmeans_init: torch.Tensor | None = None,
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
        seed: seed of the ``kmeanspp`` start (``locate`` draws from the global torch RNG, as the published code).
        kmeans: ``kmeanspp`` (ours) or ``locate`` (LOCATE's k-means and its empty-part rule, module docstring).
        kmeans_init: with ``locate``, (B, K) indices of the starting points among each sample's clustered patches
            (exocentric image by image, raster order) instead of the RNG draws; for tests and comparisons with a
            recorded published run.

    Returns:
        A :class:`PartSelection`; every tensor is float32/bool/long, detached.
    """
    if kmeans not in KMEANS_VARIANTS:
        raise ValueError(f"select_part_prototypes: kmeans={kmeans!r} is not one of {', '.join(KMEANS_VARIANTS)}")
    if kmeans_init is not None and kmeans != "locate":
        raise ValueError("select_part_prototypes: kmeans_init needs kmeans='locate' (k-means++ draws its own start)")
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
        if kmeans == "locate":
            centroids, _, valid = batched_kmeans_locate(points, mask, k=k, iters=iters, init_index=kmeans_init)
        else:
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
        if kmeans == "locate":
            # The published NaN score of an empty part (module docstring): it wins the argmax and passes the
            # threshold test; the prototype is its centroid, which counts only if it is not zero.
            empty = part_masks.flatten(2).sum(dim=-1) == 0  # (B, K)
            any_empty = valid & empty.any(dim=1)
            best = torch.where(any_empty, empty.to(torch.uint8).argmax(dim=1), best)  # first empty part
            has_prototype = has_prototype | any_empty
        chosen = protos[torch.arange(b, device=protos.device), best]  # (B, D)
        if kmeans == "locate":
            has_prototype = has_prototype & (chosen != 0).any(dim=1)
        prototypes = torch.where(has_prototype.unsqueeze(1), chosen, chosen.new_zeros(()))
    return PartSelection(
        prototypes=prototypes,
        has_prototype=has_prototype,
        part_scores=scores,
        part_sim=part_sim,
        best=best,
        centroids=centroids,
    )


class PartSelector(nn.Module):
    """Chooses each sample's part prototype among the k-means clusters of its exocentric CAM region.

    One call per training (or validation) step; implementations may keep state (registered buffers), updated only in
    training mode.
    """

    def forward(
        self,
        exo_desc: torch.Tensor,
        exo_cam: torch.Tensor,
        ego_desc: torch.Tensor,
        ego_saliency: torch.Tensor,
        labels: torch.Tensor,
        batch: dict,
    ) -> PartSelection:
        """Select the prototypes.

        Args:
            exo_desc: (b, n, D, h, w) exocentric descriptors (in the prototype space).
            exo_cam: (b, n, h, w) raw exocentric CAMs of each sample's label (``gt_aff_cam``).
            ego_desc: (b, D, h, w) egocentric descriptors (in the prototype space).
            ego_saliency: (b, h, w) egocentric saliency in [0, 1].
            labels: (b,) long affordance labels.
            batch: the training batch (for selectors that read more of it).
        """
        raise NotImplementedError


class PartIoUSelector(PartSelector):
    """LOCATE's rule (CVPR 2023, §3.2): k-means of the exocentric CAM region, the cluster with the best PartIoU.

    Args:
        cam_thd: normalised exocentric CAM threshold selecting the clustered patches (LOCATE 0.6).
        iou_thd: minimum PartIoU score for a part prototype (LOCATE 0.6).
        num_parts: K, the clusters per sample (LOCATE 3).
        kmeans_iters: maximum Lloyd iterations (LOCATE 300).
        seed: seed of the k-means++ seeding.
        kmeans: ``kmeanspp`` (ours) or ``locate`` (LOCATE's fast-pytorch-kmeans, see :func:`select_part_prototypes`).
    """

    def __init__(
        self,
        cam_thd: float = 0.6,
        iou_thd: float = 0.6,
        num_parts: int = 3,
        kmeans_iters: int = 300,
        seed: int = 0,
        kmeans: str = "kmeanspp",
    ) -> None:
        super().__init__()
        if kmeans not in KMEANS_VARIANTS:
            raise ValueError(f"PartIoUSelector: kmeans={kmeans!r} is not one of {', '.join(KMEANS_VARIANTS)}")
        self.cam_thd, self.iou_thd = float(cam_thd), float(iou_thd)
        self.num_parts, self.kmeans_iters, self.seed = int(num_parts), int(kmeans_iters), int(seed)
        self.kmeans = kmeans

    def forward(
        self,
        exo_desc: torch.Tensor,
        exo_cam: torch.Tensor,
        ego_desc: torch.Tensor,
        ego_saliency: torch.Tensor,
        labels: torch.Tensor,
        batch: dict,
    ) -> PartSelection:
        return select_part_prototypes(
            exo_desc,
            exo_cam,
            ego_desc,
            ego_saliency,
            cam_thd=self.cam_thd,
            iou_thd=self.iou_thd,
            k=self.num_parts,
            iters=self.kmeans_iters,
            seed=self.seed,
            kmeans=self.kmeans,
        )

    def extra_repr(self) -> str:
        return (
            f"cam_thd={self.cam_thd}, iou_thd={self.iou_thd}, num_parts={self.num_parts}, seed={self.seed}, "
            f"kmeans={self.kmeans}"
        )
