"""One sample of the synthetic world: an egocentric or exocentric image, its part masks and GT, encoded.

Every sample comes from its own ``numpy`` generator seeded with (seed, kind, affordance, object, index), so the
same seed gives byte-identical files whatever the number of worker processes.
"""

from __future__ import annotations

import cv2
import numpy as np

from datasets.synthetic.draw import (
    _SS,
    _background,
    _clutter_mask,
    _draw_arm,
    _draw_object,
    _draw_target,
    _finish,
    _heatmap,
    _object_center,
    _paint_flat,
    _place,
    _random_muted_color,
    _sample_points,
    _shrink_mask,
)
from datasets.synthetic.world import AFFORDANCE_PART, OBJECT_SPECS, TOOL_TARGETS

_JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 92]
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]
_KIND_CODES = {"exo": 1, "ego": 2, "test": 3}


def _rng_for(seed: int, kind: str, aff: str, obj: str, index: int) -> np.random.Generator:
    layout_affs = sorted(AFFORDANCE_PART)
    objs = sorted(OBJECT_SPECS)
    return np.random.default_rng([seed, _KIND_CODES[kind], layout_affs.index(aff), objs.index(obj), index])


def render_ego(obj: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """An egocentric image: the object alone on a textured background.

    Returns:
        The uint8 RGB (size, size, 3) image and the visible part masks (uint8 0/255, (size, size)) by part type.
    """
    spec = OBJECT_SPECS[obj]
    big = size * _SS
    for _ in range(10):
        canvas = _background(big, rng)
        pose = _place(spec, big, (0.3, 0.42), rng)
        visible = _draw_object(canvas, spec, pose, rng)
        masks = {t: _shrink_mask(m, size) for t, m in visible.items()}
        if all(masks[AFFORDANCE_PART[a]].any() for a in spec.affordances):
            break
    return _finish(canvas, size, rng), masks


def render_exo(aff: str, obj: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """An exocentric image: the object in use by a human proxy, plus clutter and distractors (uint8 RGB)."""
    spec = OBJECT_SPECS[obj]
    big = size * _SS
    canvas = _background(big, rng)
    for _ in range(int(rng.integers(2, 5))):  # clutter behind the object
        _paint_flat(canvas, _clutter_mask(big, rng, (0.06, 0.2)), _random_muted_color(rng), shade=0.2)
    pose = _place(spec, big, (0.24, 0.34), rng)
    visible = _draw_object(canvas, spec, pose, rng)
    center = _object_center(visible)
    functional = visible[AFFORDANCE_PART[aff]]
    if aff in TOOL_TARGETS:
        # target on the functional part, at one of its points far from the object's centre (the working end)
        cand = _sample_points(functional, 24, rng) if functional.any() else center[None]
        dist = np.linalg.norm(cand - center, axis=1)
        at = cand[rng.choice(np.argsort(dist)[-5:])]
        out = (at - center) / (np.linalg.norm(at - center) + 1e-6)
        _draw_target(canvas, TOOL_TARGETS[aff], at, out, rng)
        grip = visible[spec.grip]
        contact = _sample_points(grip, 1, rng)[0] if grip.any() else center
    else:
        contact = _sample_points(functional, 1, rng)[0] if functional.any() else center
    away = contact - center
    if np.linalg.norm(away) < 1e-3:
        away = rng.normal(size=2)
    arm = _draw_arm(canvas, contact, away / np.linalg.norm(away), rng)
    for _ in range(int(rng.integers(0, 3))):  # small distractors in front, never over the functional part
        m = _clutter_mask(big, rng, (0.03, 0.07))
        if not (m & (functional | arm)).any():
            _paint_flat(canvas, m, _random_muted_color(rng), shade=0.25)
    return _finish(canvas, size, rng)


def _render_job(job: tuple[str, str, str, int, int, int]) -> dict[str, bytes]:
    """Render and encode one file set; module-level so that worker processes can run it."""
    kind, aff, obj, index, seed, size = job
    rng = _rng_for(seed, kind, aff, obj, index)
    if kind == "exo":
        img = render_exo(aff, obj, size, rng)
        return {"image": _encode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))}
    img, masks = render_ego(obj, size, rng)
    out = {"image": _encode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))}
    if kind == "ego":  # for the oracle-prototype diagnostic only; the method never reads it
        out["part"] = _encode(".png", masks[AFFORDANCE_PART[aff]])
    if kind == "test":
        part = masks[AFFORDANCE_PART[aff]]
        union = np.zeros_like(part)
        for m in masks.values():
            union |= m
        out["gt"] = _encode(".png", _heatmap(part, rng))
        out["object"] = _encode(".png", union)
        out["part"] = _encode(".png", part)
    return out


def _encode(ext: str, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img, _JPEG_PARAMS if ext == ".jpg" else _PNG_PARAMS)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {ext} image")
    return buf.tobytes()
