"""Drawing primitives of the synthetic world: object poses, filled parts, patterns, backgrounds, arms, targets.

Everything works on a supersampled float canvas (``_SS`` times the output side) that ``_finish`` shrinks
with area averaging, which gives anti-aliased edges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from datasets.synthetic.world import PART_TYPES, ObjectSpec, PartType

_SS = 2  # supersampling factor: draw at 2x and shrink with area averaging for anti-aliased edges


@dataclass
class Pose:
    """Similarity transform from canonical object units to (supersampled) pixels."""

    cx: float
    cy: float
    scale: float  # pixels per canonical unit
    angle: float  # radians
    mirror: bool
    stretch: tuple[float, float] = (1.0, 1.0)  # small per-instance anisotropy of the canonical shape

    def apply(self, pts: np.ndarray) -> np.ndarray:
        """(N, 2) canonical -> (N, 2) pixels."""
        p = pts * np.asarray(self.stretch, np.float64)
        if self.mirror:  # left-right, so that upright objects stay upright
            p = p * np.asarray([-1.0, 1.0])
        c, s = math.cos(self.angle), math.sin(self.angle)
        rot = np.asarray([[c, -s], [s, c]])
        return p @ rot.T * self.scale + np.asarray([self.cx, self.cy])


def _primitive_contours(prim: tuple) -> list[np.ndarray]:
    """Canonical-unit contours of one primitive (a ring gives two: outer and hole)."""
    kind, params = prim
    if kind == "poly":
        return [np.asarray(params, np.float64)]
    t = np.linspace(0.0, 2.0 * math.pi, 48, endpoint=False)
    if kind == "ellipse":
        cx, cy, rx, ry = params
        return [np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)]
    if kind == "ring":
        cx, cy, ro, ri = params
        return [
            np.stack([cx + ro * np.cos(t), cy + ro * np.sin(t)], axis=1),
            np.stack([cx + ri * np.cos(t), cy + ri * np.sin(t)], axis=1),
        ]
    raise ValueError(f"unknown primitive kind {kind!r}")


def _fill(mask: np.ndarray, contours_px: Sequence[np.ndarray]) -> None:
    """Fill pixel contours into a uint8 mask with 1/4-pixel precision (even-odd rule makes ring holes)."""
    pts = [np.round(c * 4.0).astype(np.int32).reshape(-1, 1, 2) for c in contours_px]  # (N, 1, 2)
    cv2.fillPoly(mask, pts, 255, lineType=cv2.LINE_8, shift=2)


def _object_bounds(spec: ObjectSpec) -> np.ndarray:
    pts = np.concatenate([c for _, prims in spec.parts for p in prims for c in _primitive_contours(p)])
    return pts


def _place(spec: ObjectSpec, size: int, rel_scale: tuple[float, float], rng: np.random.Generator) -> Pose:
    """Random pose keeping the whole object inside a size x size canvas."""
    if spec.upright:
        angle = float(rng.uniform(-spec.max_tilt, spec.max_tilt))
    else:
        angle = float(rng.uniform(-math.pi, math.pi))
    pose = Pose(
        cx=0.0,
        cy=0.0,
        scale=float(rng.uniform(*rel_scale)) * size,
        angle=angle,
        mirror=bool(rng.random() < 0.5),
        stretch=(float(rng.uniform(0.9, 1.1)), float(rng.uniform(0.88, 1.12))),
    )
    pts = pose.apply(_object_bounds(spec))
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    extent = hi - lo
    margin = 0.03 * size
    if extent.max() > size - 2 * margin:  # too big for the canvas: shrink to fit
        pose.scale *= (size - 2 * margin) / extent.max()
        pts = pose.apply(_object_bounds(spec))
        lo, hi = pts.min(axis=0), pts.max(axis=0)
    cx = rng.uniform(margin - lo[0], size - margin - hi[0])
    cy = rng.uniform(margin - lo[1], size - margin - hi[1])
    pose.cx, pose.cy = float(cx), float(cy)
    return pose


# ------------------------------------------------------------------------------------------------ painting
def _pattern(kind: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Pattern in [0, 1] on object-aligned coordinates (u along the long axis, v across), period in pixels."""
    if kind == "solid":
        return np.zeros_like(u)
    if kind == "stripes":  # diagonal stripes
        return ((np.floor((u + v) / period) % 2) == 0).astype(np.float32)
    if kind == "bands":  # stripes across the long axis
        return ((np.floor(u / period) % 2) == 0).astype(np.float32)
    if kind == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "dots":
        fu = u / period - np.floor(u / period) - 0.5
        fv = v / period - np.floor(v / period) - 0.5
        return (fu * fu + fv * fv < 0.09).astype(np.float32)
    if kind == "sheen":  # smooth metallic highlight bands
        return (0.5 + 0.5 * np.cos(2.0 * math.pi * (u + 0.5 * v) / period)).astype(np.float32)
    raise ValueError(f"unknown pattern {kind!r}")


