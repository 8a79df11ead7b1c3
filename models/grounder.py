"""The affordance grounder: LOCATE (Li et al., CVPR 2023) with BiT-Align's (IROS 2025) egocentric localisation.

A training sample is n exocentric images (people using an object) and one egocentric image (the object alone)
sharing an affordance label. Read :meth:`Grounder.forward` top to bottom as the method:

1. a frozen DINO ViT gives patch descriptors and the last block's CLS attention (:mod:`models.backbone`), with
   BiT-Align's depth prompt mixed into every block when depth maps are given (:mod:`models.depth`);
2. exocentric branch: the adapter ``aff_proj`` (shared by both views), ``aff_exo_proj`` and the 1×1 classifier
   ``aff_fc`` give one class activation map per affordance (``aff_cam``); their global average gives the logits,
   and each image's map of its sample's label is ``gt_aff_cam``;
3. egocentric branch: ``aff_proj`` → (BiT-Align: text gating) → ``aff_ego_proj`` → ``aff_fc`` gives ``ego_pred``;
   the egocentric saliency comes from fixed CLS-attention heads (LOCATE) or from an AttentionPool2d mask fused with
   the text-selected head (BiT-Align) (:mod:`models.saliency`);
4. part prototypes: the exocentric patches the label's CAM lights up are clustered with k-means, and the cluster
   that looks like an object part becomes the sample's prototype (:mod:`models.parts`);
5. the losses (:mod:`models.criterion`) pull the egocentric label map towards the prototype.

At test time :meth:`Grounder.predict` runs steps 1 and 3 and returns the queried affordance's map.

Our additions (:mod:`models.extensions`) are parts plugged in by ``models.build.build_model``, never branches of this
code: descriptor extensions, a prototype space, other part selectors, another pooling, a prediction post-process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn

from models.affordances import phrase_key
from models.backbone import ViTBackbone
from models.depth import DepthPrompt
from models.gating import TextGate
from models.heads import AffordanceAdapter, AttentionPool2d, GlobalAveragePool
from models.outputs import EgoOutput, Features, GrounderOutput, Prediction
from models.parts import PartSelector
from models.queries import Labels, resolve_queries
from models.saliency import Saliency
from models.text import TextEncoder
from utils.maps import normalize_minmax

__all__ = ["Grounder"]

logger = logging.getLogger(__name__)


class Grounder(nn.Module):
    """LOCATE / BiT-Align affordance grounder, assembled from its parts by ``models.build.build_model``.

    Args:
        class_names: affordance names in label order (C of them).
        backbone: the frozen ViT.
        aff_proj: the adapter on the descriptors, shared by both views.
        aff_exo_proj: the exocentric projection (convolutions on the patch grid).
        aff_ego_proj: the egocentric projection.
        aff_fc: the 1×1 classifier whose output channels are the class activation maps.
        saliency: the egocentric saliency rule (LOCATE's heads or BiT-Align's text-guided fusion).
        parts: the part-prototype selector.
        text: a text encoder (BiT-Align) or None (LOCATE). With it come the AttentionPool2d ``attn_pool`` and the
            image-text ``logit_scale``, which must then be given too.
        attn_pool: BiT-Align's attention pooling over the adapted egocentric features.
        logit_scale: the log of the image-text logit scale (a parameter, or a buffer when it is fixed).
        gate: BiT-Align's text gating of the egocentric features, or None.
        pool: class maps to logits (default LOCATE's global average pooling).
        descriptor_extra: appends channels to the backbone's descriptors (ours), or None.
        proto_space: maps (exo, ego) descriptors to the space the prototypes are compared in (ours), or None.
        postprocess: a post-process of the predicted heatmaps on the patch grid (ours), or None.
        depth_prompt: BiT-Align's depth prompt (frozen), or None; with it every image needs its depth map.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        backbone: ViTBackbone,
        aff_proj: AffordanceAdapter,
        aff_exo_proj: nn.Module,
        aff_ego_proj: nn.Module,
        aff_fc: nn.Conv2d,
        saliency: Saliency,
        parts: PartSelector,
        text: TextEncoder | None = None,
        attn_pool: AttentionPool2d | None = None,
        logit_scale: torch.Tensor | None = None,
        gate: TextGate | None = None,
        pool: nn.Module | None = None,
        descriptor_extra: nn.Module | None = None,
        proto_space: nn.Module | None = None,
        postprocess: nn.Module | None = None,
        depth_prompt: DepthPrompt | None = None,
    ) -> None:
        super().__init__()
        if not class_names or isinstance(class_names, str):
            raise ValueError(f"Grounder: expected a non-empty list of class names, got {class_names!r}")
        if (saliency.needs_text or gate is not None) and text is None:
            raise ValueError(
                "Grounder: the text-guided saliency and the text gating need a text encoder; pass one "
                "(model.text.encoder=clip or learned) or use saliency='locate', text_gating=False"
            )
        if text is not None and (attn_pool is None or logit_scale is None):
            raise ValueError("Grounder: a text encoder comes with an AttentionPool2d and a logit scale; pass both")
        if aff_fc.out_channels != len(class_names):
            raise ValueError(f"Grounder: aff_fc has {aff_fc.out_channels} outputs for {len(class_names)} classes")
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self._class_index = {phrase_key(c): i for i, c in enumerate(self.class_names)}

        self.backbone = backbone
        self.depth_prompt = depth_prompt
        self.descriptor_extra = descriptor_extra
        self.aff_proj = aff_proj
        self.aff_exo_proj = aff_exo_proj
        self.aff_ego_proj = aff_ego_proj
        self.aff_fc = aff_fc
        self.text = text
        self.attn_pool = attn_pool
        if isinstance(logit_scale, nn.Parameter) or logit_scale is None:
            self.logit_scale = logit_scale
        else:
            self.register_buffer("logit_scale", logit_scale)
        self.saliency = saliency
        self.gate = gate
        self.pool = pool if pool is not None else GlobalAveragePool()
        self.proto_space = proto_space
        self.parts = parts
        self.postprocess = postprocess

    # ------------------------------------------------------------------------------------------------ parts

    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of frozen pretrained modules that checkpoints name but need not store."""
        prefixes = ["backbone."]
        if self.text is not None:
            prefixes += [f"text.{p}" for p in self.text.frozen_prefixes()]
        return tuple(prefixes)

    def scale(self) -> torch.Tensor:
        """The image-text logit scale exp(logit_scale), clamped at 100 as in CLIP so the softmax cannot collapse."""
        return self.logit_scale.exp().clamp(max=100.0)

    def encode(self, images: torch.Tensor, depth: torch.Tensor | None = None) -> Features:
        """Backbone features of (B, 3, H, W) images, with the descriptor extension when there is one.

        Args:
            images: (B, 3, H, W) ImageNet-normalised images.
            depth: (B, 1, H, W) their depth maps in [-1, 1]; needed (and only used) with a depth prompt.
        """
        if self.depth_prompt is not None and depth is None:
            raise ValueError(
                "Grounder: this model has a depth prompt (data.depth_root was set), so every image needs its depth "
                "map: pass depth (B, 1, H, W), or batches with 'ego_depth' and 'exo_depth'"
            )
        if self.depth_prompt is None:
            features = self.backbone(images)
        else:
            features = self.backbone(images, depth, self.depth_prompt)
        if self.descriptor_extra is not None:
            features = self.descriptor_extra(images, features)
        return features

    def encode_views(
        self,
        exo: torch.Tensor,
        ego: torch.Tensor,
        exo_depth: torch.Tensor | None = None,
        ego_depth: torch.Tensor | None = None,
    ) -> tuple[Features, Features]:
        """Features of the exocentric (b·n, 3, H, W) and egocentric (b, 3, H, W) images (and their (·, 1, H, W)
        depth maps, with a depth prompt), in one pass when they share a size."""
        if exo.shape[1:] != ego.shape[1:]:
            return self.encode(exo, exo_depth), self.encode(ego, ego_depth)
        depth = torch.cat([exo_depth, ego_depth]) if exo_depth is not None and ego_depth is not None else None
        exo_f, ego_f = self.encode(torch.cat([exo, ego]), depth).split([exo.shape[0], ego.shape[0]])
        return exo_f, ego_f

    def ego_branch(self, desc: torch.Tensor, cls_attn: torch.Tensor, cond: torch.Tensor | None) -> EgoOutput:
        """Everything egocentric: adapter, saliency, (text gating), class maps and logits.

        Args:
            desc: (b, D, h, w) egocentric descriptors.
            cls_attn: (b, heads, h, w) their CLS attention.
            cond: (b, D) the text feature each sample is conditioned on (with a text encoder), else None.
        """
        adapter = self.aff_proj.forward_grid(desc)  # (b, D, h, w)
        pool = self.attn_pool(adapter) if self.attn_pool is not None else None
        saliency = self.saliency(cls_attn, adapter, pool, cond)
        gated = self.gate(adapter, cond, self.scale(), pool) if self.gate is not None else adapter
        projection = self.aff_ego_proj(gated)  # (b, D, h, w)
        ego_pred = self.aff_fc(projection)  # (b, C, h, w)
        return EgoOutput(
            adapter=adapter,
            projection=projection,
            ego_pred=ego_pred,
            logits=self.pool(ego_pred),
            saliency=saliency,
            image_feature=pool.pooled if pool is not None else None,
        )

    # --------------------------------------------------------------------------------------------- training

    def forward(self, batch: dict) -> GrounderOutput:
        """One training (or validation) step's outputs; :class:`models.criterion.Criterion` makes the losses.

        Args:
            batch: ``exo`` (b, n, 3, H, W), ``ego`` (b, 3, H, W), ``label`` (b,) int64 (and, for the oracle
                diagnostic, ``ego_part_mask``; with a depth prompt, ``exo_depth`` (b, n, 1, H, W) and ``ego_depth``
                (b, 1, H, W)). Precomputed features may replace the images: ``exo_features`` and ``ego_features``
                (:class:`models.outputs.Features` with b·n and b rows).
        """
        label, b, n = self._check_batch(batch)
        if "exo_features" in batch:
            exo_feats, ego_feats = batch["exo_features"], batch["ego_features"]
        else:
            exo_depth = batch.get("exo_depth")
            exo_feats, ego_feats = self.encode_views(
                batch["exo"].flatten(0, 1),
                batch["ego"],
                exo_depth.flatten(0, 1) if exo_depth is not None else None,
                batch.get("ego_depth"),
            )
        exo_desc, ego_desc = exo_feats.descriptors, ego_feats.descriptors  # (b·n, D, h, w), (b, D, h, w)
        h, w = exo_desc.shape[-2:]

        # Exocentric branch: the CAM of every class, and each image's map of its sample's label.
        aff_cam = self.aff_fc(self.aff_exo_proj(self.aff_proj.forward_grid(exo_desc)))  # (b·n, C, h, w)
        aff_cam_re = rearrange(aff_cam, "(b n) c h w -> b n c h w", b=b, n=n)
        index = label.view(b, 1, 1, 1, 1).expand(b, n, 1, h, w)
        gt_aff_cam = aff_cam_re.gather(2, index).squeeze(2)  # (b, n, h, w)
        logits_exo = self.pool(aff_cam_re)  # (b, n, C)

        # Egocentric branch, conditioned on the label's text feature when there is a text encoder.
        text_feats = self.text.class_features() if self.text is not None else None  # (C, D)
        cond = text_feats[label] if text_feats is not None else None  # (b, D)
        ego = self.ego_branch(ego_desc, ego_feats.cls_attn, cond)
        index = label.view(b, 1, 1, 1).expand(b, 1, *ego.ego_pred.shape[-2:])
        gt_ego_cam = normalize_minmax(ego.ego_pred.gather(1, index).squeeze(1).float())  # (b, h, w)

        # Part prototypes from the exocentric CAM regions, scored against the egocentric saliency.
        if self.proto_space is not None:
            exo_desc, ego_desc = self.proto_space(exo_desc, ego_desc)
        exo_desc = rearrange(exo_desc, "(b n) d h w -> b n d h w", b=b, n=n)
        parts = self.parts(exo_desc, gt_aff_cam, ego_desc, ego.saliency.saliency, label, batch)

        sal = ego.saliency
        return GrounderOutput(
            label=label,
            aff_cam=aff_cam,
            gt_aff_cam=gt_aff_cam,
            logits_exo=logits_exo,
            ego_pred=ego.ego_pred,
            gt_ego_cam=gt_ego_cam,
            logits_ego=ego.logits,
            cls_attn=ego_feats.cls_attn,
            saliency=sal.saliency,
            head_masks=sal.head_masks,
            selected_head=sal.selected_head,
            attnpool_mask=sal.attnpool_mask,
            parts=parts,
            ego_proto_desc=ego_desc,
            image_feature=ego.image_feature,
            text_features=text_feats,
            logit_scale=self.scale() if self.text is not None else None,
        )

    def _check_batch(self, batch: dict) -> tuple[torch.Tensor, int, int]:
        """The labels (b,) long, b and n of a training batch, or a ValueError saying what is wrong."""
        if "exo_features" in batch:
            b = batch["ego_features"].descriptors.shape[0]
            n = batch["exo_features"].descriptors.shape[0] // max(b, 1)
            device = batch["ego_features"].descriptors.device
        else:
            exo, ego = batch["exo"], batch["ego"]
            if exo.dim() != 5 or ego.dim() != 4 or exo.shape[0] != ego.shape[0]:
                raise ValueError(
                    f"Grounder.forward: expected exo (b, n, 3, H, W) and ego (b, 3, H, W) with the same b, got "
                    f"{tuple(exo.shape)} and {tuple(ego.shape)}"
                )
            b, n, device = exo.shape[0], exo.shape[1], ego.device
        label = torch.as_tensor(batch["label"], device=device).long().view(-1)
        if label.shape[0] != b or bool(((label < 0) | (label >= self.num_classes)).any()):
            raise ValueError(f"Grounder.forward: expected {b} labels in [0, {self.num_classes}), got {label.tolist()}")
        return label, b, n

    # -------------------------------------------------------------------------------------------- inference

    def resolve_labels(
        self, labels: Labels, b: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(class index (b,), mixture weights (b, C) or None, condition text (b, D) or None) of a query: see
        :func:`models.queries.resolve_queries`."""
        scale = self.scale() if self.text is not None else None
        return resolve_queries(labels, b, device, self.class_names, self._class_index, self.text, scale)

    def _postprocess(self, maps: torch.Tensor, ego_pred: torch.Tensor) -> torch.Tensor:
        """(b, c, h, w) heatmaps on the patch grid after the prediction post-process (if any)."""
        return self.postprocess(maps, ego_pred) if self.postprocess is not None else maps

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        labels: Labels | None = None,
        output_size: int | tuple[int, int] | None = None,
        return_features: bool = False,
        depth: torch.Tensor | None = None,
    ) -> Prediction:
        """Affordance heatmaps for egocentric images (eval mode for the call, then the previous mode is restored).

        Args:
            images: (b, 3, H, W) ImageNet-normalised images.
            labels: per image a class index (LongTensor or list of ints), a class name or, with a text encoder, any
                affordance phrase; None for the label-free mode (all C maps and the predicted class).
            output_size: side or (H', W') of the returned maps; default the input size.
            return_features: also return ``features`` (descriptors, adapter, projection, cam).
            depth: (b, 1, H, W) depth maps in [-1, 1], for a model with a depth prompt (ignored without one).

        Returns:
            A :class:`models.outputs.Prediction`: ``maps`` (b, H', W') in [0, 1] for the given labels, or
            ``all_maps`` (b, C, H', W') and ``pred_label`` (b,) without labels; always the logits, probabilities,
            raw class maps and saliency.

        Label-free prediction with text gating or text-guided heads conditions on the class that an *ungated*
        pass of the egocentric head predicts (``pred_label``), so the features stay in the distribution seen in
        training (always gated by one class's text) instead of being gated by a class average.
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
            feats = self.encode(images, depth)
            desc, cls_attn = feats.descriptors, feats.cls_attn
            maps = all_maps = pred_label = None
            if labels is None:
                needs_cond = self.text is not None and (self.gate is not None or self.saliency.needs_text)
                if needs_cond:
                    ungated = self.aff_fc(self.aff_ego_proj(self.aff_proj.forward_grid(desc)))
                    pred_label = self.pool(ungated).argmax(dim=1)
                    cond = self.text.class_features()[pred_label]
                else:
                    cond = None  # neither gating nor head selection: nothing is conditioned on text
                ego = self.ego_branch(desc, cls_attn, cond)
                if not needs_cond:
                    pred_label = ego.logits.argmax(dim=1)
                mixed = self._postprocess(ego.ego_pred.float(), ego.ego_pred)
                all_maps = normalize_minmax(F.interpolate(mixed, size=size, mode="bilinear", align_corners=False))
            else:
                idx, weights, cond = self.resolve_labels(labels, b, images.device)
                ego = self.ego_branch(desc, cls_attn, cond)
                ego_pred = ego.ego_pred.float()
                if weights is None:
                    index = idx.view(b, 1, 1, 1).expand(b, 1, *ego_pred.shape[-2:])
                    label_map = ego_pred.gather(1, index).squeeze(1)  # (b, h, w)
                else:
                    label_map = einsum(weights, ego_pred, "b c, b c h w -> b h w")
                label_map = self._postprocess(label_map.unsqueeze(1), ego.ego_pred).squeeze(1)
                up = F.interpolate(label_map.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
                maps = normalize_minmax(up.squeeze(1))  # (b, H', W')
            sal = ego.saliency
            features = None
            if return_features:
                features = {
                    "descriptors": desc,
                    "adapter": ego.adapter,
                    "projection": ego.projection,
                    "cam": ego.ego_pred,
                }
            return Prediction(
                maps=maps,
                all_maps=all_maps,
                pred_label=pred_label,
                probs=ego.logits.float().softmax(dim=-1),
                logits=ego.logits,
                ego_pred=ego.ego_pred,
                cls_attn=cls_attn,
                saliency=sal.saliency,
                head_masks=sal.head_masks,
                selected_head=sal.selected_head,
                attnpool_mask=sal.attnpool_mask,
                features=features,
            )
        finally:
            self.train(was_training)
