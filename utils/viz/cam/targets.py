"""What to explain: an affordance class, and our grounder seen as an image classifier."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import nn

__all__ = [
    "AffordanceTarget",
    "GrounderForCAM",
    "logits_of",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------- targets
def logits_of(output: Any) -> torch.Tensor:
    """The class scores in a model output: a tensor, or a dict with ``logits`` / ``logits_ego``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        for key in ("logits", "logits_ego"):
            if key in output:
                return output[key]
        raise KeyError(f"the model output dict has no 'logits' or 'logits_ego' key (keys: {sorted(output)})")
    raise TypeError(f"expected the model to return logits (a tensor or a dict), got {type(output).__name__}")


class AffordanceTarget:
    """A ``pytorch_grad_cam`` target: the score of one class (pre-softmax logit).

    Called on one sample's model output: logits (C,), a batch (B, C), or a dict with ``logits`` /
    ``logits_ego``.

    Args:
        class_index: the affordance (class) index to explain.
    """

    def __init__(self, class_index: int) -> None:
        self.class_index = int(class_index)

    def __call__(self, output: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        logits = logits_of(output)
        if not 0 <= self.class_index < logits.shape[-1]:
            raise IndexError(f"AffordanceTarget: class {self.class_index} outside [0, {logits.shape[-1]})")
        return logits[..., self.class_index]

    def __repr__(self) -> str:
        return f"AffordanceTarget({self.class_index})"


class GrounderForCAM(nn.Module):
    """Our grounder as an image classifier ``images (b, 3, H, W) -> ego logits (b, C)`` for ``pytorch_grad_cam``.

    It calls ``Grounder.predict(images, labels)["logits"]`` with autograd on: a ``torch.no_grad`` decorator on
    ``predict`` is bypassed (``inspect.unwrap``), because gradient CAMs need gradients. Layers of a frozen
    backbone still get gradients since :func:`explain` makes the input require them.

    Args:
        grounder: a ``models.grounder.Grounder``.
        labels: passed to ``predict`` (text-gated models use the label's text feature); None for label-free.
    """

    def __init__(self, grounder: nn.Module, labels: torch.Tensor | list[str] | None = None) -> None:
        super().__init__()
        self.grounder = grounder
        self.labels = labels
        self.num_prefix_tokens = getattr(getattr(grounder, "backbone", grounder), "num_prefix_tokens", None)

    def _labels_for(self, batch: int) -> torch.Tensor | list | None:
        labels = self.labels
        if labels is None:
            return None
        items = labels.reshape(-1).tolist() if isinstance(labels, torch.Tensor) else list(labels)
        if len(items) == batch:
            return labels
        # Score-CAM feeds batches of masked copies of one image: one shared label can follow them.
        if len(set(items)) == 1:
            return labels.reshape(-1)[:1].expand(batch) if isinstance(labels, torch.Tensor) else items[:1] * batch
        raise ValueError(
            f"GrounderForCAM: {len(items)} labels for a batch of {batch}; give one label per image, or one label "
            f"shared by all (Score-CAM runs batches of masked copies of a single image)"
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        predict = inspect.unwrap(type(self.grounder).predict)
        labels = self._labels_for(images.shape[0])
        with torch.enable_grad():
            out = predict(self.grounder, images, labels) if labels is not None else predict(self.grounder, images)
        logits = out["logits"]
        if torch.is_grad_enabled() and not logits.requires_grad and images.requires_grad:
            raise RuntimeError(
                "GrounderForCAM: Grounder.predict returned logits without a gradient (it runs under no_grad or "
                "inference_mode inside); gradient CAMs need predict's body to keep autograd, use method 'cam' "
                "or 'eigencam' instead"
            )
        return logits  # (b, C)
