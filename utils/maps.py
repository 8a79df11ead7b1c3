"""Operations on activation maps shared by the model, the metrics, the losses and the visualisation."""

from __future__ import annotations

import torch

__all__ = ["normalize_mass", "normalize_minmax"]


def normalize_minmax(x: torch.Tensor, dims: int = 2, eps: float = 1e-12) -> torch.Tensor:
    """Min-max normalise each map to [0, 1] over its last ``dims`` dimensions.

    This is the one normalisation of the repository (STYLE rule 7): the model's ``gt_aff_cam`` and
    ``gt_ego_cam``, the evaluation protocol (docs/protocol.md), the concentration loss and the pictures all call it.

    Args:
        x: tensor whose trailing ``dims`` dimensions form one map, e.g. (B, C, h, w) with ``dims=2``.
        dims: how many trailing dimensions make one map.
        eps: added to the range so that a constant map becomes all zeros instead of NaN.

    Returns:
        Tensor of the same shape and dtype, each map in [0, 1] (a constant map is all zeros).
    """
    if dims < 1 or dims > x.dim():
        raise ValueError(f"normalize_minmax: dims must be in [1, {x.dim()}] for a {x.dim()}-d tensor, got {dims}")
    flat = x.flatten(start_dim=x.dim() - dims)  # (..., prod(map dims))
    lo = flat.amin(dim=-1, keepdim=True)
    hi = flat.amax(dim=-1, keepdim=True)
    out = (flat - lo) / (hi - lo + eps)
    return out.view_as(x)


def normalize_mass(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale each map (the last two dimensions) to sum 1, as a spatial distribution of its mass.

    Args:
        x: (..., h, w) non-negative maps.
        eps: lower bound of the divisor, so that an all-zero map stays all zeros instead of NaN.

    Returns:
        Tensor of the same shape, each map summing to 1 (all zeros for an all-zero map).
    """
    return x / x.sum(dim=(-2, -1), keepdim=True).clamp_min(eps)
