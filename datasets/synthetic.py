"""A procedural "affordance world" written to disk exactly like AGD20K, for offline training and tests.

Why it is learnable, and honest about it:
- every object is made of 2-4 *parts*; a part's look (colour + texture) depends only on its part TYPE, and the
  types are shared across object categories (a handle looks like a handle on a knife, a hammer, a cup);
- each affordance happens on exactly one part type (``AFFORDANCE_PART``), and many objects carry two
  affordances on different parts (knife: hold -> handle, cut_with -> blade), so the object alone never tells
  the part: a model has to find *which part* goes with the action;
- exocentric images show a human proxy (a skin-coloured arm ending in a hand, the same for all affordances)
  touching the part where the person holds the object, and for tool use a target (food, a ball, liquid)
  touching the functional part; egocentric images show the object alone, so the part has to be transferred;
- the Unseen split holds out object categories whose parts reuse seen part types.

Determinism: every image comes from its own ``numpy`` generator seeded with (seed, kind, affordance, object,
index), so the same seed gives byte-identical files whatever the number of worker processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

__all__ = [
    "AFFORDANCE_PART",
    "HELD_OUT_OBJECTS",
    "MARKER_NAME",
    "OBJECT_SPECS",
    "PARTIAL_NAME",
    "PART_TYPES",
    "TOOL_TARGETS",
    "WorldLayout",
    "ensure_world",
    "generate_world",
    "main",
    "render_ego",
    "render_exo",
    "world_layout",
]

logger = logging.getLogger(__name__)

WORLD_VERSION = 2  # 2: part masks of the egocentric training images (masks/train_part/)
MARKER_NAME = ".synthetic_world.json"  # written last: its presence means "complete world with these parameters"
PARTIAL_NAME = ".synthetic_world.partial"  # written first: lets a rerun clean up an interrupted generation
_SS = 2  # supersampling factor: draw at 2x and shrink with area averaging for anti-aliased edges
_JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 92]
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]
_KIND_CODES = {"exo": 1, "ego": 2, "test": 3}


# --------------------------------------------------------------------------------------------------- world data
@dataclass(frozen=True)
class PartType:
    """Appearance of a part type: two RGB colours mixed by a pattern whose period is relative to object size."""

    color: tuple[int, int, int]
    color2: tuple[int, int, int]
    pattern: str  # solid | stripes | bands | dots | checker | sheen
    period: float = 0.2  # in units of the object's half-length


PART_TYPES: dict[str, PartType] = {
    # affordance-bearing part types
    "handle": PartType((118, 70, 34), (170, 116, 64), "stripes", 0.16),
    "blade": PartType((176, 182, 194), (238, 241, 247), "sheen", 0.55),
    "head": PartType((48, 48, 58), (128, 128, 146), "checker", 0.16),
    "cap": PartType((205, 28, 36), (150, 10, 20), "solid"),
    "spout": PartType((236, 138, 18), (252, 206, 128), "bands", 0.1),
    "rim": PartType((16, 150, 150), (140, 226, 214), "dots", 0.13),
    "seat": PartType((48, 48, 168), (120, 120, 232), "dots", 0.16),
    "saddle": PartType((168, 36, 140), (228, 128, 208), "checker", 0.1),
    "ball": PartType((232, 208, 24), (160, 128, 8), "dots", 0.3),
    "mattress": PartType((236, 164, 188), (252, 226, 234), "bands", 0.18),
    # passive part types (never carry an affordance)
    "body": PartType((192, 182, 150), (176, 166, 134), "solid"),
    "frame": PartType((66, 78, 40), (92, 104, 58), "solid"),
}

#: The part type on which each affordance happens (the GT is drawn there).
AFFORDANCE_PART: dict[str, str] = {
    "hold": "handle",
    "cut_with": "blade",
    "hit": "head",
    "open": "cap",
    "pour": "spout",
    "drink_with": "rim",
    "sit_on": "seat",
    "ride": "saddle",
    "kick": "ball",
    "throw": "ball",
    "lie_on": "mattress",
}

#: Tool-use affordances: the hand holds the grip part, a target touches the functional part.
TOOL_TARGETS: dict[str, str] = {"cut_with": "food", "hit": "ball", "pour": "liquid", "drink_with": "liquid"}


def _rect(cx: float, cy: float, w: float, h: float) -> tuple:
    return (
        "poly",
        ((cx - w / 2, cy - h / 2), (cx + w / 2, cy - h / 2), (cx + w / 2, cy + h / 2), (cx - w / 2, cy + h / 2)),
    )


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> tuple:
    return ("ellipse", (cx, cy, rx, ry))


def _ring(cx: float, cy: float, r_out: float, r_in: float) -> tuple:
    return ("ring", (cx, cy, r_out, r_in))


def _bar(x0: float, y0: float, x1: float, y1: float, width: float) -> tuple:
    """A straight bar of the given width between two points (a frame tube, a stem)."""
    dx, dy = x1 - x0, y1 - y0
    n = math.hypot(dx, dy) or 1.0
    ox, oy = -dy / n * width / 2, dx / n * width / 2
    return ("poly", ((x0 + ox, y0 + oy), (x1 + ox, y1 + oy), (x1 - ox, y1 - oy), (x0 - ox, y0 - oy)))


def _poly(*pts: tuple[float, float]) -> tuple:
    return ("poly", tuple(pts))


@dataclass(frozen=True)
class ObjectSpec:
    """An object category: parts in drawing order (part type, primitives in canonical units) and affordances.

    Canonical frame: the long axis spans about [-1, 1]; y points down, so "upright" objects have their top at -1.
    """

    parts: tuple[tuple[str, tuple[tuple, ...]], ...]
    affordances: tuple[str, ...]
    upright: bool = False  # upright objects only tilt a little; tools rotate freely
    grip: str = "handle"  # part type the hand holds for tool-use affordances
    max_tilt: float = 0.3  # radians, for upright objects

    @property
    def part_types(self) -> tuple[str, ...]:
        return tuple(p for p, _ in self.parts)


OBJECT_SPECS: dict[str, ObjectSpec] = {
    "knife": ObjectSpec(
        parts=(
            ("handle", (_rect(-0.62, 0.0, 0.76, 0.22),)),
            ("frame", (_rect(-0.2, 0.0, 0.08, 0.3),)),
            ("blade", (_poly((-0.16, -0.14), (0.6, -0.14), (1.0, 0.02), (0.68, 0.14), (-0.16, 0.14)),)),
        ),
        affordances=("cut_with", "hold"),
    ),
    "scissors": ObjectSpec(
        parts=(
            ("handle", (_ellipse(-0.7, -0.22, 0.3, 0.17), _ellipse(-0.7, 0.22, 0.3, 0.17))),
            (
                "blade",
                (
                    _poly((-0.44, -0.16), (1.0, 0.04), (0.96, 0.12), (-0.44, 0.02)),
                    _poly((-0.44, 0.16), (1.0, -0.04), (0.96, -0.12), (-0.44, -0.02)),
                ),
            ),
            ("frame", (_ellipse(-0.3, 0.0, 0.07, 0.07),)),
        ),
        affordances=("cut_with", "hold"),
    ),
    "axe": ObjectSpec(
        parts=(
            ("handle", (_rect(-0.15, 0.0, 1.7, 0.15),)),
            ("frame", (_rect(0.74, -0.02, 0.24, 0.34),)),
            ("blade", (_poly((0.62, 0.1), (0.86, 0.1), (1.02, 0.66), (0.42, 0.66)),)),
        ),
        affordances=("cut_with", "hold"),
    ),
    "hammer": ObjectSpec(
        parts=(
            ("handle", (_rect(-0.22, 0.0, 1.56, 0.17),)),
            ("head", (_rect(0.72, 0.0, 0.34, 0.84),)),
        ),
        affordances=("hit", "hold"),
    ),
    "tennis_racket": ObjectSpec(
        parts=(
            ("handle", (_rect(-0.72, 0.0, 0.56, 0.15),)),
            ("frame", (_poly((-0.46, -0.06), (-0.12, -0.3), (-0.12, 0.3), (-0.46, 0.06)),)),
            ("head", (_ellipse(0.38, 0.0, 0.6, 0.42),)),
        ),
        affordances=("hit", "hold"),
    ),
    "baseball_bat": ObjectSpec(
        parts=(
            ("handle", (_rect(-0.56, 0.0, 0.9, 0.11), _ellipse(-1.0, 0.0, 0.05, 0.1))),
            ("head", (_poly((-0.12, -0.06), (0.9, -0.16), (0.9, 0.16), (-0.12, 0.06)), _ellipse(0.9, 0.0, 0.09, 0.16))),
        ),
        affordances=("hit", "hold"),
    ),
    "cup": ObjectSpec(
        parts=(
            ("handle", (_ellipse(0.5, 0.08, 0.34, 0.36),)),
            ("body", (_poly((-0.5, -0.45), (0.5, -0.45), (0.42, 0.72), (-0.42, 0.72)),)),
            ("rim", (_rect(0.0, -0.53, 1.1, 0.2),)),
        ),
        affordances=("drink_with", "hold"),
        upright=True,
    ),
    "wine_glass": ObjectSpec(
        parts=(
            ("handle", (_rect(0.0, 0.42, 0.12, 0.72), _ellipse(0.0, 0.82, 0.38, 0.09))),
            ("body", (_ellipse(0.0, -0.2, 0.44, 0.46),)),
            ("rim", (_poly((-0.4, -0.74), (0.4, -0.74), (0.45, -0.5), (-0.45, -0.5)),)),
        ),
        affordances=("drink_with", "hold"),
        upright=True,
    ),
    "bottle": ObjectSpec(
        parts=(
            ("body", (_rect(0.0, 0.4, 0.74, 1.12),)),
            (
                "spout",
                (_poly((-0.37, -0.16), (0.37, -0.16), (0.15, -0.56), (-0.15, -0.56)), _rect(0.0, -0.64, 0.3, 0.2)),
            ),
            ("cap", (_rect(0.0, -0.84, 0.36, 0.24),)),
        ),
        affordances=("open", "pour"),
        upright=True,
        grip="body",
    ),
    "chair": ObjectSpec(
        parts=(
            ("frame", (_rect(-0.42, -0.45, 0.14, 1.0), _rect(-0.38, 0.55, 0.1, 0.8), _rect(0.38, 0.55, 0.1, 0.8))),
            ("seat", (_rect(0.0, 0.1, 1.0, 0.22),)),
        ),
        affordances=("sit_on",),
        upright=True,
        grip="seat",
    ),
    "bicycle": ObjectSpec(
        parts=(
            (
                "frame",
                (
                    _ring(-0.6, 0.36, 0.38, 0.3),
                    _ring(0.6, 0.36, 0.38, 0.3),
                    _bar(-0.6, 0.36, -0.16, -0.2, 0.07),
                    _bar(-0.16, -0.2, 0.44, -0.2, 0.07),
                    _bar(0.44, -0.2, 0.6, 0.36, 0.07),
                    _bar(-0.6, 0.36, 0.06, 0.36, 0.07),
                    _bar(0.06, 0.36, -0.16, -0.2, 0.07),
                    _bar(0.44, -0.2, 0.42, -0.46, 0.06),
                    _bar(-0.16, -0.2, -0.2, -0.3, 0.06),
                ),
            ),
            ("saddle", (_ellipse(-0.2, -0.33, 0.22, 0.08),)),
            ("handle", (_rect(0.42, -0.48, 0.3, 0.09),)),
        ),
        affordances=("hold", "ride"),
        upright=True,
        max_tilt=0.2,
    ),
    "motorcycle": ObjectSpec(
        parts=(
            (
                "frame",
                (_ring(-0.62, 0.42, 0.32, 0.2), _ring(0.62, 0.42, 0.32, 0.2), _bar(0.5, -0.34, 0.62, 0.42, 0.08)),
            ),
            ("body", (_poly((-0.72, 0.06), (0.46, -0.12), (0.72, 0.22), (-0.5, 0.38)),)),
            ("saddle", (_rect(-0.22, -0.08, 0.62, 0.15),)),
            ("handle", (_rect(0.52, -0.38, 0.3, 0.09),)),
        ),
        affordances=("hold", "ride"),
        upright=True,
        max_tilt=0.2,
    ),
    "soccer_ball": ObjectSpec(
        parts=(
            ("ball", (_ellipse(0.0, 0.0, 0.9, 0.9),)),
            ("frame", (_poly((0.0, -0.22), (0.21, -0.07), (0.13, 0.18), (-0.13, 0.18), (-0.21, -0.07)),)),
        ),
        affordances=("kick",),
        grip="ball",
    ),
    "basketball": ObjectSpec(
        parts=(
            ("ball", (_ellipse(0.0, 0.0, 0.9, 0.9),)),
            ("frame", (_rect(0.0, 0.0, 1.78, 0.06), _rect(0.0, 0.0, 0.06, 1.78))),
        ),
        affordances=("throw",),
        grip="ball",
    ),
    "rugby_ball": ObjectSpec(
        parts=(
            ("ball", (_ellipse(0.0, 0.0, 1.0, 0.56),)),
            (
                "frame",
                (_rect(0.0, -0.24, 0.56, 0.06), *(_rect(x, -0.24, 0.05, 0.16) for x in (-0.2, -0.07, 0.07, 0.2))),
            ),
        ),
        affordances=("kick", "throw"),
        grip="ball",
    ),
    "bed": ObjectSpec(
        parts=(
            ("frame", (_rect(-0.92, -0.16, 0.14, 0.92), _rect(0.0, 0.3, 1.9, 0.16), _rect(0.86, 0.44, 0.08, 0.2))),
            ("mattress", (_rect(0.04, 0.08, 1.72, 0.28),)),
            ("body", (_ellipse(-0.64, -0.1, 0.19, 0.09),)),
        ),
        affordances=("lie_on",),
        upright=True,
        grip="mattress",
        max_tilt=0.15,
    ),
}

#: Object categories that appear only in the Unseen test set (their part types all appear on seen objects).
HELD_OUT_OBJECTS: tuple[str, ...] = ("axe", "motorcycle", "rugby_ball", "wine_glass")


def _check_world_definition() -> None:
    for name, spec in OBJECT_SPECS.items():
        for aff in spec.affordances:
            if AFFORDANCE_PART[aff] not in spec.part_types:
                raise AssertionError(f"{name}: affordance {aff} needs part {AFFORDANCE_PART[aff]}")
        if spec.grip not in spec.part_types:
            raise AssertionError(f"{name}: grip part {spec.grip} missing")
        if len(set(spec.part_types)) != len(spec.part_types):
            raise AssertionError(f"{name}: a part type appears twice")
    seen_types = {t for n, s in OBJECT_SPECS.items() if n not in HELD_OUT_OBJECTS for t in s.part_types}
    for name in HELD_OUT_OBJECTS:
        missing = set(OBJECT_SPECS[name].part_types) - seen_types
        if missing:
            raise AssertionError(f"held-out {name} has part types never seen in training: {missing}")


_check_world_definition()


@dataclass(frozen=True)
class WorldLayout:
    """Which (affordance, object) folders each split has."""

    seen_affordances: list[str]
    unseen_affordances: list[str]
    objects: list[str]
    seen_pairs: list[tuple[str, str]]  # Seen train and Seen test
    unseen_train_pairs: list[tuple[str, str]]
    unseen_test_pairs: list[tuple[str, str]]


def world_layout() -> WorldLayout:
    """The split structure implied by ``OBJECT_SPECS`` and ``HELD_OUT_OBJECTS``.

    Unseen affordances are those of held-out objects that still have a training object left.
    """
    pairs = sorted((a, o) for o, s in OBJECT_SPECS.items() for a in s.affordances)
    seen_affs = sorted({a for a, _ in pairs})
    train_affs = {a for a, o in pairs if o not in HELD_OUT_OBJECTS}
    held_affs = {a for a, o in pairs if o in HELD_OUT_OBJECTS}
    unseen_affs = sorted(train_affs & held_affs)
    return WorldLayout(
        seen_affordances=seen_affs,
        unseen_affordances=unseen_affs,
        objects=sorted(OBJECT_SPECS),
        seen_pairs=pairs,
        unseen_train_pairs=[(a, o) for a, o in pairs if o not in HELD_OUT_OBJECTS and a in unseen_affs],
        unseen_test_pairs=[(a, o) for a, o in pairs if o in HELD_OUT_OBJECTS and a in unseen_affs],
    )


# ------------------------------------------------------------------------------------------------ geometry
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


@dataclass
class _Render:
    image: np.ndarray  # float32 (S, S, 3) supersampled canvas
    part_masks: dict[str, np.ndarray] = field(default_factory=dict)  # visible part masks, uint8 0/255
    pose: Pose | None = None


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


# ------------------------------------------------------------------------------------------------ one sample
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


# ------------------------------------------------------------------------------------------------ the world
def _params(seed: int, image_size: int, exo_per_folder: int, ego_per_folder: int, test_per_folder: int) -> dict:
    return {
        "version": WORLD_VERSION,
        "seed": int(seed),
        "image_size": int(image_size),
        "exo_per_folder": int(exo_per_folder),
        "ego_per_folder": int(ego_per_folder),
        "test_per_folder": int(test_per_folder),
    }


def _file_name(obj: str, kind: str, index: int, ext: str) -> str:
    return f"{obj}_{kind}_{index:04d}{ext}"


def generate_world(
    out: str | os.PathLike,
    seed: int = 0,
    image_size: int = 128,
    exo_per_folder: int = 24,
    ego_per_folder: int = 8,
    test_per_folder: int = 6,
    workers: int = 0,
    progress: bool = True,
) -> Path:
    """Write a complete synthetic world in the AGD20K layout under ``out``.

    Writes ``<out>/{Seen,Unseen}/{trainset,testset}/...`` as AGD20K does, masks of the test images under
    ``<out>/<Split>/masks/{object,part}/<aff>/<obj>/<stem>.png`` and the affordance-part masks of the egocentric
    training images under ``<out>/<Split>/masks/train_part/`` (diagnostics only), ``classes.json``, ``README.txt``,
    ``contact_sheet.png``, and last a marker file with the parameters (see ``ensure_world``).

    Args:
        out: the world root; created if needed. A previous synthetic world there is replaced; a folder holding
            Seen/Unseen that this generator did not write is refused (it might be the real dataset).
        seed: the same seed gives byte-identical files.
        image_size: side of every (square) image.
        exo_per_folder: exocentric training images per <affordance>/<object> folder.
        ego_per_folder: egocentric training images per folder.
        test_per_folder: egocentric test images (with GT and masks) per folder.
        workers: processes used for rendering (0 renders in this process); never changes the output.
        progress: show a tqdm progress bar.

    Returns:
        The world root.
    """
    root = Path(out)
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    if min(exo_per_folder, ego_per_folder, test_per_folder) < 1:
        raise ValueError(
            "exo_per_folder, ego_per_folder and test_per_folder must all be >= 1, got "
            f"{exo_per_folder}, {ego_per_folder}, {test_per_folder}"
        )
    params = _params(seed, image_size, exo_per_folder, ego_per_folder, test_per_folder)
    _clear_previous_world(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / PARTIAL_NAME).write_text(json.dumps(params, indent=2, sort_keys=True))

    layout = world_layout()
    # every rendered file set and where it goes: Unseen reuses Seen renders (same bytes, a subset of folders)
    jobs: list[tuple[str, str, str, int, int, int]] = []
    for aff, obj in layout.seen_pairs:
        jobs += [("exo", aff, obj, i, seed, image_size) for i in range(exo_per_folder)]
        jobs += [("ego", aff, obj, i, seed, image_size) for i in range(ego_per_folder)]
        jobs += [("test", aff, obj, i, seed, image_size) for i in range(test_per_folder)]
    unseen_train = set(layout.unseen_train_pairs)
    unseen_test = set(layout.unseen_test_pairs)

    def destinations(kind: str, aff: str, obj: str, index: int) -> list[tuple[str, Path]]:
        ext = ".jpg"
        splits = ["Seen"]
        if kind in ("exo", "ego") and (aff, obj) in unseen_train:
            splits.append("Unseen")
        if kind == "test" and (aff, obj) in unseen_test:
            splits.append("Unseen")
        name = _file_name(obj, kind, index, ext)
        stem = Path(name).stem
        res = []
        for split in splits:
            if kind == "exo":
                res.append(("image", root / split / "trainset" / "exocentric" / aff / obj / name))
            elif kind == "ego":
                res.append(("image", root / split / "trainset" / "egocentric" / aff / obj / name))
                res.append(("part", root / split / "masks" / "train_part" / aff / obj / f"{stem}.png"))
            else:
                res.append(("image", root / split / "testset" / "egocentric" / aff / obj / name))
                res.append(("gt", root / split / "testset" / "GT" / aff / obj / f"{stem}.png"))
                res.append(("object", root / split / "masks" / "object" / aff / obj / f"{stem}.png"))
                res.append(("part", root / split / "masks" / "part" / aff / obj / f"{stem}.png"))
        return res

    bar = tqdm(total=len(jobs), desc="synthetic world", unit="img", disable=not progress, leave=False)
    executor = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        results = executor.map(_render_job, jobs, chunksize=16) if executor else map(_render_job, jobs)
        for job, files in zip(jobs, results):
            kind, aff, obj, index = job[:4]
            for key, path in destinations(kind, aff, obj, index):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(files[key])
            bar.update(1)
    finally:
        bar.close()
        if executor:
            executor.shutdown()

    classes = {"Seen": layout.seen_affordances, "Unseen": layout.unseen_affordances, "objects": layout.objects}
    (root / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
    (root / "README.txt").write_text(_readme(params, layout))
    _write_contact_sheet(root, layout)
    (root / MARKER_NAME).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    (root / PARTIAL_NAME).unlink(missing_ok=True)
    logger.info("Synthetic world written to %s (%d rendered file sets)", root, len(jobs))
    return root


def _clear_previous_world(root: Path) -> None:
    """Remove what a previous run of this generator wrote; refuse to touch a dataset it did not write."""
    ours = (root / MARKER_NAME).exists() or (root / PARTIAL_NAME).exists()
    split_dirs = [root / s for s in ("Seen", "Unseen") if (root / s).exists()]
    if split_dirs and not ours:
        raise FileExistsError(
            f"'{root}' already holds {', '.join(p.name for p in split_dirs)} but no synthetic-world marker "
            f"({MARKER_NAME}); it may be a real dataset, so it is not overwritten. Choose an empty folder."
        )
    for p in split_dirs:
        shutil.rmtree(p)
    for name in ("classes.json", "README.txt", "contact_sheet.png", MARKER_NAME):
        (root / name).unlink(missing_ok=True)


def ensure_world(
    out: str | os.PathLike,
    seed: int = 0,
    image_size: int = 128,
    exo_per_folder: int = 24,
    ego_per_folder: int = 8,
    test_per_folder: int = 6,
    workers: int = 0,
    progress: bool = True,
) -> Path:
    """Return ``out`` holding a complete world with these parameters, generating it only if needed.

    The marker file is written last by ``generate_world``, so an interrupted generation (no marker) or a world
    made with other parameters (different marker) is generated again. ``workers`` and ``progress`` do not change
    the files and are not part of the parameters.
    """
    root = Path(out)
    params = _params(seed, image_size, exo_per_folder, ego_per_folder, test_per_folder)
    marker = root / MARKER_NAME
    if marker.is_file() and not (root / PARTIAL_NAME).exists():
        try:
            if json.loads(marker.read_text()) == params:
                logger.info("Synthetic world already present at %s", root)
                return root
        except json.JSONDecodeError:
            pass
    return generate_world(root, seed, image_size, exo_per_folder, ego_per_folder, test_per_folder, workers, progress)


def _readme(params: dict, layout: WorldLayout) -> str:
    lines = [
        "Synthetic affordance world (generated by datasets/synthetic.py; not real data)",
        "",
        f"Parameters: {json.dumps(params, sort_keys=True)}",
        f"Regenerate: python -m datasets.synthetic --out <dir> --seed {params['seed']} "
        f"--image-size {params['image_size']} --exo {params['exo_per_folder']} --ego {params['ego_per_folder']} "
        f"--test {params['test_per_folder']}",
        "The same parameters give byte-identical files.",
        "",
        "Layout: exactly AGD20K's <Split>/{trainset/{exocentric,egocentric},testset/{egocentric,GT}}/<aff>/<obj>/,",
        "plus object and part masks of every test image in <Split>/masks/{object,part}/<aff>/<obj>/<stem>.png,",
        "and the affordance-part mask of every egocentric training image in <Split>/masks/train_part/ (for the",
        "oracle-prototype diagnostic only: the method never reads a mask).",
        "",
        "How it is made: objects are built from parts (rectangles, ellipses, polygons drawn with OpenCV). A part's",
        "colour and texture depend only on its part type, shared across objects (a handle looks the same on a",
        "knife and a cup). Each affordance happens on one part type:",
        *[
            f"  {a:<11s} -> {p}"
            + (f"   (tool use: hand on the grip, {TOOL_TARGETS[a]} on the {p})" if a in TOOL_TARGETS else "")
            for a, p in sorted(AFFORDANCE_PART.items())
        ],
        "Egocentric images: the object alone (random rotation, scale, position, small colour jitter) on a textured",
        "background. Exocentric images: a new pose of the object, a skin-coloured arm from the border with a hand",
        "on the part it holds, a target touching the functional part for tool use, clutter and distractors.",
        "GT: points sampled inside the affordance part, Gaussian-blurred, peak 255 (uint8 PNG, like AGD20K).",
        "",
        f"Seen affordances ({len(layout.seen_affordances)}): {', '.join(layout.seen_affordances)}",
        f"Unseen affordances ({len(layout.unseen_affordances)}): {', '.join(layout.unseen_affordances)}",
        f"Objects ({len(layout.objects)}): {', '.join(layout.objects)}",
        f"Held out (Unseen test only): {', '.join(HELD_OUT_OBJECTS)}",
        "Unseen/trainset and Unseen/testset reuse the Seen renders of their folders (same files).",
        "",
        "Object parts (drawing order) and affordances:",
        *[
            f"  {o:<14s} parts: {', '.join(s.part_types):<28s} affordances: {', '.join(s.affordances)}"
            for o, s in sorted(OBJECT_SPECS.items())
        ],
        "",
    ]
    return "\n".join(lines)


def _write_contact_sheet(root: Path, layout: WorldLayout, per_row: int = 3) -> None:
    """One row per affordance: (exo, ego, GT overlay) triples of different objects, labelled."""
    tile = 128
    label_w, head_h = 96, 14
    rows = []
    for aff in layout.seen_affordances:
        objs = [o for a, o in layout.seen_pairs if a == aff][:per_row]
        row = np.full((tile + head_h, label_w + per_row * 3 * tile, 3), 255, np.uint8)
        cv2.putText(row, aff, (4, head_h + tile // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for k, obj in enumerate(objs):
            base = root / "Seen"
            exo = _read_rgb(base / "trainset" / "exocentric" / aff / obj / _file_name(obj, "exo", 0, ".jpg"))
            ego = _read_rgb(base / "testset" / "egocentric" / aff / obj / _file_name(obj, "test", 0, ".jpg"))
            gt = cv2.imread(str(base / "testset" / "GT" / aff / obj / _file_name(obj, "test", 0, ".png")), 0)
            heat = cv2.cvtColor(cv2.applyColorMap(gt, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
            over = (0.5 * ego + 0.5 * heat).astype(np.uint8)
            x0 = label_w + k * 3 * tile
            for j, im in enumerate((exo, ego, over)):
                im = cv2.resize(im, (tile, tile), interpolation=cv2.INTER_NEAREST)
                row[head_h:, x0 + j * tile : x0 + (j + 1) * tile] = im
            cv2.putText(row, obj, (x0 + 2, head_h - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
            row[:, x0 : x0 + 1] = 0
        rows.append(row)
    sheet = np.concatenate(rows, axis=0)
    cv2.imwrite(str(root / "contact_sheet.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), _PNG_PARAMS)


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m datasets.synthetic --out DIR --seed N``: write a synthetic AGD20K-like world."""
    parser = argparse.ArgumentParser(
        prog="python -m datasets.synthetic", description="Write a synthetic affordance world in the AGD20K layout."
    )
    parser.add_argument("--out", required=True, help="world root to write (e.g. data/synthetic)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    parser.add_argument("--image-size", type=int, default=128, help="image side in pixels (usual: 128)")
    parser.add_argument("--exo", type=int, default=24, help="exocentric train images per <aff>/<obj> folder")
    parser.add_argument("--ego", type=int, default=8, help="egocentric train images per folder")
    parser.add_argument("--test", type=int, default=6, help="egocentric test images (with GT) per folder")
    parser.add_argument("--workers", type=int, default=0, help="render processes (0: in this process)")
    parser.add_argument("--force", action="store_true", help="regenerate even if a matching world exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kwargs = dict(
        seed=args.seed,
        image_size=args.image_size,
        exo_per_folder=args.exo,
        ego_per_folder=args.ego,
        test_per_folder=args.test,
        workers=args.workers,
    )
    try:
        root = generate_world(args.out, **kwargs) if args.force else ensure_world(args.out, **kwargs)
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"synthetic world ready at {root} (contact sheet: {root / 'contact_sheet.png'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
