"""Affordance-grounding metrics KLD, SIM and NSS (docs/protocol.md), batched and in float64.

The formulas are those of the evaluation code published with Cross-View-AG (CVPR 2022) and LOCATE (CVPR 2023),
so that our numbers can be compared with their tables to 1e-6; the code is vectorised over images and pixels
(theirs binarises the GT for NSS with a per-pixel Python loop). With ε = 1e-12, P the prediction and G the GT:

- KLD = Σ G' · ln(G' / (P' + ε) + ε), with P' = P / (ΣP + ε) and G' = G / (ΣG + ε)   (lower is better)
- SIM = Σ min(P', G')                                                                  (higher is better)
- NSS = Σ(Z · F) / Σ(F + ε), Z = (P − mean P) / std P (population std), F = [minmax(G) > 0.1]   (higher is better)

Every function takes (B, H, W) or (H, W) maps and returns one value per image, (B,) or 0-d, in float64.

Given the same P and G the values equal the published ones to ~1e-12. Through the whole protocol (upsampling
included) they agree to 1e-6 except for KLD on images whose GT is positive at the pixel where P is exactly 0 after
min-max: there the term G' ln(G' / ε) makes KLD jump by ~G' · ln(1e3) when a different bilinear implementation
(cv2 vs torch, float32 rounding) moves the minimum by one ulp or one pixel. The protocol is ill-conditioned there;
no implementation can match another one bit for bit on such images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.maps import normalize_minmax

__all__ = ["EPS", "NSS_THRESHOLD", "compute_metrics", "kld", "nss", "prepare_prediction", "sim"]

EPS = 1e-12
NSS_THRESHOLD = 0.1
# A map whose range is below this fraction of its magnitude is "constant": a range of a few ulps is rounding (e.g.
# from a mean), which min-max or a division by the std would blow up into noise.
_CONSTANT_RTOL = 1e-10
_CHUNK = 8  # images per chunk in compute_metrics


def _check_pair(pred: torch.Tensor, gt: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a prediction/GT pair and return both as float64 (B, H·W), one flattened map per row."""
    if not isinstance(pred, torch.Tensor) or not isinstance(gt, torch.Tensor):
        raise TypeError(f"{name}: expected torch tensors, got {type(pred).__name__} and {type(gt).__name__}")
    if pred.dim() not in (2, 3) or pred.shape != gt.shape:
        raise ValueError(
            f"{name}: expected pred and gt of the same shape (B, H, W) or (H, W), got {tuple(pred.shape)} and "
            f"{tuple(gt.shape)}; upsample the prediction to the GT size first (prepare_prediction)"
        )
    pred = pred.to(torch.float64)
    gt = gt.to(device=pred.device, dtype=torch.float64)
    # Flat (B, N) rows: reductions over one contiguous dimension are several times faster than over (H, W).
    return pred.reshape(-1, pred.shape[-2] * pred.shape[-1]), gt.reshape(-1, gt.shape[-2] * gt.shape[-1])


def _distribution(x: torch.Tensor) -> torch.Tensor:
    """x / (Σx + ε) per row of (B, N) maps (as a product with the reciprocal: within 1 ulp, and faster)."""
    return x * (1.0 / (x.sum(dim=1, keepdim=True) + EPS))


