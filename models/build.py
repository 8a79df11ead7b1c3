"""``build_model(cfg, class_names)``: the grounder a configuration describes, assembled from its parts."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from models.backbone import ViTBackbone
from models.depth import DepthPrompt
from models.extensions.appearance import AppearanceStats
from models.extensions.centring import DescriptorCentring
from models.extensions.contrast import ClassContrastSelector, ClassPatchBank
from models.extensions.object_prior import ObjectPrior
from models.extensions.oracle import OracleSelector
from models.extensions.pooling import TopKPool
from models.gating import PooledTokenGate, TextGate
from models.grounder import Grounder
from models.heads import AffordanceAdapter, AttentionPool2d, conv_bn_relu
from models.parts import PartIoUSelector, PartSelector
from models.saliency import BatchHeadSaliency, LocateSaliency, TextGuidedSaliency
from models.text import build_text_encoder

if TYPE_CHECKING:
    from utils.config import Config

__all__ = ["build_model"]

logger = logging.getLogger(__name__)


def build_model(cfg: Config, class_names: list[str]) -> Grounder:
    """Build the grounder described by a :class:`utils.config.Config` (weights loaded, nothing moved to a device).

    The parts are created in a fixed order (backbone, text encoder, adapter, projections, classifier, attention
    pooling, depth prompt), so that a part without parameters (a saliency rule, a part selector, a pooling, the
    centring, the class contrast, the object prior) leaves a seed's initial weights unchanged; a text encoder is drawn
    before the heads and so changes theirs. BiT-Align's variants (``model.bitalign``, ``model.text``,
    ``model.adapter_residual``, ``model.backbone.pos_embed_resize``, ``data.depth_root``) are chosen here, as parts or
    options of parts.

    Args:
        cfg: the resolved configuration (``cfg.model``, ``cfg.data.image_size``, ``cfg.seed``).
        class_names: the split's affordance names in label order.

    Returns:
        The model, on the CPU.
    """
    m, bb, t, ext, ba = cfg.model, cfg.model.backbone, cfg.model.text, cfg.model.extensions, cfg.model.bitalign
    kwargs = dict(bb.kwargs)
    # DINOv2's resize keeps the position embedding at the checkpoint's grid and resizes it on every call.
    img_size = kwargs.pop("img_size", None if bb.pos_embed_resize == "dinov2" else cfg.data.image_size)
    backbone = ViTBackbone(
        bb.name,
        weights=bb.weights or None,
        descriptor=bb.descriptor,
        img_size=img_size,
        pos_embed_resize=bb.pos_embed_resize,
        **kwargs,
    )
    grid = backbone.grid_size(cfg.data.image_size, cfg.data.image_size)
    extra = AppearanceStats(ext.appearance, backbone.patch_size) if ext.appearance > 0 else None
    dim = backbone.out_dim + (extra.channels if extra is not None else 0)

    text = build_text_encoder(
        t.encoder,
        class_names,
        dim,
        model_name=t.clip_model,
        weights=t.clip_weights or None,
        prompt_tokens=t.prompt_tokens,
        template=t.template,
        activation=t.activation,
        prompt_position=t.prompt_position,
        train_prompts=t.train_prompts,
        prompt_init_std=t.prompt_init_std,
        end_token=t.end_token,
    )
    aff_proj = AffordanceAdapter(dim, hidden_ratio=m.adapter_ratio, residual=m.adapter_residual)
    aff_exo_proj = conv_bn_relu(dim, m.proj_kernels)
    aff_ego_proj = conv_bn_relu(dim, m.proj_kernels)
    aff_fc = nn.Conv2d(dim, len(class_names), kernel_size=1)
    attn_pool = logit_scale = None
    if text is not None:
        # The ViT's head count, or its largest divisor that divides the width (appearance channels make it odd).
        heads = ba.pool_heads or math.gcd(dim, backbone.num_heads)
        attn_pool = AttentionPool2d(dim, heads, grid_size=grid)
        attn_pool.positional_embedding.requires_grad_(ba.pool_pos_embed == "learned")
        logit_scale = torch.tensor(math.log(1 / 0.07))  # CLIP's initial temperature
        if ba.logit_scale == "learned":
            logit_scale = nn.Parameter(logit_scale)  # a plain tensor becomes a buffer: fixed, kept in checkpoints
    depth_prompt = None
    if cfg.data.depth_root:
        num_tokens = backbone.num_prefix_tokens + grid[0] * grid[1]
        depth_prompt = DepthPrompt(backbone.embed_dim, len(backbone.vit.blocks), num_tokens)

    if m.saliency == "bitalign":
        saliency = BatchHeadSaliency() if ba.head_choice == "batch" else TextGuidedSaliency()
    else:
        saliency = LocateSaliency(m.cls_heads, num_heads=backbone.num_heads)
    gate = None
    if m.text_gating:
        gate = PooledTokenGate() if ba.gate == "published" else TextGate()

    model = Grounder(
        class_names,
        backbone,
        aff_proj,
        aff_exo_proj,
        aff_ego_proj,
        aff_fc,
        saliency=saliency,
        parts=_part_selector(cfg, len(class_names), dim, grid[0] * grid[1]),
        text=text,
        attn_pool=attn_pool,
        logit_scale=logit_scale,
        gate=gate,
        pool=TopKPool(ext.topk_pool) if ext.topk_pool > 0 else None,
        descriptor_extra=extra,
        proto_space=DescriptorCentring(dim) if ext.center_descriptors else None,
        postprocess=ObjectPrior(ext.object_prior) if ext.object_prior > 0 else None,
        depth_prompt=depth_prompt,
    )
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    logger.info(
        "built %s grounder: %.2fM trainable, %.2fM frozen parameters", m.saliency, n_train / 1e6, n_frozen / 1e6
    )
    return model


def _part_selector(cfg: Config, num_classes: int, dim: int, num_patches: int) -> PartSelector:
    """LOCATE's PartIoU selector, wrapped by the class-contrast rule and the oracle diagnostic when asked for."""
    m, ext = cfg.model, cfg.model.extensions
    selector: PartSelector = PartIoUSelector(
        cam_thd=m.aff_cam_thd,
        iou_thd=m.part_iou_thd,
        num_parts=m.num_parts,
        kmeans_iters=m.kmeans_iters,
        seed=cfg.seed,
        kmeans=m.kmeans,
    )
    if ext.class_contrast:
        bank = ClassPatchBank(num_classes, ext.contrast_bank, dim, num_patches)
        selector = ClassContrastSelector(selector, bank, weight=ext.contrast_weight)
    if ext.oracle_prototypes:
        selector = OracleSelector(selector)
    return selector
