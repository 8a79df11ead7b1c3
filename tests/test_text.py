"""Tests for models.text: a tiny random open_clip text tower, learnable prompts, caching, weight files, fallback."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

from models.text import (
    LearnedTextEncoder,
    OpenClipTextEncoder,
    TextEncoder,
    build_text_encoder,
    load_text_tower_state_dict,
)

CLASSES = ["hold", "cut_with", "ride", "sip"]
TINY = {"width": 32, "layers": 2, "heads": 2, "context_length": 16}


def tiny_clip(prompt_tokens: int = 0, **kw) -> OpenClipTextEncoder:
    torch.manual_seed(0)
    return OpenClipTextEncoder(CLASSES, out_dim=24, prompt_tokens=prompt_tokens, text_cfg=TINY, **kw)


def test_tokenizer_works_offline_and_phrases_are_templated():
    enc = tiny_clip(template="a photo of {}")
    tok = enc.tokenizer
    assert tok.vocab_size == 49408 and tok.sot_token_id == 49406 and tok.eot_token_id == 49407
    ids = enc.tokenize(["cut_with"])
    assert ids.shape == (1, 16)
    words = [t for t in ids[0].tolist() if t not in (0, tok.sot_token_id, tok.eot_token_id)]
    assert tok.decode(words).strip() == "a photo of cut with"


def test_clip_shapes_and_matches_open_clip_forward():
    enc = tiny_clip()
    assert isinstance(enc, TextEncoder) and enc.dim == 24 and enc.class_names == CLASSES
    out = enc(["hold", "pour into a cup", "x " * 40])  # the last one is truncated to the context
    assert out.shape == (3, 24) and torch.isfinite(out).all()
    assert enc.class_features().shape == (4, 24)
    # without prompts our embedding/pooling path is open_clip's own TextTransformer.forward
    phrases = ["hold", "cut with"]
    with torch.no_grad():
        torch.testing.assert_close(enc._encode_tower(phrases), enc.tower(enc.tokenize(phrases)))


def test_frozen_tower_gets_no_grad_and_projection_trains():
    enc = tiny_clip()
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {"proj.weight", "proj.bias"}
    enc(["hold", "ride"]).square().sum().backward()
    assert all(p.grad is None for p in enc.tower.parameters())
    assert enc.proj.weight.grad is not None and enc.proj.weight.grad.abs().sum() > 0
    assert enc.frozen_prefixes() == ("tower.",)


def test_prompt_tokens_receive_gradients():
    enc = tiny_clip(prompt_tokens=4)
    assert enc.prompt.shape == (4, 32) and enc.prompt.requires_grad
    enc.class_features().square().sum().backward()
    assert enc.prompt.grad is not None and torch.isfinite(enc.prompt.grad).all()
    assert enc.prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.tower.parameters())
    # the pooled token is the EOT after the words: a causal tower pooling a context position would give every
    # phrase the same feature
    with torch.no_grad():
        f = enc(["hold", "ride"])
    assert not torch.allclose(f[0], f[1])
    # and the prompt is used: changing it changes the features
    with torch.no_grad():
        enc.prompt.add_(1.0)
        assert not torch.allclose(enc(["hold"]), f[:1])


def test_tower_stays_in_eval_mode():
    enc = tiny_clip(prompt_tokens=2)
    enc.train()
    assert enc.training and not enc.tower.training
    assert all(not m.training for m in enc.tower.modules())


def test_class_features_cache_and_invalidation(monkeypatch):
    enc = tiny_clip()
    calls = []
    original = enc._encode_tower

    def counting(phrases):
        calls.append(len(phrases))
        return original(phrases)

    monkeypatch.setattr(enc, "_encode_tower", counting)
    f1 = enc.class_features()
    f2 = enc.class_features()
    assert len(calls) == 1 and torch.equal(f1, f2)
    assert f1.requires_grad  # the projection still gets its gradient from the cached tower features
    with torch.no_grad():
        enc.tower.ln_final.weight.mul_(2.0)  # a parameter changes in place
    f3 = enc.class_features()
    assert len(calls) == 2 and not torch.allclose(f1, f3)
    enc.eval()  # training mode changes
    enc.class_features()
    assert len(calls) == 3
    enc.tower.load_state_dict(tiny_clip().tower.state_dict())  # new weights loaded
    f4 = enc.class_features()
    assert len(calls) == 4
    torch.testing.assert_close(f4, f1)


def test_learnable_prompts_are_not_cached_when_training(monkeypatch):
    enc = tiny_clip(prompt_tokens=2)
    calls = []
    original = enc._encode_tower
    monkeypatch.setattr(enc, "_encode_tower", lambda ph: calls.append(1) or original(ph))
    enc.class_features()
    enc.class_features()
    assert len(calls) == 2  # autograd on: recomputed so the prompts get a gradient every step
    with torch.no_grad():
        a = enc.class_features()
        b = enc.class_features()
        assert len(calls) == 3 and torch.equal(a, b)  # cached under no_grad
        enc.prompt.mul_(3.0)  # an optimiser step
        c = enc.class_features()
    assert len(calls) == 4 and not torch.allclose(a, c)


def test_load_local_weights_roundtrip(tmp_path):
    src = tiny_clip()
    path = tmp_path / "text.pt"
    torch.save(src.tower.state_dict(), path)
    enc = OpenClipTextEncoder(CLASSES, 24, weights=str(path), text_cfg=TINY)
    for (n, p), (_, q) in zip(src.tower.state_dict().items(), enc.tower.state_dict().items()):
        assert torch.equal(p, q), n
    assert not any(p.requires_grad for p in enc.tower.parameters())


def test_load_full_clip_checkpoint_keeps_text_keys(tmp_path):
    src = tiny_clip()
    full = {f"module.{k}": v for k, v in src.tower.state_dict().items()}
    full["module.visual.conv1.weight"] = torch.randn(8, 3, 4, 4)
    full["module.logit_scale"] = torch.tensor(4.6)
    torch.save({"state_dict": full, "epoch": 3}, tmp_path / "full.pt")
    sd, is_jit = load_text_tower_state_dict(tmp_path / "full.pt")
    assert not is_jit and set(sd) == set(src.tower.state_dict())
    save_file({k: v.contiguous() for k, v in src.tower.state_dict().items()}, str(tmp_path / "text.safetensors"))
    enc = OpenClipTextEncoder(CLASSES, 24, weights=str(tmp_path / "text.safetensors"), text_cfg=TINY)
    torch.testing.assert_close(enc.tower.ln_final.weight, src.tower.ln_final.weight)


def test_wrong_weight_keys_and_shapes_are_listed(tmp_path):
    sd = tiny_clip().tower.state_dict()
    sd["transformer.resblocks.0.ln_1.gamma"] = sd.pop("transformer.resblocks.0.ln_1.weight")
    torch.save(sd, tmp_path / "renamed.pt")
    with pytest.raises(ValueError, match=r"missing keys \['transformer\.resblocks\.0\.ln_1\.weight'\]"):
        OpenClipTextEncoder(CLASSES, 24, weights=str(tmp_path / "renamed.pt"), text_cfg=TINY)
    torch.save(tiny_clip().tower.state_dict(), tmp_path / "ctx16.pt")
    with pytest.raises(ValueError, match=r"shape mismatches \['positional_embedding: file \(16, 32\) vs model"):
        OpenClipTextEncoder(CLASSES, 24, weights=str(tmp_path / "ctx16.pt"), text_cfg={**TINY, "context_length": 20})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OpenClipTextEncoder(CLASSES, 24, weights=str(tmp_path / "nope.pt"), text_cfg=TINY)
    torch.save({"epoch": 1}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        OpenClipTextEncoder(CLASSES, 24, weights=str(tmp_path / "empty.pt"), text_cfg=TINY)


def test_deepcopy_and_hub_tag_errors():
    enc = tiny_clip(prompt_tokens=2)
    clone = copy.deepcopy(enc)
    with torch.no_grad():
        torch.testing.assert_close(clone.class_features(), enc.class_features())
    # the tag is checked against open_clip's registry before any download is attempted
    with pytest.raises(ValueError, match=r"no pretrained tag 'nonexistent' for 'ViT-B-16'; valid tags: \[.*'openai'"):
        OpenClipTextEncoder(CLASSES, 24, weights="hub:nonexistent", text_cfg=TINY)


def test_clip_argument_errors():
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-B-17'"):
        OpenClipTextEncoder(CLASSES, 24, model_name="ViT-B-17")
    with pytest.raises(ValueError, match="at most 13"):
        tiny_clip(prompt_tokens=14)
    with pytest.raises(ValueError, match="vocab_size"):
        OpenClipTextEncoder(CLASSES, 24, text_cfg={**TINY, "vocab_size": 1000})
    with pytest.raises(TypeError, match="list of phrases"):
        tiny_clip()("hold")


def test_learned_encoder_matching_and_errors():
    enc = LearnedTextEncoder(CLASSES, 8)
    assert enc.dim == 8 and enc.class_features().shape == (4, 8)
    f = enc(["Cut With", "cut_with", " cut   with ", "hold"])
    assert f.shape == (4, 8)
    assert torch.equal(f[0], f[1]) and torch.equal(f[0], f[2]) and torch.equal(f[3], enc.class_features()[0])
    with pytest.raises(ValueError, match=r"unknown phrase 'cut wth'.*Closest class name: 'cut_with'"):
        enc(["cut wth"])
    with pytest.raises(ValueError, match=r"class names \['hold', 'cut_with', 'ride', 'sip'\]"):
        enc(["pour"])
    with pytest.raises(ValueError, match="are the same"):
        LearnedTextEncoder(["cut_with", "Cut With"], 8)
    enc.class_features().sum().backward()
    assert enc.embedding.weight.grad is not None


def test_build_text_encoder():
    assert build_text_encoder("none", CLASSES, 8, model_name="ViT-B-16") is None
    assert isinstance(build_text_encoder("learned", CLASSES, 8, prompt_tokens=4), LearnedTextEncoder)
    enc = build_text_encoder("CLIP", CLASSES, 8, text_cfg=TINY, prompt_tokens=2)
    assert isinstance(enc, OpenClipTextEncoder) and enc.class_features().shape == (4, 8)
    with pytest.raises(ValueError, match=r"unknown kind 'bert'; valid kinds: \['none', 'clip', 'learned'\]"):
        build_text_encoder("bert", CLASSES, 8)
    with pytest.raises(TypeError, match=r"unknown options \['prompt_len'\]"):
        build_text_encoder("clip", CLASSES, 8, prompt_len=4)
