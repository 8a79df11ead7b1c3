"""The affordance grounder: LOCATE (Li et al., CVPR 2023) with BiT-Align's (IROS 2025) text-guided options.

Training sample: n exocentric images (people using the object) and one egocentric image (the object alone) sharing
an affordance label. A frozen DINO ViT gives patch descriptors; a shared residual adapter (``aff_proj``) and one
conv stack per view (``aff_exo_proj``/``aff_ego_proj``) feed a shared 1×1 classifier (``aff_fc``) whose channels
are class activation maps; their global average gives the logits. In every exocentric image, the patches the label's
CAM lights up are clustered (k-means, K = 3); the cluster that overlaps the egocentric saliency most like an object
part becomes the sample's *part prototype* (models/parts.py), and the egocentric label CAM is pulled towards it.
Our options, off in the published recipe and on in the offline main job: the cluster chosen by how much more it is
seen in its own class's egocentric images than in other classes' (``part_selection="contrast"``), and a boundary
prior on the egocentric label map (``border_weight``).

Ego saliency is LOCATE's (fixed CLS-attention heads, binarised at their mean, averaged) or BiT-Align's (an
AttentionPool2d mask fused with the CLS head whose masked features agree best with the label's text). BiT-Align also
gates the egocentric tokens by their cosine with the label's text feature, x·σ(s·cos) + x, and adds an image-text
contrastive loss.

Label-free prediction (no affordance given) with text gating or text-guided head selection: both need a label, so
the class predicted by an *ungated* pass of the egocentric head (adapter → aff_ego_proj → aff_fc, no gating) is used
as the condition, and ``pred_label`` reports that class. The maps and logits returned are those of the conditioned
pass. This keeps the features in the distribution seen in training (always gated by one class's text) instead of
gating by a class average, which training never sees.

Open-vocabulary queries (a phrase that is not a class name, with a text encoder): the phrase's text feature
conditions the gating and head selection, and its map is the mixture of the class maps weighted by
softmax(logit_scale · cos(phrase, class text)). A class name gives a one-hot mixture, i.e. exactly its channel.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn

from models.backbone import ViTBackbone
from models.heads import POOLINGS, AffordanceAdapter, AttentionPool2d, class_logits, conv_bn_relu
from models.losses import (
    border_loss,
    classification_losses,
    concentration_loss,
    contrastive_loss,
    prototype_loss,
    separation_loss,
    weighted_pool,
)
from models.parts import ClassPatchBank, contrast_selection, mask_prototypes, select_part_prototypes
from models.text import TextEncoder, build_text_encoder, phrase_key
from utils.maps import normalize_mass, normalize_minmax

if TYPE_CHECKING:
    from utils.config import Config

__all__ = ["SALIENCY_MODES", "Grounder", "binarize_at_mean", "build_model"]

logger = logging.getLogger(__name__)

SALIENCY_MODES = ("locate", "bitalign")
#: How each sample's part prototype is chosen among its k-means clusters (models/parts.py).
PART_SELECTIONS = ("partiou", "contrast")


#: The smallest rate at which a training batch's mean enters the running descriptor mean (``center_descriptors``).
DESC_MEAN_MIN_RATE = 0.01


def binarize_at_mean(maps: torch.Tensor) -> torch.Tensor:
    """{0, 1} float masks of the positions strictly above each map's spatial mean; maps (..., h, w)."""
    return (maps > maps.mean(dim=(-2, -1), keepdim=True)).to(maps.dtype)


