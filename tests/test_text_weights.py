"""models/text_weights.py: the text tower's activation follows the weights' origin, and misfits fail with a message."""

from __future__ import annotations

import logging

import pytest
import torch
from open_clip.transformer import QuickGELU

from models.text import OpenClipTextEncoder
from models.text_weights import OPENAI_MARKERS, describe_text_tower, resolve_quick_gelu

CLASSES = ["hold", "cut_with"]
TINY = {"width": 32, "layers": 2, "heads": 2, "context_length": 16}


def _encoder(**kw) -> OpenClipTextEncoder:
    torch.manual_seed(0)
    return OpenClipTextEncoder(CLASSES, 8, text_cfg=TINY, **kw)


def _uses_quick_gelu(enc: OpenClipTextEncoder) -> bool:
    return all(isinstance(blk.mlp.gelu, QuickGELU) for blk in enc.tower.transformer.resblocks)


def _openai_state_dict() -> dict[str, torch.Tensor]:
    """A plain state dict as read out of OpenAI's TorchScript archive: the weights plus the archive's entries."""
    sd = _encoder(activation="quick_gelu").tower.state_dict()
    return {
        **sd,
        "input_resolution": torch.tensor(224),
        "context_length": torch.tensor(16),
        "vocab_size": torch.tensor(49408),
    }


def test_plain_openai_state_dict_gets_quick_gelu(tmp_path):
    torch.save(_openai_state_dict(), tmp_path / "ViT-B-16.pt")
    enc = _encoder(weights=str(tmp_path / "ViT-B-16.pt"))  # "ViT-B-16"'s own config says GELU
    assert enc.quick_gelu and _uses_quick_gelu(enc)
    # the features are those of a QuickGELU tower with these weights
    ref = _encoder(activation="quick_gelu")
    with torch.no_grad():
        assert torch.allclose(enc._encode_tower(["hold"]), ref._encode_tower(["hold"]), atol=1e-6)
    with pytest.raises(ValueError, match=r"contradicts the text tower: the weights .* were trained with QuickGELU"):
        _encoder(weights=str(tmp_path / "ViT-B-16.pt"), activation="gelu")


def test_unmarked_state_dict_follows_the_config_loudly_or_the_explicit_choice(tmp_path, caplog):
    sd = {k: v for k, v in _openai_state_dict().items() if k not in OPENAI_MARKERS}
    torch.save(sd, tmp_path / "plain.pt")
    with caplog.at_level(logging.WARNING, logger="models.text_weights"):
        enc = _encoder(weights=str(tmp_path / "plain.pt"))
    assert not enc.quick_gelu and "activation=quick_gelu" in caplog.text
    assert _uses_quick_gelu(_encoder(weights=str(tmp_path / "plain.pt"), activation="quick_gelu"))
    # a '-quickgelu' model name asks for QuickGELU: an explicit GELU contradicts it
    assert _encoder(model_name="ViT-B-32-quickgelu").quick_gelu
    with pytest.raises(ValueError, match="'ViT-B-32-quickgelu' uses QuickGELU"):
        _encoder(model_name="ViT-B-32-quickgelu", activation="gelu")


def test_resolution_rules():
    assert resolve_quick_gelu("auto", "m", False, True, "f") is True  # OpenAI's weights
    assert resolve_quick_gelu("auto", "m", False, False, "f") is False  # a GELU hub tag
    assert resolve_quick_gelu("auto", "m", True, None, None) is True  # random tower, quickgelu config
    assert resolve_quick_gelu("gelu", "m", False, None, "f") is False
    with pytest.raises(ValueError, match="trained with GELU"):
        resolve_quick_gelu("auto", "m-quickgelu", True, False, "f")
    with pytest.raises(ValueError, match="activation must be"):
        resolve_quick_gelu("relu", "m", False, None, None)


def test_a_file_of_another_architecture_fails_naming_both(tmp_path):
    torch.manual_seed(0)
    wide = OpenClipTextEncoder(CLASSES, 8, text_cfg={**TINY, "width": 64, "layers": 3}).tower.state_dict()
    torch.save(wide, tmp_path / "wide.pt")
    with pytest.raises(ValueError) as err:
        _encoder(weights=str(tmp_path / "wide.pt"), activation="gelu")
    msg = str(err.value)
    assert "the file holds (width 64, layers 3, vocab_size 49408, context_length 16" in msg
    assert "the model is (width 32, layers 2" in msg and "shape mismatches" in msg
    assert describe_text_tower(wide)["layers"] == 3