def _kld_sim(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KLD and SIM of (B, N) rows, sharing P' and G'."""
    p_dist, g_dist = _distribution(pred), _distribution(gt)  # (B, N) P', G'
    sim = torch.minimum(p_dist, g_dist).sum(dim=1)  # (B,) Σ min(P', G')
    # ln(G' / (P' + ε) + ε), computed in place in P''s buffer (the metrics are bound by passes over memory). The
    # + ε inside the log is the published code's: it keeps ln finite where G' = 0 (the term is then 0 · ln ε = 0).
    log_ratio = torch.div(g_dist, p_dist.add_(EPS), out=p_dist).add_(EPS).log_()  # (B, N)
    kld = log_ratio.mul_(g_dist).sum(dim=1)  # (B,) Σ G' · ln(...)
    return kld, sim


def _nss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    num_pixels = pred.shape[1]
    mean = pred.mean(dim=1, keepdim=True)  # (B, 1)
    centred = pred - mean  # (B, N) P - mean P
    std = torch.linalg.vector_norm(centred, dim=1) / num_pixels**0.5  # (B,) population std, as np.std
    # F as 0./1. in float64, compared in place in the fresh min-max buffer (no bool tensor, no conversion pass).
    fixations = normalize_minmax(gt, dims=1, eps=EPS).gt_(NSS_THRESHOLD)  # (B, N) {0, 1}
    # Σ(Z · F) = Σ((P - mean) · F) / std: Z is never materialised. Σ(F + ε) = ΣF + N·ε is the published
    # denominator, ε added per pixel; an all-zero GT (no fixation) gives 0 / (N·ε) = 0.
    denominator = fixations.sum(dim=1) + num_pixels * EPS  # (B,)
    # A constant prediction has std 0 (or a few ulps of its value): the published code returns NaN there; we
    # define Z = 0, hence NSS = 0.
    constant = std <= _CONSTANT_RTOL * mean[:, 0].abs()
    zf = torch.linalg.vecdot(centred, fixations) / torch.where(constant, 1.0, std)
    return torch.where(constant, 0.0, zf) / denominator  # (B,)


def _unbatch(values: torch.Tensor, batched: bool) -> torch.Tensor:
    return values if batched else values[0]


def kld(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Kullback-Leibler divergence of the prediction from the GT, KLD = Σ G' · ln(G' / (P' + ε) + ε).

    P' = P / (ΣP + ε), G' = G / (ΣG + ε), ε = 1e-12 (Cross-View-AG / LOCATE ``cal_kl``). Lower is better.

    Edge cases: an all-zero GT gives exactly 0 (every term is 0 · ln ε); an all-zero prediction gives a large
    finite value (about Σ G' ln(G' / ε)), never NaN or inf. Pixels where P = 0 and G > 0 weigh ln(G' / ε) ≈ 20-28
    each, which makes KLD sensitive to exactly where the minimum of P lies (see the module docstring).

    Args:
        pred: prediction, (B, H, W) or (H, W), already min-max normalised at the evaluation size
            (see :func:`prepare_prediction`); non-negative.
        gt: GT heatmap of the same shape, in [0, 1].

    Returns:
        float64 tensor (B,) or 0-d: one value per image.
    """
    batched = pred.dim() == 3
    pred, gt = _check_pair(pred, gt, "kld")
    return _unbatch(_kld_sim(pred, gt)[0], batched)


def sim(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Histogram intersection, SIM = Σ min(P', G') with P', G' as in :func:`kld`. Higher is better, at most 1.

    Edge cases: an all-zero GT or an all-zero prediction gives 0.

    Args:
        pred: prediction, (B, H, W) or (H, W), min-max normalised at the evaluation size; non-negative.
        gt: GT heatmap of the same shape, in [0, 1].

    Returns:
        float64 tensor (B,) or 0-d.
    """
    batched = pred.dim() == 3
    pred, gt = _check_pair(pred, gt, "sim")
    return _unbatch(_kld_sim(pred, gt)[1], batched)


def nss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Normalised scanpath saliency, NSS = Σ(Z · F) / Σ(F + ε). Higher is better.

    Z = (P − mean P) / std P with the population standard deviation; F = [minmax(G) > 0.1], the min-max using
    ε = 1e-12 (``utils.maps.normalize_minmax``); ε is added per pixel in the denominator, as in LOCATE's
    ``cal_nss``. (LOCATE divides P and G by 255 once more inside ``cal_nss``: Z is scale-invariant and the
    min-max changes by less than 1e-9, so only a GT pixel within 1e-9 of the 0.1 threshold could differ.)

    Edge cases: an all-zero GT has no fixation, NSS = 0; a constant prediction (zero std, for which the
    published code returns NaN) has Z = 0 everywhere, NSS = 0.

    Args:
        pred: prediction, (B, H, W) or (H, W), at the evaluation size.
        gt: GT heatmap of the same shape, in [0, 1].

    Returns:
        float64 tensor (B,) or 0-d.
    """
    batched = pred.dim() == 3
    pred, gt = _check_pair(pred, gt, "nss")
    return _unbatch(_nss(pred, gt), batched)


def compute_metrics(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
    """KLD, SIM and NSS together, sharing P' and G' (what the evaluator calls).

    Args:
        pred: prediction (B, H, W) or (H, W), min-max normalised at the evaluation size.
        gt: GT of the same shape, in [0, 1].

    Returns:
        ``{"kld", "sim", "nss"}``, each float64 (B,) or 0-d, equal to :func:`kld`, :func:`sim`, :func:`nss`.
    """
    batched = pred.dim() == 3
    pred, gt = _check_pair(pred, gt, "compute_metrics")
    parts: dict[str, list[torch.Tensor]] = {"kld": [], "sim": [], "nss": []}
    # Chunks of a few images keep the float64 temporaries in the CPU cache (a 224² map is 400 kB); every chunk is
    # still one vectorised computation over its images and pixels.
    for start in range(0, pred.shape[0], _CHUNK):
        p, g = pred[start : start + _CHUNK], gt[start : start + _CHUNK]  # (b, N)
        kld_values, sim_values = _kld_sim(p, g)
        parts["kld"].append(kld_values)
        parts["sim"].append(sim_values)
        parts["nss"].append(_nss(p, g))
    return {key: _unbatch(torch.cat(values), batched) for key, values in parts.items()}


def prepare_prediction(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """The protocol's prediction step: bilinear upsampling to the evaluation size, then min-max to [0, 1].

    Upsampling uses ``align_corners=False`` (the half-pixel convention of ``cv2.resize``, which the published
    code uses) in the map's precision (float32 like the published code, or float64 for float64 input; lower
    precisions are raised to float32); min-max is ``utils.maps.normalize_minmax`` (ε = 1e-12) in float64.

    A constant map (range below 1e-10 of its magnitude) becomes all ones, the uniform distribution, instead of
    the all zeros that min-max would give: a map that says nothing is scored as "everywhere equally", so the
    uniform baseline gets a meaningful KLD and SIM (its NSS is 0). The published code has no such case (its NSS
    is NaN for a constant map), so this changes no published number.

    Args:
        maps: (B, h, w) or (h, w) predictions at any resolution (the model's patch grid or already full size).
        size: evaluation size, an int for a square or (H, W).

    Returns:
        float64 (B, H, W) (or (H, W) for a 2-d input) in [0, 1].
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() not in (2, 3):
        found = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"prepare_prediction: expected maps of shape (B, h, w) or (h, w), got {found}")
    batched = maps.dim() == 3
    out_size = (size, size) if isinstance(size, int) else tuple(size)
    # Upsample in the map's own precision (float32 for a model, as the published cv2.resize did; float64 stays
    # float64), then min-max in float64.
    x = maps if maps.dtype in (torch.float32, torch.float64) else maps.float()
    x = x if batched else x.unsqueeze(0)  # (B, h, w)
    # Constancy survives bilinear upsampling, so test it on the small map (cheap).
    lo = x.flatten(1).amin(dim=1)  # (B,)
    hi = x.flatten(1).amax(dim=1)
    constant = (hi - lo) <= _CONSTANT_RTOL * torch.maximum(hi.abs(), lo.abs())  # (B,)
    if tuple(x.shape[-2:]) != out_size:
        x = F.interpolate(x.unsqueeze(1), size=out_size, mode="bilinear", align_corners=False).squeeze(1)  # (B, H, W)
    x = normalize_minmax(x.to(torch.float64), dims=2, eps=EPS)
    if bool(constant.any()):
        x[constant] = 1.0
    return x if batched else x[0]