class Grounder(nn.Module):
    """LOCATE / BiT-Align affordance grounder (see the module docstring for the method).

    Args:
        class_names: affordance names in label order (C of them).
        backbone: the ViT (frozen unless built trainable).
        text: a text encoder with ``dim`` equal to the descriptor width, or None (LOCATE).
        saliency: "locate" (fixed CLS heads) or "bitalign" (AttentionPool mask + text-selected head; needs ``text``).
        cls_heads: CLS-attention heads averaged by the "locate" saliency (LOCATE: 0, 1, 3).
        text_gating: gate egocentric tokens by their cosine with the label's text feature (needs ``text``).
        num_parts: K, the k-means clusters per sample.
        aff_cam_thd: normalised exocentric CAM threshold selecting the clustered patches.
        part_iou_thd: minimum PartIoU score for a part prototype.
        pooling: how class maps become logits: "gap" (LOCATE) or "topk" (ours; see :func:`models.heads.class_logits`).
        pool_top: the fraction of positions averaged by "topk".
        kmeans_iters: maximum Lloyd iterations.
        kmeans_seed: seed of the k-means++ seeding.
        adapter_ratio: hidden width of ``aff_proj`` as a multiple of the descriptor width.
        proto_weight: λ of the prototype loss.
        conc_weight: λ of the concentration loss.
        sep_weight: λ of the class-map separation loss (ours; 0 in the published recipe).
        contra_weight: λ of the contrastive loss (used only with ``text``).
        proto_warmup_epochs: the prototype loss counts from this (0-based) epoch on.
        proto_margin: hinge margin of the prototype loss.
        contra_temperature: divides the scaled cosines of the contrastive loss.
        oracle_prototypes: a diagnostic, not the method: replace each sample's part prototype by the mean
            egocentric descriptor inside the true affordance part (``batch["ego_part_mask"]``, which only the
            synthetic world provides). It measures how far the part transfer could go with perfect prototypes.
        center_descriptors: subtract the running mean of the descriptors (a buffer, ``desc_mean``) before the part
            prototypes and the prototype loss compare them by cosine (ours; off in the published recipe). The heads
            still see the raw descriptors.
        part_selection: how a sample's prototype is chosen among its clusters: "partiou" (LOCATE) or "contrast"
            (ours, :func:`models.parts.contrast_selection`: the cluster most visible in its own class's egocentric
            images and least in any other class's, from a :class:`models.parts.ClassPatchBank` of recent images).
        part_contrast: with "contrast", the weight of a cluster's presence in the other classes.
        part_bank: with "contrast", the egocentric images kept per class.
        border_weight: λ of the border loss (ours, :func:`models.losses.border_loss`; 0 in the published recipe).
        proj_kernels: kernel size of each convolution of ``aff_exo_proj`` and ``aff_ego_proj`` (LOCATE: 3, 3).
        object_prior: share of the model's own class-agnostic object map mixed into every heatmap that
            :meth:`predict` returns (ours; 0, LOCATE's map alone, in the published recipe); see
            :meth:`mix_object_prior`.
    """

    def __init__(
        self,
        class_names: list[str],
        backbone: ViTBackbone,
        text: TextEncoder | None = None,
        saliency: str = "locate",
        cls_heads: list[int] | tuple[int, ...] = (0, 1, 3),
        text_gating: bool = False,
        num_parts: int = 3,
        aff_cam_thd: float = 0.6,
        part_iou_thd: float = 0.6,
        pooling: str = "gap",
        pool_top: float = 0.2,
        kmeans_iters: int = 300,
        kmeans_seed: int = 0,
        adapter_ratio: int = 4,
        proto_weight: float = 1.0,
        conc_weight: float = 0.07,
        sep_weight: float = 0.0,
        contra_weight: float = 1.0,
        proto_warmup_epochs: int = 1,
        proto_margin: float = 0.5,
        contra_temperature: float = 0.5,
        oracle_prototypes: bool = False,
        center_descriptors: bool = False,
        part_selection: str = "partiou",
        part_contrast: float = 0.5,
        part_bank: int = 8,
        border_weight: float = 0.0,
        proj_kernels: tuple[int, ...] | list[int] = (3, 3),
        object_prior: float = 0.0,
    ) -> None:
        super().__init__()
        if not class_names or isinstance(class_names, str):
            raise ValueError(f"Grounder: expected a non-empty list of class names, got {class_names!r}")
        if part_selection not in PART_SELECTIONS or part_contrast < 0 or part_bank < 1:
            raise ValueError(
                f"Grounder: part_selection must be one of {PART_SELECTIONS}, part_contrast >= 0 and part_bank >= 1, "
                f"got {part_selection!r}, {part_contrast} and {part_bank}"
            )
        if not 0.0 <= object_prior < 1.0:
            raise ValueError(f"Grounder: object_prior is a share in [0, 1), got {object_prior}")
        if pooling not in POOLINGS or not 0 < pool_top <= 1:
            raise ValueError(
                f"Grounder: pooling must be one of {POOLINGS} and pool_top a fraction in (0, 1], got {pooling!r} and "
                f"{pool_top}"
            )
        if saliency not in SALIENCY_MODES:
            raise ValueError(f"Grounder: saliency must be one of {SALIENCY_MODES}, got {saliency!r}")
        if text is None and (saliency == "bitalign" or text_gating):
            raise ValueError(
                "Grounder: saliency='bitalign' and text_gating need a text encoder; pass one (model.text.encoder="
                "clip or learned) or use saliency='locate', text_gating=False"
            )
        heads = list(cls_heads)
        if saliency == "locate" and (not heads or not all(0 <= h < backbone.num_heads for h in heads)):
            raise ValueError(
                f"Grounder: cls_heads {heads} must be a non-empty list of head indices in [0, {backbone.num_heads}) "
                f"for this backbone ({backbone.num_heads} heads); set model.cls_heads accordingly"
            )
        dim = backbone.out_dim
        if text is not None and text.dim != dim:
            raise ValueError(f"Grounder: the text encoder's dim {text.dim} differs from the descriptor width {dim}")
        num_classes = len(class_names)

        self.class_names = list(class_names)
        self.num_classes = num_classes
        self.saliency = saliency
        self.cls_heads = heads
        self.text_gating = text_gating
        self.num_parts = num_parts
        self.aff_cam_thd = aff_cam_thd
        self.part_iou_thd = part_iou_thd
        self.pooling = pooling
        self.pool_top = pool_top
        self.kmeans_iters = kmeans_iters
        self.kmeans_seed = kmeans_seed
        self.object_prior = float(object_prior)
        self.proto_weight = proto_weight
        self.conc_weight = conc_weight
        self.sep_weight = sep_weight
        self.contra_weight = contra_weight
        self.proto_warmup_epochs = proto_warmup_epochs
        self.proto_margin = proto_margin
        self.contra_temperature = contra_temperature
        self.oracle_prototypes = oracle_prototypes
        self.center_descriptors = center_descriptors
        self.part_selection = part_selection
        self.part_contrast = part_contrast
        self.border_weight = border_weight
        # Working memory of part_selection="contrast" (not saved in checkpoints; refills after a resume).
        self.part_bank = ClassPatchBank(num_classes, part_bank) if part_selection == "contrast" else None
        self._class_index = {phrase_key(c): i for i, c in enumerate(self.class_names)}

        self.backbone = backbone
        self.aff_proj = AffordanceAdapter(dim, hidden_ratio=adapter_ratio)
        self.aff_exo_proj = conv_bn_relu(dim, proj_kernels)
        self.aff_ego_proj = conv_bn_relu(dim, proj_kernels)
        self.aff_fc = nn.Conv2d(dim, num_classes, kernel_size=1)
        self.text = text
        if text is not None:
            # The ViT's head count, or its largest divisor that divides the width (appearance channels make it odd).
            pool_heads = math.gcd(dim, backbone.num_heads)
            self.attn_pool = AttentionPool2d(dim, pool_heads, grid_size=backbone.default_grid)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
        else:
            self.attn_pool = None
            self.logit_scale = None
        if center_descriptors:  # only then: checkpoints of models without it keep loading
            self.register_buffer("desc_mean", torch.zeros(dim))  # running mean of the descriptors
            self.register_buffer("desc_mean_count", torch.zeros((), dtype=torch.long))  # training steps seen

    # ------------------------------------------------------------------------------------------- helpers

    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of frozen pretrained modules that checkpoints name but need not store."""
        prefixes: list[str] = []
        if not self.backbone.trainable:
            prefixes.append("backbone.")
        if self.text is not None:
            prefixes += [f"text.{p}" for p in self.text.frozen_prefixes()]
        return tuple(prefixes)

    def _logits(self, cam: torch.Tensor) -> torch.Tensor:
        """Class logits (..., C) of class maps (..., C, h, w), pooled as configured."""
        return class_logits(cam, self.pooling, self.pool_top)

    def _scale(self) -> torch.Tensor:
        # CLIP clamps the learned multiplier at 100 so that the softmax cannot collapse.
        return self.logit_scale.exp().clamp(max=100.0)

    def _gate(self, adapter: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """BiT-Align's text gating x·σ(s·cos(x, t)) + x of (b, D, h, w) tokens with (b, D) text features."""
        cos = einsum(F.normalize(adapter, dim=1), F.normalize(cond.to(adapter.dtype), dim=-1), "b d h w, b d -> b h w")
        gate = torch.sigmoid(self._scale().to(cos.dtype) * cos).unsqueeze(1)  # (b, 1, h, w)
        return adapter * gate + adapter

    def _ego_head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """aff_ego_proj then aff_fc: returns (projection (b, D, h, w), ego_pred (b, C, h, w))."""
        projection = self.aff_ego_proj(features)
        return projection, self.aff_fc(projection)

    @torch.no_grad()
    def _select_head(self, adapter: torch.Tensor, head_masks: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """BiT-Align's text-guided head: the head whose masked mean feature has the highest cosine with the text."""
        with torch.autocast(device_type=adapter.device.type, enabled=False):
            pooled = weighted_pool(adapter.float(), head_masks.float())  # (b, heads, D)
            sim = F.cosine_similarity(pooled, cond.float().unsqueeze(1), dim=-1)  # (b, heads)
        return sim.argmax(dim=1)

    def _ego_branch(self, ego_desc: torch.Tensor, cls_attn: torch.Tensor, cond: torch.Tensor | None) -> dict[str, Any]:
        """Everything egocentric: adapter, saliency, (gating), class maps and logits."""
        b = ego_desc.shape[0]
        adapter = self.aff_proj.forward_grid(ego_desc)  # (b, D, h, w)
        head_masks = binarize_at_mean(cls_attn.float())  # (b, heads, h, w)
        pool = self.attn_pool(adapter) if self.attn_pool is not None else None
        attnpool_mask = binarize_at_mean(pool.attn.detach().float()) if pool is not None else None
        if self.saliency == "locate":
            selected = torch.full((b,), -1, dtype=torch.long, device=ego_desc.device)
            saliency = normalize_minmax(head_masks[:, self.cls_heads].mean(dim=1))
        else:
            selected = self._select_head(adapter.detach(), head_masks, cond)
            chosen = head_masks[torch.arange(b, device=head_masks.device), selected]  # (b, h, w)
            saliency = normalize_minmax(0.5 * attnpool_mask + 0.5 * chosen)
        gated = self._gate(adapter, cond) if self.text_gating else adapter
        projection, ego_pred = self._ego_head(gated)
        return {
            "adapter": adapter,
            "projection": projection,
            "ego_pred": ego_pred,
            "logits": self._logits(ego_pred),
            "head_masks": head_masks,
            "selected_head": selected,
            "attnpool_mask": attnpool_mask,
            "pool": pool,
            "saliency": saliency,
        }

    def _features(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Backbone outputs for several image batches, in one pass when they share a size."""
        if all(x.shape[1:] == images[0].shape[1:] for x in images):
            out = self.backbone(torch.cat(images))
            sizes = [x.shape[0] for x in images]
            parts = {k: v.split(sizes) for k, v in out.items()}
            return [{k: parts[k][i] for k in out} for i in range(len(images))]
        return [self.backbone(x) for x in images]

    @torch.no_grad()
    def _oracle_parts(self, parts: Any, ego_desc: torch.Tensor, batch: dict[str, Any]) -> Any:
        """The diagnostic of ``oracle_prototypes``: prototypes from the true part mask of each egocentric image."""
        mask = batch.get("ego_part_mask")
        if mask is None:
            raise ValueError(
                "oracle_prototypes needs batch['ego_part_mask'] (the synthetic world's part masks, loaded by "
                "AGD20KTrain(with_part_masks=True)); turn model.oracle_prototypes off for real data"
            )
        protos, weights = mask_prototypes(ego_desc, mask)  # (b, D), (b, h, w)
        parts.prototypes = protos
        parts.has_prototype = weights.sum(dim=(-2, -1)) > 0
        return parts

    def _proto_space(self, exo_desc: torch.Tensor, ego_desc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The descriptors that the part prototypes and their loss compare by cosine.

        Raw, or (``center_descriptors``) minus the running mean of the descriptors. In training the mean is updated
        first, from this batch: the average of the exocentric and the egocentric views' means, folded in with rate
        max(1/steps, ``DESC_MEAN_MIN_RATE``), a plain average over the first steps and then an exponential one.
        """
        if not self.center_descriptors:
            return exo_desc, ego_desc
        if self.training:
            with torch.no_grad():
                views = [x.detach().float().mean(dim=(0, 2, 3)) for x in (exo_desc, ego_desc)]
                self.desc_mean_count += 1
                rate = max(1.0 / float(self.desc_mean_count), DESC_MEAN_MIN_RATE)
                self.desc_mean.mul_(1.0 - rate).add_(0.5 * (views[0] + views[1]), alpha=rate)
        mu = self.desc_mean.view(1, -1, 1, 1)
        return exo_desc - mu.to(exo_desc.dtype), ego_desc - mu.to(ego_desc.dtype)

    # ------------------------------------------------------------------------------------------- training

    def forward(self, batch: dict[str, Any], epoch: int = 0) -> dict[str, Any]:
        """One training (or validation) step's outputs and losses.

        Args:
            batch: ``exo`` (b, n, 3, H, W), ``ego`` (b, 3, H, W), ``label`` (b,) int64.
            epoch: 0-based epoch; the prototype loss counts from ``proto_warmup_epochs`` on.

        Returns:
            The dict of (``aff_cam``, ``gt_aff_cam``, ``ego_pred``, ``gt_ego_cam``,
            logits, saliency outputs, part outputs (``part_centroids`` (b, K, D) and ``part_best`` (b,) are the
            k-means clusters and the chosen one, for utils/tools/part_diagnostics.py) and ``losses``).
        """
        exo, ego = batch["exo"], batch["ego"]
        if exo.dim() != 5 or ego.dim() != 4 or exo.shape[0] != ego.shape[0]:
            raise ValueError(
                f"Grounder.forward: expected exo (b, n, 3, H, W) and ego (b, 3, H, W) with the same b, got "
                f"{tuple(exo.shape)} and {tuple(ego.shape)}"
            )
        b, n = exo.shape[:2]
        label = torch.as_tensor(batch["label"], device=ego.device).long().view(-1)
        if label.shape[0] != b or bool(((label < 0) | (label >= self.num_classes)).any()):
            raise ValueError(f"Grounder.forward: expected {b} labels in [0, {self.num_classes}), got {label.tolist()}")
        exo_feats, ego_feats = self._features([exo.flatten(0, 1), ego])
        exo_desc = exo_feats["descriptors"]  # (b*n, D, h, w)
        ego_desc = ego_feats["descriptors"]  # (b, D, h, w)
        h, w = exo_desc.shape[-2:]

        # Exocentric branch: CAMs of every class, and the label's CAM gathered per image.
        aff_cam = self.aff_fc(self.aff_exo_proj(self.aff_proj.forward_grid(exo_desc)))  # (b*n, C, h, w)
        aff_cam_re = rearrange(aff_cam, "(b n) c h w -> b n c h w", b=b, n=n)
        index = label.view(b, 1, 1, 1, 1).expand(b, n, 1, h, w)
        gt_aff_cam = aff_cam_re.gather(2, index).squeeze(2)  # (b, n, h, w)
        logits_exo = self._logits(aff_cam_re)  # (b, n, C)

        # Egocentric branch, conditioned on the label's text feature when there is a text encoder.
        text_feats = self.text.class_features() if self.text is not None else None  # (C, D)
        cond = text_feats[label] if text_feats is not None else None  # (b, D)
        ego_out = self._ego_branch(ego_desc, ego_feats["cls_attn"], cond)
        ego_pred = ego_out["ego_pred"]  # (b, C, h, w)
        index = label.view(b, 1, 1, 1).expand(b, 1, *ego_pred.shape[-2:])
        gt_ego_cam = normalize_minmax(ego_pred.gather(1, index).squeeze(1).float())  # (b, h, w)

        exo_proto_desc, ego_proto_desc = self._proto_space(exo_desc, ego_desc)
        parts = select_part_prototypes(
            rearrange(exo_proto_desc, "(b n) d h w -> b n d h w", b=b, n=n),
            gt_aff_cam,
            ego_proto_desc,
            ego_out["saliency"],
            cam_thd=self.aff_cam_thd,
            iou_thd=self.part_iou_thd,
            k=self.num_parts,
            iters=self.kmeans_iters,
            seed=self.kmeans_seed,
        )

        if self.part_bank is not None:
            presence, known = self.part_bank.presence(F.normalize(parts.centroids, dim=-1))
            parts = contrast_selection(parts, presence, known, label, weight=self.part_contrast)
            self.part_bank.add(ego_proto_desc, label)
        if self.oracle_prototypes and self.training:
            parts = self._oracle_parts(parts, ego_proto_desc, batch)

        ce_ego, ce_exo = classification_losses(ego_out["logits"], logits_exo, label)
        zero = ce_ego.new_zeros(())
        if epoch >= self.proto_warmup_epochs and self.proto_weight > 0:
            proto = prototype_loss(
                ego_proto_desc, gt_ego_cam, parts.prototypes, parts.has_prototype, margin=self.proto_margin
            )
        else:
            proto = zero
        conc = concentration_loss(ego_pred)
        sep = separation_loss(ego_pred, ego_out["logits"]) if self.sep_weight > 0 else zero
        border = border_loss(ego_pred, label) if self.border_weight > 0 else zero
        if self.text is not None and self.contra_weight > 0:
            contra = contrastive_loss(
                ego_out["pool"].pooled, text_feats, label, self._scale(), temperature=self.contra_temperature
            )
        else:
            contra = zero
        total = ce_ego + ce_exo + self.proto_weight * proto + self.conc_weight * conc + self.contra_weight * contra
        total = total + self.sep_weight * sep + self.border_weight * border
        return {
            "aff_cam": aff_cam,
            "gt_aff_cam": gt_aff_cam,
            "ego_pred": ego_pred,
            "gt_ego_cam": gt_ego_cam,
            "logits_exo": logits_exo,
            "logits_ego": ego_out["logits"],
            "cls_attn": ego_feats["cls_attn"],
            "head_masks": ego_out["head_masks"],
            "selected_head": ego_out["selected_head"],
            "attnpool_mask": ego_out["attnpool_mask"],
            "saliency": ego_out["saliency"],
            "part_sim": parts.part_sim,
            "part_scores": parts.part_scores,
            "prototypes": parts.prototypes,
            "has_prototype": parts.has_prototype,
            "part_centroids": parts.centroids,
            "part_best": parts.best,
            "losses": {
                "ce_ego": ce_ego,
                "ce_exo": ce_exo,
                "proto": proto,
                "conc": conc,
                "sep": sep,
                "border": border,
                "contra": contra,
                "total": total,
            },
        }

    # ------------------------------------------------------------------------------------------ inference

    def _resolve_labels(
        self, labels: torch.Tensor | list[str] | list[int], b: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Map the query to (class index (b,), mixture weights (b, C) or None, condition text (b, D) or None)."""
        if isinstance(labels, str):
            raise TypeError("Grounder.predict: labels must be a list of names (one per image), not a single string")
        if isinstance(labels, torch.Tensor) or (
            isinstance(labels, list | tuple) and labels and all(isinstance(x, int) for x in labels)
        ):
            idx = torch.as_tensor(labels, device=device).long().view(-1)
            phrases: list[str] | None = None
        else:
            labels = list(labels)
            if not all(isinstance(x, str) for x in labels):
                raise TypeError("Grounder.predict: labels must be a LongTensor, a list of ints or a list of strings")
            known = [self._class_index.get(phrase_key(x)) for x in labels]
            unknown = [x for x, k in zip(labels, known) if k is None]
            if unknown and self.text is None:
                raise ValueError(
                    f"Grounder.predict: unknown affordance(s) {unknown}; without a text encoder only the class names "
                    f"work: {self.class_names}"
                )
            idx = torch.tensor([k if k is not None else -1 for k in known], device=device, dtype=torch.long)
            phrases = labels if unknown else None
        if idx.shape[0] != b:
            raise ValueError(f"Grounder.predict: expected {b} labels (one per image), got {idx.shape[0]}")
        if phrases is None and bool(((idx < 0) | (idx >= self.num_classes)).any()):
            raise ValueError(f"Grounder.predict: label indices must be in [0, {self.num_classes}), got {idx.tolist()}")

        if self.text is None:
            return idx, None, None
        class_text = self.text.class_features()  # (C, D)
        cond = class_text[idx.clamp_min(0)]  # (b, D)
        weights = None
        if phrases is not None:
            is_phrase = idx < 0
            rows = torch.nonzero(is_phrase).flatten()
            phrase_text = self.text([phrases[i] for i in rows.tolist()]).to(cond.dtype)  # (p, D)
            cond = cond.index_copy(0, rows, phrase_text)
            sim = F.normalize(cond.float(), dim=-1) @ F.normalize(class_text.float(), dim=-1).t()  # (b, C)
            soft = (self._scale() * sim).softmax(dim=-1)
            hard = F.one_hot(idx.clamp_min(0), self.num_classes).float()
            weights = torch.where(is_phrase.unsqueeze(1), soft, hard)
        return idx, weights, cond

    def mix_object_prior(self, maps: torch.Tensor, ego_pred: torch.Tensor) -> torch.Tensor:
        """Mix the model's own class-agnostic object map into heatmaps on the patch grid (``object_prior``, ours).

        The object map is the min-max normalised log-sum-exp of all class maps (``ego_pred``): high wherever some
        affordance is, that is on the object. Each map of ``maps`` is min-max normalised, both are scaled to sum 1,
        and the result is ``(1 - object_prior) * map + object_prior * object``. KLD is convex in the prediction, so
        the mixture scores at most the mixture of the two scores, and less where they miss different GT mass: the
        label map misses the part when it lies on the wrong part, the object map never misses the object. With
        ``object_prior == 0`` the maps are returned unchanged.

        Args:
            maps: (b, c, h, w) raw heatmaps (the label's map with c = 1, or all class maps).
            ego_pred: (b, C, h, w) the egocentric class maps.

        Returns:
            (b, c, h, w) float32 maps (min-max normalise them after resizing, as :meth:`predict` does).
        """
        if self.object_prior == 0.0:
            return maps
        obj = normalize_minmax(torch.logsumexp(ego_pred.float(), dim=1, keepdim=True))  # (b, 1, h, w)
        part = normalize_minmax(maps.float())
        return (1.0 - self.object_prior) * normalize_mass(part) + self.object_prior * normalize_mass(obj)

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | list[str] | list[int] | None = None,
        output_size: int | tuple[int, int] | None = None,
        return_features: bool = False,
    ) -> dict[str, Any]:
        """Affordance heatmaps for egocentric images (eval mode for the call, then the previous mode is restored).

        Args:
            images: (b, 3, H, W) ImageNet-normalised images.
            labels: per image a class index (LongTensor or list of ints), a class name or, with a text encoder, any
                affordance phrase; None for the label-free mode (all C maps and the predicted class).
            output_size: side or (H', W') of the returned maps; default the input size.
            return_features: also return ``features`` (descriptors, adapter, projection, cam).

        Returns:
            ``maps`` (b, H', W') in [0, 1] for the given labels, or ``all_maps`` (b, C, H', W') and ``pred_label``
            (b,) without labels; always ``probs``/``logits`` (b, C), ``ego_pred`` (b, C, h, w) raw, ``cls_attn``,
            ``head_masks``, ``selected_head``, ``attnpool_mask``, ``saliency``.
        """
        if images.dim() != 4:
            raise ValueError(f"Grounder.predict: expected images (b, 3, H, W), got {tuple(images.shape)}")
        if output_size is None:
            size = tuple(images.shape[-2:])
        elif isinstance(output_size, int):
            size = (output_size, output_size)
        else:
            size = tuple(output_size)
        was_training = self.training
        self.eval()
        try:
            b = images.shape[0]
            feats = self.backbone(images)
            desc, cls_attn = feats["descriptors"], feats["cls_attn"]
            out: dict[str, Any] = {}
            if labels is None:
                needs_cond = self.text is not None and (self.text_gating or self.saliency == "bitalign")
                if needs_cond:
                    # Label-free with text conditioning: condition on the class an ungated pass predicts.
                    _, ungated = self._ego_head(self.aff_proj.forward_grid(desc))
                    pred_label = self._logits(ungated).argmax(dim=1)
                    cond = self.text.class_features()[pred_label]
                else:
                    cond = None  # neither gating nor head selection: nothing is conditioned on text
                ego = self._ego_branch(desc, cls_attn, cond)
                if not needs_cond:
                    pred_label = ego["logits"].argmax(dim=1)
                all_maps = self.mix_object_prior(ego["ego_pred"].float(), ego["ego_pred"])
                up = F.interpolate(all_maps, size=size, mode="bilinear", align_corners=False)
                out["all_maps"] = normalize_minmax(up)  # (b, C, H', W')
                out["pred_label"] = pred_label
            else:
                idx, weights, cond = self._resolve_labels(labels, b, images.device)
                ego = self._ego_branch(desc, cls_attn, cond)
                ego_pred = ego["ego_pred"].float()
                if weights is None:
                    index = idx.view(b, 1, 1, 1).expand(b, 1, *ego_pred.shape[-2:])
                    label_map = ego_pred.gather(1, index).squeeze(1)  # (b, h, w)
                else:
                    label_map = einsum(weights, ego_pred, "b c, b c h w -> b h w")
                label_map = self.mix_object_prior(label_map.unsqueeze(1), ego_pred).squeeze(1)
                up = F.interpolate(label_map.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
                out["maps"] = normalize_minmax(up.squeeze(1))  # (b, H', W')
            out.update(
                probs=ego["logits"].float().softmax(dim=-1),
                logits=ego["logits"],
                ego_pred=ego["ego_pred"],
                cls_attn=cls_attn,
                head_masks=ego["head_masks"],
                selected_head=ego["selected_head"],
                attnpool_mask=ego["attnpool_mask"],
                saliency=ego["saliency"],
            )
            if return_features:
                out["features"] = {
                    "descriptors": desc,
                    "adapter": ego["adapter"],
                    "projection": ego["projection"],
                    "cam": ego["ego_pred"],
                }
            return out
        finally:
            self.train(was_training)


def build_model(cfg: Config, class_names: list[str]) -> Grounder:
    """Build the grounder described by a :class:`utils.config.Config` (weights loaded, nothing moved to a device).

    Args:
        cfg: the resolved configuration (``cfg.model``, ``cfg.loss``, ``cfg.data.image_size``, ``cfg.seed``).
        class_names: the split's affordance names in label order.

    Returns:
        The model, on the CPU.
    """
    m, bb, t = cfg.model, cfg.model.backbone, cfg.model.text
    kwargs = dict(bb.kwargs)
    img_size = kwargs.pop("img_size", cfg.data.image_size)
    backbone = ViTBackbone(
        bb.name,
        weights=bb.weights or None,
        descriptor=bb.descriptor,
        trainable=bb.trainable,
        appearance=bb.appearance,
        img_size=img_size,
        **kwargs,
    )
    text = build_text_encoder(
        t.encoder,
        class_names,
        backbone.out_dim,
        model_name=t.clip_model,
        weights=t.clip_weights or None,
        prompt_tokens=t.prompt_tokens,
        template=t.template,
    )
    model = Grounder(
        class_names,
        backbone,
        text,
        saliency=m.saliency,
        cls_heads=list(m.cls_heads),
        text_gating=m.text_gating,
        num_parts=m.num_parts,
        aff_cam_thd=m.aff_cam_thd,
        part_iou_thd=m.part_iou_thd,
        pooling=m.pooling,
        pool_top=m.pool_top,
        kmeans_iters=m.kmeans_iters,
        kmeans_seed=cfg.seed,
        adapter_ratio=m.adapter_ratio,
        proto_weight=cfg.loss.proto,
        conc_weight=cfg.loss.conc,
        sep_weight=cfg.loss.sep,
        contra_weight=cfg.loss.contra,
        proto_warmup_epochs=cfg.loss.proto_warmup_epochs,
        proto_margin=cfg.loss.proto_margin,
        oracle_prototypes=m.oracle_prototypes,
        center_descriptors=m.center_descriptors,
        part_selection=m.part_selection,
        part_contrast=m.part_contrast,
        part_bank=m.part_bank,
        border_weight=cfg.loss.border,
        proj_kernels=list(m.proj_kernels),
        object_prior=m.object_prior,
    )
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    logger.info(
        "built %s grounder: %.2fM trainable, %.2fM frozen parameters", m.saliency, n_train / 1e6, n_frozen / 1e6
    )
    return model
