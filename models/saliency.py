"""Egocentric object saliency: where the object is, which the part prototypes are scored against.

- :class:`LocateSaliency` (LOCATE, CVPR 2023): fixed CLS-attention heads of the last ViT block ([0, 1, 3] for DINO
  ViT-S/16), each binarised at its mean, averaged, min-max normalised.
- :class:`TextGuidedSaliency` (BiT-Align, IROS 2025): the AttentionPool2d mask fused with the CLS head whose masked
  egocentric features agree best with the label's text feature: 0.5 · pool mask + 0.5 · chosen head, min-max.
- :class:`BatchHeadSaliency` (BiT-Align's published code): the same, but each sample's head mask is the mean of its
  own masks of the heads chosen by *every* sample of the batch (``ego_cls_attn[:, head_idxs].mean(1)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.heads import AttentionPoolOutput
from models.losses import weighted_pool
from models.outputs import SaliencyOutput
from utils.maps import normalize_minmax

__all__ = ["BatchHeadSaliency", "LocateSaliency", "Saliency", "TextGuidedSaliency", "binarize_at_mean"]


def binarize_at_mean(maps: torch.Tensor) -> torch.Tensor:
    """{0, 1} float masks of the positions strictly above each map's spatial mean; maps (..., h, w)."""
    return (maps > maps.mean(dim=(-2, -1), keepdim=True)).to(maps.dtype)


class Saliency(nn.Module):
    """Maps the egocentric CLS attention (and, for text-guided variants, features and text) to a saliency."""

    needs_text: bool = False

    def forward(
        self,
        cls_attn: torch.Tensor,
        adapter: torch.Tensor,
        pool: AttentionPoolOutput | None,
        cond: torch.Tensor | None,
    ) -> SaliencyOutput:
        """Compute the saliency.

        Args:
            cls_attn: (b, heads, h, w) CLS attention of the last ViT block.
            adapter: (b, D, h, w) the adapted egocentric features (``aff_proj``).
            pool: AttentionPool2d's output on ``adapter`` (with a text encoder), else None.
            cond: (b, D) the text feature each sample is conditioned on, or None.
        """
        raise NotImplementedError

    @staticmethod
    def _masks(cls_attn: torch.Tensor, pool: AttentionPoolOutput | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        head_masks = binarize_at_mean(cls_attn.float())  # (b, heads, h, w)
        pool_mask = binarize_at_mean(pool.attn.detach().float()) if pool is not None else None  # (b, h, w)
        return head_masks, pool_mask


class LocateSaliency(Saliency):
    """LOCATE's saliency: the mean of fixed CLS-attention heads, each binarised at its mean, min-max normalised.

    Args:
        heads: the head indices (LOCATE: 0, 1, 3).
        num_heads: the backbone's head count, to check the indices.
    """

    def __init__(self, heads: list[int] | tuple[int, ...] = (0, 1, 3), num_heads: int | None = None) -> None:
        super().__init__()
        heads = [int(h) for h in heads]
        if not heads or (num_heads is not None and not all(0 <= h < num_heads for h in heads)):
            raise ValueError(
                f"LocateSaliency: cls_heads {heads} must be a non-empty list of head indices in [0, {num_heads}) for "
                f"this backbone ({num_heads} heads); set model.cls_heads accordingly"
            )
        self.heads = heads

    def forward(
        self,
        cls_attn: torch.Tensor,
        adapter: torch.Tensor,
        pool: AttentionPoolOutput | None,
        cond: torch.Tensor | None,
    ) -> SaliencyOutput:
        head_masks, pool_mask = self._masks(cls_attn, pool)
        b = cls_attn.shape[0]
        return SaliencyOutput(
            saliency=normalize_minmax(head_masks[:, self.heads].mean(dim=1)),  # (b, h, w)
            head_masks=head_masks,
            selected_head=torch.full((b,), -1, dtype=torch.long, device=cls_attn.device),
            attnpool_mask=pool_mask,
        )

    def extra_repr(self) -> str:
        return f"heads={self.heads}"


class TextGuidedSaliency(Saliency):
    """BiT-Align's saliency: the AttentionPool2d mask fused with the text-selected CLS head.

    For every head, the adapted egocentric features are averaged inside the head's binarised map; the head whose
    average has the highest cosine with the sample's text feature is chosen, per sample. The saliency is
    min-max(0.5 · pool mask + 0.5 · chosen head mask).
    """

    needs_text = True

    def forward(
        self,
        cls_attn: torch.Tensor,
        adapter: torch.Tensor,
        pool: AttentionPoolOutput | None,
        cond: torch.Tensor | None,
    ) -> SaliencyOutput:
        if pool is None or cond is None:
            raise ValueError("TextGuidedSaliency needs the AttentionPool2d output and a text feature per sample")
        head_masks, pool_mask = self._masks(cls_attn, pool)
        selected = self.select_head(adapter.detach(), head_masks, cond)  # (b,)
        chosen = self.chosen_mask(head_masks, selected)  # (b, h, w)
        return SaliencyOutput(
            saliency=normalize_minmax(0.5 * pool_mask + 0.5 * chosen),
            head_masks=head_masks,
            selected_head=selected,
            attnpool_mask=pool_mask,
        )

    @staticmethod
    def chosen_mask(head_masks: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """(b, h, w) each sample's mask of its own selected head; head_masks (b, heads, h, w), selected (b,)."""
        return head_masks[torch.arange(head_masks.shape[0], device=head_masks.device), selected]

    @staticmethod
    @torch.no_grad()
    def select_head(adapter: torch.Tensor, head_masks: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(b,) index of the head whose masked mean feature has the highest cosine with the text feature."""
        with torch.autocast(device_type=adapter.device.type, enabled=False):
            pooled = weighted_pool(adapter.float(), head_masks.float())  # (b, heads, D)
            sim = F.cosine_similarity(pooled, cond.float().unsqueeze(1), dim=-1)  # (b, heads)
        return sim.argmax(dim=1)


class BatchHeadSaliency(TextGuidedSaliency):
    """BiT-Align's published head choice: every sample averages its own masks of the heads the whole batch chose.

    With chosen heads k_1 … k_b, sample j's head mask is (1/b) Σ_i M_j[k_i], multiplicity included (heads [1, 1, 4, 1]
    give every sample 0.75 · M_j[1] + 0.25 · M_j[4]). A sample's saliency thus depends on the rest of its batch.
    """

    @staticmethod
    def chosen_mask(head_masks: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        return head_masks[:, selected].mean(dim=1)  # (b, b, h, w) -> (b, h, w)
