"""One check of a state dict against a model's: what is missing, what is unexpected, what has another shape.

Every loader of weights (backbone files, LOCATE checkpoints, our checkpoints, CLIP text towers) compares with
:func:`compare_state_dicts` and words its error with :meth:`StateDictDiff.describe`, so the lists look the same
everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

__all__ = ["StateDictDiff", "compare_state_dicts"]


@dataclass(frozen=True)
class StateDictDiff:
    """The keys that keep a state dict from loading strictly (each sorted).

    Attributes:
        missing: keys the model has and the given state dict lacks.
        unexpected: keys the given state dict has and the model lacks.
        mismatched: "key: <source> shape vs model shape" for keys in both with different shapes.
    """

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        """``missing keys (n): ...; unexpected keys (n): ...; shape mismatches (n): ...``, each list cut at
        ``limit`` entries."""

        def show(items: list[str]) -> str:
            if not items:
                return "none"
            shown = ", ".join(items[:limit])
            return f"({len(items)}): {shown}" + (", ..." if len(items) > limit else "")

        return (
            f"missing keys {show(self.missing)}; unexpected keys {show(self.unexpected)}; "
            f"shape mismatches {show(self.mismatched)}"
        )


def compare_state_dicts(
    expected: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    source: str = "file",
    optional_prefixes: Iterable[str] = (),
) -> StateDictDiff:
    """Compare ``given`` (a file, a checkpoint) with ``expected`` (the model's own state dict).

    Args:
        expected: the model's state dict.
        given: the state dict to load.
        source: how the mismatch lines name ``given`` ("file", "checkpoint").
        optional_prefixes: keys of the model under these prefixes may be absent from ``given`` (frozen modules
            that a checkpoint names but does not store).
    """
    optional = tuple(optional_prefixes)
    return StateDictDiff(
        missing=sorted(k for k in expected if k not in given and not (optional and k.startswith(optional))),
        unexpected=sorted(k for k in given if k not in expected),
        mismatched=[
            f"{k}: {source} {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in sorted(set(given) & set(expected))
            if given[k].shape != expected[k].shape
        ],
    )
