"""The synthetic world's definition: part types, object categories, affordances and the split structure.

Everything here is data plus the checks that keep it consistent; drawing lives in ``draw`` and ``render``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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
