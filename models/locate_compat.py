"""Load checkpoints saved by LOCATE's public code (Li et al., CVPR 2023) into :class:`models.grounder.Grounder`.

LOCATE's ``Net`` names its modules as we do (``aff_proj`` with ``norm``/``fc1``/``fc2``, ``aff_exo_proj``,
``aff_ego_proj``, ``aff_fc``) and keeps the DINO ViT under ``vit_model.`` with the official DINO parameter names,
which are timm's. One thing differs: its key descriptors are the keys (b, heads, T, d_h) permuted to
(b, T, d_h, heads) and flattened, so channel ``d * heads + head``; ours are timm's head-major ``head * d_h + d``.
Every weight that reads descriptor channels is therefore re-indexed: the adapter's LayerNorm and ``fc1`` inputs,
its ``fc2`` outputs (the adapter is residual, so its output lives in the descriptor's channel order too), and the
input channels of the first convolution of ``aff_exo_proj`` and ``aff_ego_proj``. The converted model then computes
exactly LOCATE's maps from our head-major descriptors. Clustering and cosine similarities do not depend on the
channel order, so nothing else changes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from models.backbone import read_state_dict
from models.state_dict import compare_state_dicts

__all__ = ["convert_locate_state_dict", "interleaved_to_head_major", "load_locate_checkpoint"]

logger = logging.getLogger(__name__)

_PREFIX_MAP = {"vit_model.": "backbone.vit."}
# Parameters whose dimension ``dim`` indexes descriptor channels.
_DESCRIPTOR_AXES = {
    "aff_proj.norm.weight": 0,
    "aff_proj.norm.bias": 0,
    "aff_proj.fc1.weight": 1,
    "aff_proj.fc2.weight": 0,
    "aff_proj.fc2.bias": 0,
    "aff_exo_proj.0.weight": 1,
    "aff_ego_proj.0.weight": 1,
}


def interleaved_to_head_major(num_heads: int, head_dim: int) -> torch.Tensor:
    """Index ``idx`` such that ``x_interleaved[..., idx]`` is in head-major order.

    Our channel ``c = head * head_dim + d`` holds LOCATE's channel ``d * num_heads + head``.

    Args:
        num_heads: attention heads.
        head_dim: channels per head.

    Returns:
        (num_heads * head_dim,) long tensor.
    """
    c = torch.arange(num_heads * head_dim)
    head, d = c // head_dim, c % head_dim
    return d * num_heads + head


def convert_locate_state_dict(
    state_dict: dict[str, torch.Tensor], num_heads: int, head_dim: int
) -> dict[str, torch.Tensor]:
    """Rename LOCATE's modules to ours and re-index every weight that reads descriptor channels.

    Args:
        state_dict: a LOCATE ``Net`` state dict (``module.`` prefixes from DataParallel are stripped).
        num_heads: heads of the last ViT block (6 for ViT-S).
        head_dim: channels per head (64 for ViT-S).

    Returns:
        A state dict in :class:`models.grounder.Grounder`'s naming and channel order.
    """
    idx = interleaved_to_head_major(num_heads, head_dim)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        while key.startswith("module."):
            key = key[len("module.") :]
        for old, new in _PREFIX_MAP.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        axis = _DESCRIPTOR_AXES.get(key)
        if axis is not None:
            if value.shape[axis] != idx.numel():
                raise ValueError(
                    f"LOCATE checkpoint: {key} has {value.shape[axis]} descriptor channels on axis {axis}, expected "
                    f"{idx.numel()} ({num_heads} heads x {head_dim}); the backbone does not match the checkpoint"
                )
            value = value.index_select(axis, idx)
        out[key] = value
    return out


def load_locate_checkpoint(model: nn.Module, source: str | Path | dict[str, torch.Tensor]) -> None:
    """Load a LOCATE checkpoint (file or state dict) into a Grounder with a key-descriptor backbone.

    Frozen backbone weights may be absent from the file (the model keeps its own); anything else missing,
    unexpected or mis-shaped raises a ValueError listing it.

    Args:
        model: a :class:`models.grounder.Grounder` whose backbone uses ``descriptor="key"``.
        source: the checkpoint path (read with ``weights_only=True``) or an already loaded state dict.
    """
    backbone = model.backbone
    if backbone.descriptor != "key":
        raise ValueError(
            f"LOCATE checkpoints need key descriptors; this model uses descriptor={backbone.descriptor!r}. "
            "Build it with model.backbone.descriptor=key"
        )
    state = source if isinstance(source, dict) else read_state_dict(source)
    state = convert_locate_state_dict(state, backbone.num_heads, backbone.head_dim)
    diff = compare_state_dicts(model.state_dict(), state, "checkpoint", optional_prefixes=model.frozen_prefixes())
    if not diff.ok:
        raise ValueError(
            f"LOCATE checkpoint does not fit the model: {diff.describe()}. Check the number of classes "
            "(Seen 36 / Unseen 25) and the backbone (LOCATE: vit_small_patch16_224.dino)."
        )
    model.load_state_dict(state, strict=False)
    logger.info("loaded a LOCATE checkpoint (%d tensors, converted to head-major descriptors)", len(state))
