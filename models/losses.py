"""Training losses of LOCATE (Li et al., CVPR 2023) and BiT-Align (IROS 2025), batched and in float32.

L = CE_ego + mean_n CE_exo + λ_proto · L_proto + λ_conc · L_conc (+ λ_contra · L_contra):

- :func:`classification_losses`: cross-entropy of the egocentric logits and the mean over the n exocentric images.
- :func:`prototype_loss`: the egocentric descriptors pooled with the (min-max) label CAM as weights should point
  towards the sample's part prototype: max(0, 1 − cos(embedding, prototype) − margin), over samples with one.
- :func:`concentration_loss` (SCOPS, Hung et al., CVPR 2019): every class map becomes a spatial distribution
  (min-max, + 1e-3, / sum) on coordinates in [−1, 1); its spatial variance is penalised.
- :func:`contrastive_loss`: CE over logit_scale · cos(image feature, text feature of each class) / temperature.
- :func:`border_loss` (ours, not in LOCATE): the boundary prior of saliency detection, for object-centred
  egocentric images: the share of the label map's spatial distribution that lies on the outermost ring of patches.
- :func:`separation_loss` (ours, not in LOCATE): the maps of the classes an egocentric image is predicted to afford
  should cover different places. LOCATE's maps for "hold" and "cut_with" on a knife come out nearly the same, because
  nothing in its losses tells them apart; this term penalises their overlap.

Every function disables autocast and casts to float32, and every division that a zero mask can reach is guarded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from einops import einsum

from utils.maps import normalize_minmax

__all__ = [
    "border_loss",
    "classification_losses",
    "concentration_loss",
    "contrastive_loss",
    "fp32",
    "prototype_loss",
    "separation_loss",
    "weighted_pool",
]


@contextlib.contextmanager
def fp32(device: torch.device | str) -> Iterator[None]:
    """Disable autocast on ``device``'s type so that the enclosed arithmetic runs in the inputs' dtype (float32)."""
    device_type = torch.device(device).type
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def classification_losses(
    logits_ego: torch.Tensor, logits_exo: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the egocentric logits, and the mean cross-entropy over every exocentric image.

    Args:
        logits_ego: (B, C) egocentric logits.
        logits_exo: (B, n, C) exocentric logits.
        labels: (B,) int64 class indices.

    Returns:
        ``(ce_ego, ce_exo)``, 0-d tensors; ``ce_exo`` = mean over the n views of each view's batch-mean CE.
    """
    b, n, c = logits_exo.shape
    with fp32(logits_ego.device):
        ce_ego = F.cross_entropy(logits_ego.float(), labels)
        # Every view has the same number of samples, so the mean over all (b, n) equals the mean of per-view means.
        ce_exo = F.cross_entropy(logits_exo.float().reshape(b * n, c), labels.repeat_interleave(n))
    return ce_ego, ce_exo


