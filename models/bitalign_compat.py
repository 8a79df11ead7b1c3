"""Load checkpoints saved by BiT-Align's public code (IROS 2025) into :class:`models.grounder.Grounder`.

BiT-Align's ``Net`` keeps LOCATE's head names (``aff_proj``, ``aff_exo_proj``, ``aff_ego_proj``, ``aff_fc``) and
adds its own; its DINOv2 ViT-S/14 (``vit_model.``) uses the official DINOv2 names, which are timm's. The renaming:

============================================  ==============================================
published                                     ours
============================================  ==============================================
``vit_model.<timm name>``                     ``backbone.vit.<timm name>`` (``mask_token`` dropped)
``vit_model.blocks.<i>.mpg_.mpg_down1.*``     ``depth_prompt.blocks.<i>.down_rgb.*``
``vit_model.blocks.<i>.mpg_.mpg_down2.*``     ``depth_prompt.blocks.<i>.down_prompt.*``
``vit_model.blocks.<i>.mpg_.mpg_up.*``        ``depth_prompt.blocks.<i>.up.*``
``vit_model.blocks.<i>.mpg_.mpg_g``           ``depth_prompt.blocks.<i>.gate``
``vit_model.blocks.<i>.mpg_.mpg_fc_layer.*``  dropped (unused by the published forward)
``ego_self_attention.*``                      ``attn_pool.*``
``clip_line.*``                               ``text.proj.*``
``prompt_embeddings``                         ``text.prompt``
``logit_scale``                               ``logit_scale``
============================================  ==============================================

Its descriptors are DINOv2's normed patch tokens, whose channel order is ours, so no weight is re-indexed. Into a
model whose backbone stores its position embedding at the input grid (``pos_embed_resize=timm``), the published
37 × 37 embedding is resampled the way timm resamples it when it loads weights. The CLIP
text tower is not in the published checkpoint (it is a module-level global there): build the model with its weights
(``model.text.clip_weights``). Build the model from ``configs/reference/bitalign_*.yaml`` so that every part computes
what the published one does.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from models.backbone import read_state_dict

__all__ = ["convert_bitalign_state_dict", "load_bitalign_checkpoint"]

logger = logging.getLogger(__name__)

_PROMPT_NAMES = {"mpg_down1": "down_rgb", "mpg_down2": "down_prompt", "mpg_up": "up", "mpg_g": "gate"}
_PREFIX_MAP = {
    "ego_self_attention.": "attn_pool.",
    "clip_line.": "text.proj.",
    "prompt_embeddings": "text.prompt",
    "vit_model.": "backbone.vit.",
}
_MPG = re.compile(r"^vit_model\.blocks\.(\d+)\.mpg_\.(mpg_\w+?)(\..+)?$")
_DROPPED = ("vit_model.mask_token",)


def convert_bitalign_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a BiT-Align ``Net`` state dict to ours (see the module docstring); ``module.`` prefixes are stripped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        while key.startswith("module."):
            key = key[len("module.") :]
        if key in _DROPPED:
            continue
        mpg = _MPG.match(key)
        if mpg is not None:
            block, name, rest = mpg.group(1), mpg.group(2), mpg.group(3) or ""
            if name not in _PROMPT_NAMES:  # mpg_fc_layer: built but never called
                continue
            out[f"depth_prompt.blocks.{block}.{_PROMPT_NAMES[name]}{rest}"] = value
            continue
        for old, new in _PREFIX_MAP.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def load_bitalign_checkpoint(model: nn.Module, source: str | Path | dict[str, torch.Tensor]) -> None:
    """Load a BiT-Align checkpoint (file or state dict) into a Grounder built from a BiT-Align configuration.

    Frozen pretrained weights absent from the file (the CLIP text tower) keep the model's own; anything else missing,
    unexpected or mis-shaped raises a ValueError listing it.

    Args:
        model: a :class:`models.grounder.Grounder` with a text encoder (and a depth prompt for the published model).
        source: the checkpoint path (read with ``weights_only=True``) or an already loaded state dict.
    """
    state = source if isinstance(source, dict) else read_state_dict(source)
    state = convert_bitalign_state_dict(state)
    expected = model.state_dict()
    key = "backbone.vit.pos_embed"
    if key in state and key in expected and state[key].shape != expected[key].shape:
        from timm.layers import resample_abs_pos_embed

        vit = model.backbone.vit
        state[key] = resample_abs_pos_embed(
            state[key], new_size=list(vit.patch_embed.grid_size), num_prefix_tokens=vit.num_prefix_tokens
        )
    frozen = tuple(p for p in model.frozen_prefixes() if p != "backbone.")
    missing = sorted(k for k in set(expected) - set(state) if not k.startswith(frozen))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"BiT-Align checkpoint does not fit the model: missing {missing[:20]} ({len(missing)}), unexpected "
            f"{unexpected[:20]} ({len(unexpected)}), shape mismatches {mismatched[:20]}. Build the model from "
            "configs/reference/bitalign_seen.yaml or bitalign_unseen.yaml (36 / 25 classes, DINOv2 ViT-S/14 with "
            "model.backbone.pos_embed_resize=dinov2, data.depth_root set, 6 prompt tokens, 64 pool heads)."
        )
    model.load_state_dict(state, strict=False)
    logger.info("loaded a BiT-Align checkpoint (%d tensors)", len(state))
