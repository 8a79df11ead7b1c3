"""Tests of models/extensions/appearance.py: per-patch colour and texture statistics appended to the descriptors."""

from __future__ import annotations

import pytest
import torch
from conftest import CLASS_NAMES, tiny_config

from models.build import build_model
from models.extensions.appearance import (
    _APPEARANCE_MEAN,
    _APPEARANCE_STD,
    APPEARANCE_CHANNELS,
    AppearanceStats,
    patch_appearance,
)
from models.outputs import Features
from utils.config import ConfigError


def _raw(stats: torch.Tensor) -> torch.Tensor:
    """Undo patch_appearance's standardisation: (B, 7, h, w) -> the plain statistics."""
    mean = torch.tensor(_APPEARANCE_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(_APPEARANCE_STD).view(1, -1, 1, 1)
    return stats * std + mean


def test_patch_appearance_hand_values_and_independence_of_where_the_pattern_falls():
    x = torch.zeros(1, 3, 8, 16)
    x[0, 0, :, :8] = 0.5  # left patch: flat colour (0.5, 0, 0)
    stripes = (torch.arange(8) % 2).float()  # right patch: vertical stripes 0/1 in every channel
    x[0, :, :, 8:] = stripes.view(1, 1, 8)
    raw = _raw(patch_appearance(x, 8))[0]  # (7, 1, 2)
    torch.testing.assert_close(raw[:3, 0, 0], torch.tensor([0.5, 0.0, 0.0]))
    torch.testing.assert_close(raw[3:6, 0, 0], torch.zeros(3), atol=1e-6, rtol=0)  # no spread
    # No texture inside; only its last column's difference looks across the border (0.5 in one channel of three).
    torch.testing.assert_close(raw[6, 0, 0], torch.tensor(8 * (0.5 / 3) / 64))
    torch.testing.assert_close(raw[:6, 0, 1], torch.full((6,), 0.5))  # mean 0.5, std 0.5 per channel
    # Texture: 7 of the 8 horizontal neighbour pairs differ by 1 (the 8th is padding), vertical ones never.
    torch.testing.assert_close(raw[6, 0, 1], torch.tensor(7 / 8))
    # The same stripes shifted by one pixel: a linear patch embedding changes, these statistics do not.
    shifted = x.clone()
    shifted[0, :, :, 8:] = 1 - stripes.view(1, 1, 8)
    torch.testing.assert_close(_raw(patch_appearance(shifted, 8))[0, :6, 0, 1], raw[:6, 0, 1])


def test_appearance_channels_follow_the_descriptors_times_their_weight(make_backbone):
    plain = make_backbone("token")
    extra = AppearanceStats(3.0, patch_size=8)
    assert extra.channels == len(APPEARANCE_CHANNELS) == 7 and "weight=3.0" in repr(extra)
    x = torch.randn(2, 3, 32, 32)
    feats = plain(x)
    mixed = extra(x, feats)
    assert isinstance(mixed, Features) and mixed.descriptors.shape == (2, 39, 4, 4)
    torch.testing.assert_close(mixed.descriptors[:, :32], feats.descriptors)
    torch.testing.assert_close(mixed.descriptors[:, 32:], 3.0 * patch_appearance(x, 8))
    assert mixed.cls_attn is feats.cls_attn  # the ViT's own attention is untouched
    with pytest.raises(ValueError, match="expected a weight > 0"):
        AppearanceStats(-1.0, 8)


def test_the_grounder_appends_them_to_both_views_and_sizes_its_heads_for_them():
    torch.manual_seed(0)
    model = build_model(tiny_config({"model": {"extensions": {"appearance": 2.0}}}), CLASS_NAMES)
    assert isinstance(model.descriptor_extra, AppearanceStats) and model.descriptor_extra.weight == 2.0
    assert model.backbone.out_dim == 32 and model.aff_fc.in_channels == 39 and model.aff_proj.fc1.in_features == 39
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.encode(x).descriptors[:, 32:], 2.0 * patch_appearance(x, 8))
    torch.testing.assert_close(model.encode(x).descriptors[:, :32], model.backbone(x).descriptors)
    pred = model.predict(x, [0, 1], return_features=True)
    assert pred.features["descriptors"].shape == (2, 39, 4, 4)
    with pytest.raises(ConfigError, match=r"model\.extensions\.appearance=-1\.0 is invalid"):
        tiny_config({"model": {"extensions": {"appearance": -1.0}}})
