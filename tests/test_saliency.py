"""Tests of models/saliency.py: binarisation at the mean, LOCATE's fixed heads, BiT-Align's text-selected head."""

from __future__ import annotations

import math

import pytest
import torch

from models.heads import AttentionPoolOutput
from models.saliency import LocateSaliency, Saliency, TextGuidedSaliency, binarize_at_mean


def _pool(attn: list[float]) -> AttentionPoolOutput:
    """An AttentionPool2d output on a 1x3 grid whose mean-token attention is ``attn``."""
    a = torch.tensor(attn).view(1, 1, 3)
    return AttentionPoolOutput(pooled=torch.zeros(1, 2), tokens=torch.zeros(1, 2, 1, 3), attn=a)


def test_binarize_at_mean_keeps_only_what_is_strictly_above():
    maps = torch.tensor([[[1.0, 2.0], [3.0, 6.0]], [[1.0, 1.0], [1.0, 1.0]]])  # means 3 and 1
    torch.testing.assert_close(binarize_at_mean(maps), torch.tensor([[[0.0, 0.0], [0.0, 1.0]], [[0.0] * 2] * 2]))
    assert binarize_at_mean(maps.double()).dtype == torch.float64


def test_locate_saliency_averages_the_chosen_heads_masks():
    cls_attn = torch.zeros(1, 3, 2, 2)
    cls_attn[0, 0, 0, 0] = 1.0  # head 0: top-left only
    cls_attn[0, 1] = torch.tensor([[0.0, 0.0], [1.0, 1.0]])  # head 1 (not chosen): bottom row
    cls_attn[0, 2, 0] = 1.0  # head 2: top row
    out = LocateSaliency([0, 2], num_heads=3)(cls_attn, torch.zeros(1, 4, 2, 2), None, None)
    # masks: head 0 [[1, 0], [0, 0]], head 2 [[1, 1], [0, 0]] -> mean [[1, .5], [0, 0]], already in [0, 1]
    torch.testing.assert_close(out.saliency, torch.tensor([[[1.0, 0.5], [0.0, 0.0]]]))
    torch.testing.assert_close(out.head_masks, binarize_at_mean(cls_attn))
    assert out.selected_head.tolist() == [-1] and out.attnpool_mask is None
    # with an AttentionPool2d (a text encoder) its binarised mask is reported, the saliency does not use it
    pooled = LocateSaliency([0, 2])(torch.rand(1, 3, 1, 3), None, _pool([0.0, 1.0, 0.0]), None)
    torch.testing.assert_close(pooled.attnpool_mask, torch.tensor([[[0.0, 1.0, 0.0]]]))
    assert not LocateSaliency.needs_text and "heads=[0, 2]" in repr(LocateSaliency([0, 2]))


def test_locate_saliency_checks_the_heads():
    with pytest.raises(ValueError, match=r"cls_heads \[0, 1, 3\].*\[0, 2\).*model\.cls_heads"):
        LocateSaliency([0, 1, 3], num_heads=2)
    with pytest.raises(ValueError, match="non-empty"):
        LocateSaliency([])
    with pytest.raises(NotImplementedError):
        Saliency()(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), None, None)


@pytest.mark.parametrize(
    ("text", "head", "saliency"), [([0.0, 1.0], 1, [0.0, 1.0, 0.5]), ([1.0, 0.0], 0, [1.0, 1.0, 0.0])]
)
def test_text_guided_saliency_picks_the_head_that_agrees_with_the_text(text, head, saliency):
    # three positions on a 1x3 grid: features e0, e1, e1; head 0 looks at the first, head 1 at the other two
    adapter = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]).view(1, 2, 1, 3).requires_grad_(True)
    cls_attn = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]).view(1, 2, 1, 3)
    out = TextGuidedSaliency()(cls_attn, adapter, _pool([0.0, 1.0, 0.0]), torch.tensor([text]))
    assert out.selected_head.tolist() == [head]
    # min-max(0.5 * pool mask [0, 1, 0] + 0.5 * the chosen head's mask)
    torch.testing.assert_close(out.saliency, torch.tensor(saliency).view(1, 1, 3))
    torch.testing.assert_close(out.attnpool_mask, torch.tensor([[[0.0, 1.0, 0.0]]]))
    assert not out.saliency.requires_grad  # a target, not a path for gradients
    assert TextGuidedSaliency.needs_text


def test_text_guided_head_selection_is_per_sample_and_uses_the_cosine():
    # sample 0 agrees with head 1, sample 1 with head 0; magnitudes differ so that a dot product would pick wrongly
    adapter = torch.stack(
        [torch.tensor([[9.0, 0.0, 0.0], [0.0, 1.0, 1.0]]), torch.tensor([[1.0, 0.0, 0.0], [0.0, 9.0, 9.0]])]
    )
    masks = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]).expand(2, 2, 3).view(2, 2, 1, 3)
    text = torch.tensor([[math.sqrt(0.5), math.sqrt(0.5) + 0.1], [1.0, 0.1]])
    picked = TextGuidedSaliency.select_head(adapter.view(2, 2, 1, 3), masks, text)
    assert picked.tolist() == [1, 0]
    with pytest.raises(ValueError, match="AttentionPool2d output and a text feature"):
        TextGuidedSaliency()(masks, adapter.view(2, 2, 1, 3), None, text)
