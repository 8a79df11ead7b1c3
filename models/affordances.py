"""Affordance names: the one rule that matches a name or phrase to a class, and the error for an unknown one.

A query matches a class when both read the same once case, underscores and repeated spaces are ignored ("Cut With",
"cut_with" and "cut  with" are the class ``cut_with``). Every entry point (the model's ``predict``, the text
encoders, the command-line tools, the pictures) resolves names through :func:`class_index`.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

__all__ = ["class_index", "phrase_key", "unknown_affordance_message"]


def phrase_key(phrase: str) -> str:
    """Canonical form of an affordance name or phrase: lower case, '_' as space, single spaces, stripped."""
    return " ".join(phrase.replace("_", " ").lower().split())


def class_index(name: str, class_names: Sequence[str]) -> int | None:
    """The index of the class ``name`` stands for, or None when it is no class name (it may still be a phrase)."""
    key = phrase_key(name)
    return next((i for i, c in enumerate(class_names) if phrase_key(c) == key), None)


def unknown_affordance_message(name: str, class_names: Sequence[str]) -> str:
    """What to say about a name that matches no class: the closest class name and every valid one."""
    keys = {phrase_key(c): c for c in class_names}
    close = difflib.get_close_matches(phrase_key(name), list(keys), n=1, cutoff=0.0)
    hint = f" Did you mean '{keys[close[0]]}'?" if close else ""
    return f"unknown affordance '{name}'.{hint} This model knows {len(class_names)}: {', '.join(class_names)}"
