"""What the model's parts hand each other and the outside world: small dataclasses with documented shapes.

Notation: b samples, n exocentric images per sample, C classes, D descriptor width, K part clusters, (h, w) the
patch grid, (H', W') the requested output size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["EgoOutput", "Features", "GrounderOutput", "PartSelection", "Prediction", "SaliencyOutput"]


class _Fields:
    """``get(name)``: a field by name, or ``default`` when this output has no such field (for pictures that draw
    whatever maps an output holds)."""

    def get(self, key: str, default: object = None) -> object:
        return getattr(self, key, default)


@dataclass
class Features(_Fields):
    """What the frozen backbone (plus any descriptor extension) gives for a batch of images.

    Attributes:
        descriptors: (B, D, h, w) patch descriptors (the last block's keys, or the final normed tokens).
        cls_attn: (B, heads, h, w) the CLS query's attention over the patches in the last block.
    """

    descriptors: torch.Tensor
    cls_attn: torch.Tensor

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Features:
        """Both tensors moved to ``device`` and/or cast to ``dtype`` (non-blocking from pinned memory)."""
        return Features(
            self.descriptors.to(device=device, dtype=dtype, non_blocking=True),
            self.cls_attn.to(device=device, dtype=dtype, non_blocking=True),
        )

    def split(self, sizes: list[int]) -> list[Features]:
        """Split along the batch axis into consecutive chunks of the given sizes."""
        desc, attn = self.descriptors.split(sizes), self.cls_attn.split(sizes)
        return [Features(d, a) for d, a in zip(desc, attn)]


@dataclass
class PartSelection(_Fields):
    """Each sample's part prototype among the k-means clusters of its exocentric CAM region.

    Attributes:
        prototypes: (b, D) L2-normalised centroid of the selected cluster; zeros where ``has_prototype`` is False.
        has_prototype: (b,) bool, True when the sample had at least K selected patches and its best cluster passed
            the selection rule.
        part_scores: (b, K) the score of every cluster under the selection rule (zeros without clusters).
        part_sim: (b, K, h, w) min-max normalised cosine maps of the centroids on the ego descriptors, in [0, 1].
        best: (b,) long, index of the best-scoring cluster (0 for samples without clusters).
        centroids: (b, K, D) raw k-means centroids, zeros for samples without clusters.
    """

    prototypes: torch.Tensor
    has_prototype: torch.Tensor
    part_scores: torch.Tensor
    part_sim: torch.Tensor
    best: torch.Tensor
    centroids: torch.Tensor


@dataclass
class SaliencyOutput(_Fields):
    """The egocentric object saliency and what it was made from.

    Attributes:
        saliency: (b, h, w) in [0, 1], the map the part prototypes are scored against.
        head_masks: (b, heads, h, w) every CLS-attention head binarised at its mean.
        selected_head: (b,) long, the text-selected head (-1 with LOCATE's fixed heads).
        attnpool_mask: (b, h, w) the AttentionPool2d mask binarised at its mean, or None.
    """

    saliency: torch.Tensor
    head_masks: torch.Tensor
    selected_head: torch.Tensor
    attnpool_mask: torch.Tensor | None


@dataclass
class EgoOutput(_Fields):
    """The egocentric branch for one batch.

    Attributes:
        adapter: (b, D, h, w) ``aff_proj`` output (before any text gating).
        projection: (b, D, h, w) ``aff_ego_proj`` output.
        ego_pred: (b, C, h, w) class activation maps (``aff_fc``).
        logits: (b, C) pooled class maps.
        saliency: the :class:`SaliencyOutput`.
        image_feature: (b, D) AttentionPool2d's pooled feature (with a text encoder), else None.
    """

    adapter: torch.Tensor
    projection: torch.Tensor
    ego_pred: torch.Tensor
    logits: torch.Tensor
    saliency: SaliencyOutput
    image_feature: torch.Tensor | None


@dataclass
class GrounderOutput(_Fields):
    """Everything one training (or validation) forward pass computes; the criterion turns it into losses.

    Attributes:
        label: (b,) long, the samples' affordance labels.
        aff_cam: (b·n, C, h, w) exocentric class activation maps.
        gt_aff_cam: (b, n, h, w) each exocentric image's map of its sample's label.
        logits_exo: (b, n, C) pooled exocentric maps.
        ego_pred: (b, C, h, w) egocentric class activation maps.
        gt_ego_cam: (b, h, w) the label's egocentric map, min-max normalised (float32).
        logits_ego: (b, C) pooled egocentric maps.
        cls_attn: (b, heads, h, w) the egocentric CLS attention.
        saliency: (b, h, w), head_masks, selected_head, attnpool_mask: see :class:`SaliencyOutput`.
        parts: the :class:`PartSelection`.
        ego_proto_desc: (b, D, h, w) the egocentric descriptors in the space the prototypes live in.
        image_feature: (b, D) pooled image feature (with a text encoder), else None.
        text_features: (C, D) every class's text feature (with a text encoder), else None.
        logit_scale: the (exponentiated) image-text logit scale (with a text encoder), else None.
    """

    label: torch.Tensor
    aff_cam: torch.Tensor
    gt_aff_cam: torch.Tensor
    logits_exo: torch.Tensor
    ego_pred: torch.Tensor
    gt_ego_cam: torch.Tensor
    logits_ego: torch.Tensor
    cls_attn: torch.Tensor
    saliency: torch.Tensor
    head_masks: torch.Tensor
    selected_head: torch.Tensor
    attnpool_mask: torch.Tensor | None
    parts: PartSelection
    ego_proto_desc: torch.Tensor
    image_feature: torch.Tensor | None
    text_features: torch.Tensor | None
    logit_scale: torch.Tensor | None

    def get(self, key: str, default: object = None) -> object:
        """A field, or a field of :attr:`parts` (``part_sim``, ``part_scores``, ``has_prototype``, ...)."""
        if hasattr(self, key):
            return getattr(self, key)
        return getattr(self.parts, key, default)


@dataclass
class Prediction(_Fields):
    """What :meth:`models.grounder.Grounder.predict` returns.

    Attributes:
        maps: (b, H', W') the queried affordances' heatmaps in [0, 1], or None in the label-free mode.
        all_maps: (b, C, H', W') every class's heatmap in [0, 1] in the label-free mode, else None.
        pred_label: (b,) long, the predicted class in the label-free mode, else None.
        probs: (b, C) class probabilities (softmax of the egocentric logits).
        logits: (b, C) egocentric logits.
        ego_pred: (b, C, h, w) raw class activation maps.
        cls_attn: (b, heads, h, w); saliency (b, h, w); head_masks; selected_head; attnpool_mask: the saliency.
        features: with ``return_features``: ``descriptors``, ``adapter``, ``projection`` and ``cam`` grids.
    """

    maps: torch.Tensor | None
    all_maps: torch.Tensor | None
    pred_label: torch.Tensor | None
    probs: torch.Tensor
    logits: torch.Tensor
    ego_pred: torch.Tensor
    cls_attn: torch.Tensor
    saliency: torch.Tensor
    head_masks: torch.Tensor
    selected_head: torch.Tensor
    attnpool_mask: torch.Tensor | None
    features: dict[str, torch.Tensor] | None = None
