"""What a prediction is asked for: class indices, class names (any case, spaces or underscores) or free phrases.

A class name or index selects its channel of the class activation maps. With a text encoder any other phrase is
encoded, conditions the text-guided parts like a class's text feature would, and its map is the mixture of the
class maps weighted by softmax(logit scale · cos(phrase, class text)); a class name is then a one-hot mixture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from models.affordances import phrase_key
from models.text import TextEncoder

__all__ = ["Labels", "resolve_queries"]

Labels = torch.Tensor | Sequence[str] | Sequence[int]


def resolve_queries(
    labels: Labels,
    b: int,
    device: torch.device,
    class_names: Sequence[str],
    class_index: Mapping[str, int],
    text: TextEncoder | None,
    scale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Map a query of b images to (class index (b,), mixture weights (b, C) or None, condition text (b, D) or None).

    Args:
    labels: a LongTensor or list of class indices, or a list of class names / phrases, one per image.
    b: the number of images.
    device: where the returned tensors go.
    class_names: the model's classes.
    class_index: ``phrase_key(name) -> index`` of the classes.
    text: the model's text encoder, or None (then only class names and indices work).
    scale: the exponentiated image-text logit scale (with a text encoder).

    Phrases get index -1 and a soft mixture row; names and indices a one-hot row (only when some phrase is present).
    """
    if isinstance(labels, str):
        raise TypeError("Grounder.predict: labels must be a list of names (one per image), not a single string")
    if isinstance(labels, torch.Tensor) or (
        isinstance(labels, list | tuple) and labels and all(isinstance(x, int) for x in labels)
    ):
        idx = torch.as_tensor(labels, device=device).long().view(-1)
        phrases: list[str] | None = None
    else:
        labels = list(labels)
        if not all(isinstance(x, str) for x in labels):
            raise TypeError("Grounder.predict: labels must be a LongTensor, a list of ints or a list of strings")
        known = [class_index.get(phrase_key(x)) for x in labels]
        unknown = [x for x, k in zip(labels, known) if k is None]
        if unknown and text is None:
            raise ValueError(
                f"Grounder.predict: unknown affordance(s) {unknown}; without a text encoder only the class names "
                f"work: {class_names}"
            )
        idx = torch.tensor([k if k is not None else -1 for k in known], device=device, dtype=torch.long)
        phrases = labels if unknown else None
    if idx.shape[0] != b:
        raise ValueError(f"Grounder.predict: expected {b} labels (one per image), got {idx.shape[0]}")
    if phrases is None and bool(((idx < 0) | (idx >= len(class_names))).any()):
        raise ValueError(f"Grounder.predict: label indices must be in [0, {len(class_names)}), got {idx.tolist()}")

    if text is None:
        return idx, None, None
    class_text = text.class_features()  # (C, D)
    cond = class_text[idx.clamp_min(0)]  # (b, D)
    weights = None
    if phrases is not None:
        is_phrase = idx < 0
        rows = torch.nonzero(is_phrase).flatten()
        phrase_text = text([phrases[i] for i in rows.tolist()]).to(cond.dtype)  # (p, D)
        cond = cond.index_copy(0, rows, phrase_text)
        sim = F.normalize(cond.float(), dim=-1) @ F.normalize(class_text.float(), dim=-1).t()  # (b, C)
        soft = (scale * sim).softmax(dim=-1)
        hard = F.one_hot(idx.clamp_min(0), len(class_names)).float()
        weights = torch.where(is_phrase.unsqueeze(1), soft, hard)
    return idx, weights, cond
