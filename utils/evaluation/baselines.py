"""Model-free baselines: the floor that any affordance-grounding model must beat.

Each baseline is a callable ``baseline(batch) -> (B, H, W)`` on a test batch (the dict that ``AGD20KTest`` items
collate into), so that ``utils.evaluation.evaluate`` scores it through exactly the code path of a model:

- ``center``: an axis-aligned Gaussian centred on the image (the "centre bias" of saliency benchmarks);
- ``uniform``: the same value everywhere (scored as the uniform distribution, see ``prepare_prediction``);
- ``object``: the object's mask, blurred with a Gaussian: "the whole object", with no idea of which part affords
  the action. It needs per-image object masks (``batch["object_mask"]``), which the synthetic world provides
  (``AGD20KTest(..., with_masks=True)``) and AGD20K does not.

The maps are produced at the GT size (the evaluation size E of ``batch["gt"]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from utils.config.schema import BASELINES

__all__ = ["BASELINES", "CenterBaseline", "ObjectMaskBaseline", "UniformBaseline", "build_baseline"]


def _map_size(batch: dict) -> tuple[int, int, int]:
    """(B, H, W) of the maps to produce: the GT's size, else the image's."""
    for key in ("gt", "object_mask"):
        if key in batch and isinstance(batch[key], torch.Tensor) and batch[key].dim() == 3:
            b, h, w = batch[key].shape
            return b, h, w
    if "image" in batch and isinstance(batch["image"], torch.Tensor) and batch["image"].dim() == 4:
        b, _, h, w = batch["image"].shape
        return b, h, w
    raise KeyError(
        f"baseline: the batch needs 'gt' (B, H, W) or 'image' (B, 3, H, W) to know the map size; found keys "
        f"{sorted(batch)}"
    )


def _device(batch: dict) -> torch.device:
    for key in ("gt", "image", "object_mask"):
        if isinstance(batch.get(key), torch.Tensor):
            return batch[key].device
    return torch.device("cpu")


def _gaussian_1d(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    """exp(-x² / 2σ²) at pixel centres x measured from the centre of a length-``size`` axis, (size,)."""
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    return torch.exp(-(coords**2) / (2 * sigma**2))


class CenterBaseline:
    """A centred Gaussian, σ_y = ``sigma_frac`` · H and σ_x = ``sigma_frac`` · W.

    Args:
        sigma_frac: the standard deviation as a fraction of the side. 0.25 (the default) puts the ±2σ ellipse on
            the image border, a broad centre prior; smaller values make a tighter blob.
    """

    name = "center"

    def __init__(self, sigma_frac: float = 0.25) -> None:
        if sigma_frac <= 0:
            raise ValueError(f"CenterBaseline: sigma_frac must be > 0, got {sigma_frac}")
        self.sigma_frac = sigma_frac

    def __call__(self, batch: dict) -> torch.Tensor:
        b, h, w = _map_size(batch)
        device = _device(batch)
        gy = _gaussian_1d(h, self.sigma_frac * h, device)  # (H,)
        gx = _gaussian_1d(w, self.sigma_frac * w, device)  # (W,)
        gauss = torch.outer(gy, gx)  # (H, W), separable 2-D Gaussian
        return gauss.expand(b, h, w).contiguous()  # (B, H, W)

    def __repr__(self) -> str:
        return f"CenterBaseline(sigma_frac={self.sigma_frac})"


class UniformBaseline:
    """The same value at every pixel: "no idea where". Scored as the uniform distribution (NSS 0)."""

    name = "uniform"

    def __call__(self, batch: dict) -> torch.Tensor:
        b, h, w = _map_size(batch)
        return torch.ones(b, h, w, device=_device(batch))  # (B, H, W)

    def __repr__(self) -> str:
        return "UniformBaseline()"


class ObjectMaskBaseline:
    """The object mask blurred with a Gaussian of σ = ``sigma_frac`` · min(H, W).

    Args:
        sigma_frac: blur as a fraction of the shorter side. 0.05 (the default, about 11 px at 224) softens the
            mask edge the way the GT's Gaussian kernels do; 0 uses the binary mask as it is.
    """

    name = "object"

    def __init__(self, sigma_frac: float = 0.05) -> None:
        if sigma_frac < 0:
            raise ValueError(f"ObjectMaskBaseline: sigma_frac must be >= 0, got {sigma_frac}")
        self.sigma_frac = sigma_frac

    def __call__(self, batch: dict) -> torch.Tensor:
        mask = batch.get("object_mask")
        if not isinstance(mask, torch.Tensor):
            raise KeyError(
                "the 'object' baseline needs per-image object masks (batch['object_mask'], (B, H, W)), and this "
                "batch has none: build the test set with with_masks=True on a dataset that provides masks (the "
                "synthetic world does, AGD20K does not), or use the 'center' or 'uniform' baseline"
            )
        if mask.dim() != 3:
            raise ValueError(f"ObjectMaskBaseline: expected object_mask (B, H, W), got {tuple(mask.shape)}")
        mask = mask.float()
        sigma = self.sigma_frac * min(mask.shape[-2:])
        if sigma <= 0:
            return mask
        return _gaussian_blur(mask, sigma)  # (B, H, W)

    def __repr__(self) -> str:
        return f"ObjectMaskBaseline(sigma_frac={self.sigma_frac})"


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps, zero padding (the mask is 0 outside the image), radius 3σ."""
    radius = max(1, math.ceil(3 * sigma))
    kernel = _gaussian_1d(2 * radius + 1, sigma, x.device)
    kernel = kernel / kernel.sum()  # (K,)
    out = rearrange(x, "b h w -> b 1 h w")
    out = F.conv2d(out, rearrange(kernel, "k -> 1 1 k 1"), padding=(radius, 0))  # blur along H
    out = F.conv2d(out, rearrange(kernel, "k -> 1 1 1 k"), padding=(0, radius))  # blur along W
    return rearrange(out, "b 1 h w -> b h w")


def build_baseline(name: str, **kwargs) -> Callable[[dict], torch.Tensor]:
    """The baseline called ``name`` (one of ``BASELINES``), with its keyword arguments (e.g. ``sigma_frac``).

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if name not in _CLASSES:
        raise ValueError(f"unknown baseline {name!r}: expected one of {', '.join(BASELINES)}")
    return _CLASSES[name](**kwargs)


#: Every name of ``utils.config.BASELINES`` (what the configuration and test.py accept), with its class.
_CLASSES = {"center": CenterBaseline, "uniform": UniformBaseline, "object": ObjectMaskBaseline}