def _paint_part(
    canvas: np.ndarray, mask: np.ndarray, ptype: PartType, pose: Pose, tint: np.ndarray | None = None
) -> None:
    """Paint a textured part into ``canvas`` (float32 (H, W, 3)) where ``mask`` is set, with a dark outline."""
    x0, y0, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return
    y1, x1 = y0 + h, x0 + w
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - pose.cx  # (1, w)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - pose.cy  # (h, 1)
    c, s = math.cos(pose.angle), math.sin(pose.angle)
    u = dx * c + dy * s  # (h, w)
    v = -dx * s + dy * c
    if pose.mirror:
        u = -u
    p = _pattern(ptype.pattern, u, v, max(2.0, ptype.period * pose.scale))[..., None]  # (h, w, 1)
    c1, c2 = np.asarray(ptype.color, np.float32), np.asarray(ptype.color2, np.float32)
    if tint is not None:
        c1, c2 = c1 + tint, c2 + tint
    col = c1 * (1.0 - p) + c2 * p  # (h, w, 3)
    sub = mask[y0:y1, x0:x1] > 0
    region = canvas[y0:y1, x0:x1]
    region[sub] = col[sub]
    # outline: the mask minus its erosion, painted darker, so adjacent parts stay separable
    inner = cv2.erode(mask[y0:y1, x0:x1], np.ones((3, 3), np.uint8), iterations=_SS, borderValue=0)
    edge = sub & (inner == 0)
    region[edge] = 0.55 * c1
    canvas[y0:y1, x0:x1] = region


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A muted, low-frequency textured background (floor/wall split, blotches, fine grain)."""
    hue = rng.uniform(0, 180)
    base = np.uint8([[[hue, rng.uniform(10, 60), rng.uniform(95, 215)]]])
    base_rgb = cv2.cvtColor(base, cv2.COLOR_HSV2RGB).astype(np.float32)[0, 0]
    # blotches: mostly brightness, a little colour
    grid = rng.normal(0.0, 14.0, size=(6, 6, 1)) + rng.normal(0.0, 5.0, size=(6, 6, 3))
    blotch = cv2.resize(grid.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)  # (S, S, 3)
    img = base_rgb + blotch
    if rng.random() < 0.6:  # floor/wall split at a random height
        split = int(rng.uniform(0.3, 0.8) * size)
        img[split:] *= np.float32(rng.uniform(0.75, 0.92))
    if rng.random() < 0.5:  # faint tiles or planks
        period = rng.uniform(0.08, 0.2) * size
        lines = (np.arange(size, dtype=np.float32) % period < max(1.0, size / 160)).astype(np.float32)  # (S,)
        img -= 14.0 * (lines[None, :, None] if rng.random() < 0.5 else lines[:, None, None])
    return img


def _random_muted_color(rng: np.random.Generator) -> np.ndarray:
    hsv = np.uint8([[[rng.uniform(0, 180), rng.uniform(30, 100), rng.uniform(70, 190)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)[0, 0]


def _clutter_mask(size: int, rng: np.random.Generator, rel: tuple[float, float]) -> np.ndarray:
    """A random rectangle, ellipse or triangle mask (clutter and distractor shapes)."""
    mask = np.zeros((size, size), np.uint8)
    c = rng.uniform(0, size, 2)
    r = rng.uniform(*rel) * size
    kind = int(rng.integers(3))
    if kind == 0:
        a = rng.uniform(0, math.pi)
        w, h = r, r * rng.uniform(0.3, 1.0)
        pts = (
            np.asarray([[-w, -h], [w, -h], [w, h], [-w, h]])
            @ np.asarray([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]).T
        )
        _fill(mask, [pts + c])
    elif kind == 1:
        t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        ry = r * rng.uniform(0.4, 1.0)
        _fill(mask, [np.stack([c[0] + r * np.cos(t), c[1] + ry * np.sin(t)], 1)])
    else:
        ang = rng.uniform(0, 2 * math.pi) + np.asarray([0.0, 2.1, 4.2])
        _fill(mask, [np.stack([c[0] + r * np.cos(ang), c[1] + r * np.sin(ang)], 1)])
    return mask


def _paint_flat(canvas: np.ndarray, mask: np.ndarray, color: np.ndarray, shade: float = 0.0) -> None:
    sel = mask > 0
    canvas[sel] = color
    if shade:
        inner = cv2.erode(mask, np.ones((3, 3), np.uint8), iterations=_SS, borderValue=0)
        canvas[sel & (inner == 0)] = color * (1.0 - shade)


def _draw_object(canvas: np.ndarray, spec: ObjectSpec, pose: Pose, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw the object's parts in order; return each part's *visible* mask (uint8 0/255)."""
    size = canvas.shape[0]
    visible: dict[str, np.ndarray] = {}
    tint = rng.normal(0.0, 5.0, size=3).astype(np.float32)  # per-instance colour variation, small on purpose
    for ptype, prims in spec.parts:
        mask = np.zeros((size, size), np.uint8)
        _fill(mask, [pose.apply(c) for p in prims for c in _primitive_contours(p)])
        _paint_part(canvas, mask, PART_TYPES[ptype], pose, tint)
        for other in visible.values():
            other[mask > 0] = 0
        visible[ptype] = mask
    return visible