def weighted_pool(features: torch.Tensor, weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Average features with per-position weights: Σ w·f / Σ w, guarded for an all-zero weight map.

    Args:
        features: (B, D, h, w).
        weights: (B, h, w) or (B, K, h, w) non-negative weights.
        eps: lower bound of the denominator (an all-zero map gives a zero vector, not NaN).

    Returns:
        (B, D) or (B, K, D) pooled features.
    """
    if weights.dim() == 3:
        num = einsum(features, weights, "b d h w, b h w -> b d")
        return num / weights.sum(dim=(-2, -1)).clamp_min(eps).unsqueeze(-1)
    num = einsum(features, weights, "b d h w, b k h w -> b k d")
    return num / weights.sum(dim=(-2, -1)).clamp_min(eps).unsqueeze(-1)


def prototype_loss(
    ego_desc: torch.Tensor,
    ego_cam: torch.Tensor,
    prototypes: torch.Tensor,
    has_prototype: torch.Tensor,
    margin: float = 0.5,
    eps: float = 1e-12,
) -> torch.Tensor:
    """LOCATE's part-prototype hinge loss, averaged over the samples that have a prototype (0 when none has).

    Args:
        ego_desc: (B, D, h, w) egocentric descriptors (frozen).
        ego_cam: (B, h, w) the label's egocentric CAM in [0, 1] (``gt_ego_cam``); it carries the gradient.
        prototypes: (B, D) part prototypes (zero rows where there is none).
        has_prototype: (B,) bool.
        margin: hinge margin (LOCATE: 0.5).
        eps: guard of the pooling denominator.

    Returns:
        0-d float32 tensor: mean over valid samples of max(0, 1 − cos(embedding, prototype) − margin).
    """
    with fp32(ego_desc.device):
        emb = weighted_pool(ego_desc.float(), ego_cam.float(), eps)  # (B, D)
        cos = F.cosine_similarity(emb, prototypes.float(), dim=-1, eps=1e-8)  # (B,)
        per_sample = (1.0 - cos - margin).clamp_min(0.0)
        valid = has_prototype.float()
        return (per_sample * valid).sum() / valid.sum().clamp_min(1.0)


def _spatial_distribution(maps: torch.Tensor, eps: float) -> torch.Tensor:
    """Every (raw) map as a distribution over its positions: min-max, + ``eps``, divided by its sum (float32)."""
    p = normalize_minmax(maps.float()) + eps
    return p / p.sum(dim=(-2, -1), keepdim=True)


def concentration_loss(maps: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Spatial variance of every class map seen as a distribution (SCOPS; LOCATE applies it to all ego maps).

    Each map is min-max normalised, shifted by ``eps`` (so a flat map still has a finite gradient), divided by its
    sum, and its variance around its centroid on coordinates x_j = −1 + 2j/w, y_i = −1 + 2i/h is taken.

    Args:
        maps: (B, C, h, w) class activation maps (raw).
        eps: shift added after the min-max (SCOPS: 1e-3).

    Returns:
        0-d float32 tensor, the mean over (B, C) of Var_x + Var_y.
    """
    with fp32(maps.device):
        h, w = maps.shape[-2:]
        p = _spatial_distribution(maps, eps)  # (B, C, h, w), sums to 1
        ys = torch.arange(h, device=maps.device, dtype=torch.float32) / h * 2.0 - 1.0  # (h,)
        xs = torch.arange(w, device=maps.device, dtype=torch.float32) / w * 2.0 - 1.0  # (w,)
        py, px = p.sum(dim=-1), p.sum(dim=-2)  # (B, C, h), (B, C, w) marginals
        cy = (py * ys).sum(-1, keepdim=True)  # (B, C, 1)
        cx = (px * xs).sum(-1, keepdim=True)
        var = (py * (ys - cy).square()).sum(-1) + (px * (xs - cx).square()).sum(-1)  # (B, C)
        return var.mean()


def contrastive_loss(
    image_feat: torch.Tensor,
    text_feats: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: torch.Tensor | float,
    temperature: float = 0.5,
) -> torch.Tensor:
    """BiT-Align's image-text loss: CE over logit_scale · cos(image feature, each class's text feature) / temperature.

    Args:
        image_feat: (B, D) pooled image features.
        text_feats: (C, D) text features of every class.
        labels: (B,) int64.
        logit_scale: the (already exponentiated) multiplier.
        temperature: divides the scaled cosines (BiT-Align: 0.5).

    Returns:
        0-d float32 tensor.
    """
    with fp32(image_feat.device):
        img = F.normalize(image_feat.float(), dim=-1)
        txt = F.normalize(text_feats.float(), dim=-1)
        scale = logit_scale.float() if isinstance(logit_scale, torch.Tensor) else logit_scale
        logits = scale * (img @ txt.t()) / temperature  # (B, C)
        return F.cross_entropy(logits, labels)


def separation_loss(maps: torch.Tensor, logits: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Overlap of the class maps of the affordances an image is predicted to have, weighted by their probabilities.

    Each map becomes a spatial distribution as in :func:`concentration_loss` (min-max, + ``eps``, / sum); the overlap
    of classes c and c' is their histogram intersection Σ_x min(p_c(x), p_c'(x)) in [0, 1]. With q = softmax(logits)
    (detached: the term moves the maps, not the classifier), the loss is

        Σ_{c ≠ c'} q_c q_c' · overlap(c, c') / Σ_{c ≠ c'} q_c q_c',

    a weighted mean of overlaps over the batch: a pair counts in proportion to how likely both classes are, so an image
    that is half "hold", half "cut_with" (a knife: the image alone cannot tell which of its affordances was asked)
    pushes those two maps apart, while a confidently single-class image hardly counts.

    Args:
        maps: (B, C, h, w) raw class activation maps.
        logits: (B, C) the image's class logits.
        eps: shift added after the min-max.

    Returns:
        0-d float32 tensor in [0, 1].
    """
    with fp32(maps.device):
        p = _spatial_distribution(maps, eps).flatten(2)  # (B, C, hw), each row sums to 1
        q = logits.detach().float().softmax(dim=-1)  # (B, C)
        overlap = torch.minimum(p.unsqueeze(2), p.unsqueeze(1)).sum(dim=-1)  # (B, C, C)
        pair = q.unsqueeze(2) * q.unsqueeze(1)  # (B, C, C)
        off = 1.0 - torch.eye(q.shape[1], device=q.device, dtype=q.dtype)
        pair = pair * off
        return (pair * overlap).sum() / pair.sum().clamp_min(1e-12)


def border_loss(maps: torch.Tensor, labels: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Share of each label map's spatial distribution on the outermost ring of the patch grid (ours).

    The boundary prior of saliency detection: an egocentric image shows one object, roughly centred, so the patches
    along its border are mostly background. Each sample's label map becomes a distribution as in
    :func:`concentration_loss` (min-max, + ``eps``, / sum) and the mass on the ring of patches that touch the image
    border is averaged over the batch. Background patches inside the image look like those on the border, so the
    class maps learn to stay low on background everywhere, which average pooling would otherwise reward for classes
    whose objects are thin (GAP grows with the background a class's images have).

    Args:
        maps: (B, C, h, w) raw egocentric class maps, h and w at least 3.
        labels: (B,) int64 class of each image.
        eps: shift added after the min-max.

    Returns:
        0-d float32 tensor in [0, 1]; a uniform map scores the ring's share of the positions.
    """
    if maps.dim() != 4 or maps.shape[-1] < 3 or maps.shape[-2] < 3:
        raise ValueError(f"border_loss: expected maps (B, C, h, w) with h, w >= 3, got {tuple(maps.shape)}")
    with fp32(maps.device):
        b, _, h, w = maps.shape
        index = labels.view(b, 1, 1, 1).expand(b, 1, h, w)
        p = _spatial_distribution(maps.float().gather(1, index), eps)  # (B, 1, h, w)
        ring = torch.ones(h, w, device=maps.device)
        ring[1:-1, 1:-1] = 0
        return (p * ring).sum(dim=(-3, -2, -1)).mean()