def _sample_points(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n random (x, y) pixel positions inside a mask."""
    ys, xs = np.nonzero(mask)
    idx = rng.integers(0, ys.size, size=n)
    return np.stack([xs[idx], ys[idx]], axis=1).astype(np.float64)


def _object_center(masks: dict[str, np.ndarray]) -> np.ndarray:
    union = np.zeros_like(next(iter(masks.values())))
    for m in masks.values():
        union |= m
    ys, xs = np.nonzero(union)
    return np.asarray([xs.mean(), ys.mean()])


def _draw_arm(canvas: np.ndarray, contact: np.ndarray, away: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw a skin-coloured arm from the image border to ``contact`` ending in a hand; return its mask."""
    size = canvas.shape[0]
    hand = 0.12 * size  # hand length, the same for every affordance
    ang = math.atan2(away[1], away[0]) + rng.uniform(-0.5, 0.5)
    d = np.asarray([math.cos(ang), math.sin(ang)])
    # distance from contact to the border along d, then a bit further so the arm leaves the image
    ts = [((size if d[i] > 0 else 0) - contact[i]) / d[i] for i in range(2) if abs(d[i]) > 1e-6]
    start = contact + d * (min(t for t in ts if t > 0) + hand)
    skin = np.asarray([214.0, 162.0, 126.0]) + rng.normal(0.0, 6.0, 3)
    mask = np.zeros((size, size), np.uint8)
    wrist = contact + d * 0.45 * hand
    cv2.line(mask, tuple(np.round(start).astype(int)), tuple(np.round(wrist).astype(int)), 255, int(0.5 * hand))
    palm_c = contact + d * 0.12 * hand
    deg = math.degrees(math.atan2(d[1], d[0]))
    cv2.ellipse(mask, tuple(np.round(palm_c).astype(int)), (int(0.5 * hand), int(0.36 * hand)), deg, 0, 360, 255, -1)
    side = np.asarray([-d[1], d[0]]) * (1 if rng.random() < 0.5 else -1)
    thumb_c = contact + d * 0.2 * hand + side * 0.34 * hand
    cv2.ellipse(
        mask, tuple(np.round(thumb_c).astype(int)), (int(0.3 * hand), int(0.12 * hand)), deg - 35, 0, 360, 255, -1
    )
    _paint_flat(canvas, mask, skin.astype(np.float32), shade=0.3)
    # a sleeve on the outer half of the arm (muted colour: not confusable with a part type)
    sleeve = np.zeros((size, size), np.uint8)
    mid = wrist + (start - wrist) * rng.uniform(0.35, 0.6)
    cv2.line(sleeve, tuple(np.round(start).astype(int)), tuple(np.round(mid).astype(int)), 255, int(0.62 * hand))
    _paint_flat(canvas, sleeve, _random_muted_color(rng), shade=0.25)
    return mask | sleeve


def _draw_target(canvas: np.ndarray, kind: str, at: np.ndarray, out: np.ndarray, rng: np.random.Generator) -> None:
    """Draw a tool-use target touching the functional part at ``at``, pushed outwards along ``out``."""
    size = canvas.shape[0]
    mask = np.zeros((size, size), np.uint8)
    if kind == "food":  # an irregular green vegetable with darker spots
        r = 0.085 * size
        c = at + out * 0.55 * r
        t = np.linspace(0, 2 * math.pi, 14, endpoint=False)
        rad = r * rng.uniform(0.75, 1.2, size=t.size)
        _fill(mask, [np.stack([c[0] + rad * np.cos(t), c[1] + rad * np.sin(t)], 1)])
        _paint_flat(canvas, mask, np.asarray([58.0, 164.0, 58.0]), shade=0.35)
        for _ in range(3):
            spot = np.zeros_like(mask)
            q = c + rng.normal(0, 0.35 * r, 2)
            cv2.circle(spot, tuple(np.round(q).astype(int)), max(1, int(0.18 * r)), 255, -1)
            canvas[(spot > 0) & (mask > 0)] = np.asarray([28.0, 104.0, 30.0])
    elif kind == "ball":  # a white ball with a red seam
        r = 0.07 * size
        c = at + out * 0.8 * r
        cv2.circle(mask, tuple(np.round(c).astype(int)), int(r), 255, -1)
        _paint_flat(canvas, mask, np.asarray([244.0, 244.0, 240.0]), shade=0.2)
        seam = np.zeros_like(mask)
        cv2.ellipse(seam, tuple(np.round(c).astype(int)), (int(r), int(0.5 * r)), rng.uniform(0, 180), 0, 360, 255, _SS)
        canvas[(seam > 0) & (mask > 0)] = np.asarray([200.0, 30.0, 30.0])
    elif kind == "liquid":  # a translucent light-blue stream of drops leaving the part
        r = 0.06 * size
        for k in range(4):
            c = at + out * (0.3 + 1.3 * k) * r + rng.normal(0, 0.15 * r, 2)
            cv2.circle(mask, tuple(np.round(c).astype(int)), max(1, int(r * (1.0 - 0.18 * k))), 255, -1)
        sel = mask > 0
        canvas[sel] = 0.35 * canvas[sel] + 0.65 * np.asarray([96.0, 168.0, 255.0])
    else:
        raise ValueError(f"unknown target {kind!r}")


def _finish(canvas: np.ndarray, out_size: int, rng: np.random.Generator) -> np.ndarray:
    """Colour jitter (small, so part types stay recognisable), grain, shrink to the output size, uint8 RGB."""
    img = cv2.resize(canvas, (out_size, out_size), interpolation=cv2.INTER_AREA)
    img *= np.float32(rng.uniform(0.9, 1.1))
    img += rng.uniform(-8.0, 8.0, size=3).astype(np.float32)
    img += 2.5 * rng.standard_normal(size=img.shape, dtype=np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _shrink_mask(mask: np.ndarray, out_size: int) -> np.ndarray:
    small = cv2.resize(mask, (out_size, out_size), interpolation=cv2.INTER_AREA)
    return np.where(small >= 128, 255, 0).astype(np.uint8)


def _heatmap(part: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """AGD20K-like soft GT: a few points inside the part, Gaussian-blurred, peak 255 (uint8).

    The blur follows the part's thickness (half-width from a distance transform, clipped to 2.5-6 % of the image)
    so that a thin handle gets a thin blob, and it shrinks until the peak lies inside the part (a wide blur over
    two separate blobs could put it between them): "the GT peak is on the part" always holds.
    """
    size = part.shape[0]
    pts = _sample_points(part, int(rng.integers(8, 20)), rng).astype(int)
    impulses = np.zeros(part.shape, np.float32)
    np.add.at(impulses, (pts[:, 1], pts[:, 0]), 1.0)
    half_width = float(cv2.distanceTransform((part > 0).astype(np.uint8), cv2.DIST_L2, 3).max())
    sigma = float(np.clip(half_width, 0.025 * size, 0.06 * size))
    heat = impulses
    for _ in range(8):
        heat = cv2.GaussianBlur(impulses, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        if part[y, x]:
            break
        sigma *= 0.6
    else:
        heat = impulses
    return np.clip(np.round(heat / heat.max() * 255.0), 0, 255).astype(np.uint8)
