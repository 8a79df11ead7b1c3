"""BiT-Align's published behaviours (configs/reference/bitalign_*.yaml) against formulas re-typed from its code.

Each test feeds a small hand-made input to one of our parts and to the published formula, typed here from reading
DAWDSE/BiT-Align's models/locate.py (the line it follows is named in each reference), and compares.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.bitalign_compat import convert_bitalign_state_dict
from models.gating import PooledTokenGate, TextGate
from models.heads import AttentionPool2d, AttentionPoolOutput
from models.pos_embed import resize_pos_embed_dinov2
from models.saliency import BatchHeadSaliency, TextGuidedSaliency
from models.text import OpenClipTextEncoder
from utils.config import load_config
from utils.engine.optim import param_groups

REPO = Path(__file__).resolve().parents[1]
TINY_TEXT = {"width": 32, "layers": 2, "heads": 2, "context_length": 16}


# ------------------------------------------------------------------------------------------------------ gate


def published_gate(pool_tokens: torch.Tensor, pre_ego: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """locate.py:194-197, with x[1:] of AttentionPool2d (HW, b, C), pre_ego (b, C, h, w), text (b, C)."""
    b, c, h, w = pre_ego.shape
    text_f = F.normalize(text, dim=1)  # text features are normalised per class before text_f is gathered
    att = F.normalize(pool_tokens, dim=1)  # over the batch axis
    s = scale * att.permute(1, 0, 2) @ text_f.unsqueeze(2)  # (b, HW, 1)
    s = torch.sigmoid(F.normalize(s, dim=1)).permute(1, 0, 2).repeat(1, 1, c)  # (HW, b, C)
    return s.permute(1, 2, 0).reshape(b, c, h, w) * pre_ego + pre_ego


def _pool_output(tokens_grid: torch.Tensor) -> AttentionPoolOutput:
    b, _, h, w = tokens_grid.shape
    return AttentionPoolOutput(pooled=tokens_grid.mean((-2, -1)), tokens=tokens_grid, attn=torch.zeros(b, h, w))


def test_published_gate_matches_the_published_formula():
    torch.manual_seed(0)
    b, c, h, w = 3, 5, 2, 3
    tokens, pre, text = torch.randn(b, c, h, w), torch.randn(b, c, h, w), torch.randn(b, c)
    scale = torch.tensor(1 / 0.07)
    ours = PooledTokenGate()(pre, text, scale, _pool_output(tokens))
    pool_tokens = tokens.flatten(2).permute(2, 0, 1)  # (HW, b, C), the published layout
    assert torch.allclose(ours, published_gate(pool_tokens, pre, text, float(scale)), atol=1e-6)


def test_published_gate_is_a_sign_at_batch_one_and_nearly_flat():
    # One image: the batch normalisation leaves sign(T); by hand, with T = [[1, -2], [3, 4]] on a 1 x 2 grid
    # (channels x positions) and t = (1, 0): scores (1, -1)/sqrt(2) after the spatial normalisation.
    tokens = torch.tensor([[[[1.0, -2.0]], [[3.0, 4.0]]]])  # (1, 2, 1, 2)
    x = torch.ones(1, 2, 1, 2)
    out = PooledTokenGate()(x, torch.tensor([[1.0, 0.0]]), torch.tensor(7.0), _pool_output(tokens))
    g = torch.sigmoid(torch.tensor([1.0, -1.0]) / math.sqrt(2))
    assert torch.allclose(out[0, :, 0], (1 + g).expand(2, 2), atol=1e-6)
    # On a 16 x 16 grid the gate stays within sigmoid(+-1) and, for random tokens, close to 0.5: nearly x1.5.
    torch.manual_seed(1)
    tokens, text = torch.randn(2, 8, 16, 16), torch.randn(2, 8)
    gated = PooledTokenGate()(torch.ones(2, 8, 16, 16), text, torch.tensor(14.3), _pool_output(tokens))
    assert (gated - 1.5).abs().max() < 0.25
    # The logit scale cancels in the spatial normalisation.
    again = PooledTokenGate()(torch.ones(2, 8, 16, 16), text, torch.tensor(1.0), _pool_output(tokens))
    assert torch.allclose(gated, again, atol=1e-6)


def test_cosine_gate_is_class_specific():
    x = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2): position 0 along e0, position 1 along e1
    out = TextGate()(x, torch.tensor([[1.0, 0.0]]), torch.tensor(10.0))
    assert torch.allclose(out[0, 0, 0, 0], torch.tensor(1.0 + torch.sigmoid(torch.tensor(10.0)).item()))
    assert torch.allclose(out[0, 1, 0, 1], torch.tensor(1.5))  # cos 0


# ----------------------------------------------------------------------------------------------- head choice


def test_batch_head_choice_averages_the_heads_chosen_by_the_batch():
    # locate.py:227, ego_cls_attn[:, head_idxs].mean(1): sample j gets (1/b) sum_i M_j[k_i].
    masks = torch.zeros(3, 4, 1, 2)
    for j in range(3):
        for k in range(4):
            masks[j, k, 0, 0] = 10 * j + k  # hand values: sample j, head k
    chosen = BatchHeadSaliency.chosen_mask(masks, torch.tensor([1, 1, 3]))
    expected = torch.tensor([(2 * (10 * j + 1) + (10 * j + 3)) / 3 for j in range(3)])
    assert torch.allclose(chosen[:, 0, 0], expected)
    per_sample = TextGuidedSaliency.chosen_mask(masks, torch.tensor([1, 1, 3]))
    assert per_sample[:, 0, 0].tolist() == [1.0, 11.0, 23.0]


def test_batch_head_saliency_end_to_end_against_the_published_lines():
    torch.manual_seed(0)
    b, heads, d, h, w = 3, 4, 6, 4, 4
    cls_attn, adapter, text = torch.rand(b, heads, h, w), torch.randn(b, d, h, w), torch.randn(b, d)
    pool = AttentionPoolOutput(pooled=torch.zeros(b, d), tokens=torch.zeros(b, d, h, w), attn=torch.rand(b, h, w))
    out = BatchHeadSaliency()(cls_attn, adapter, pool, text)
    # locate.py:202-228
    pool_mask = (pool.attn > pool.attn.flatten(-2).mean(-1)[..., None, None]).float()
    binar = (cls_attn > cls_attn.flatten(-2).mean(-1)[..., None, None]).float()
    sim = torch.stack(
        [F.cosine_similarity(text, (binar[:, i : i + 1] * adapter).flatten(-2).mean(-1), dim=-1) for i in range(heads)],
        dim=1,
    )
    idx = sim.argmax(1)
    sam = 0.5 * pool_mask + 0.5 * binar[:, idx].mean(1)
    lo, hi = sam.flatten(1).min(1)[0][:, None, None], sam.flatten(1).max(1)[0][:, None, None]
    assert out.selected_head.tolist() == idx.tolist()
    assert torch.allclose(out.saliency, (sam - lo) / (hi - lo + 1e-15), atol=1e-6)


# -------------------------------------------------------------------------------------------- AttentionPool2d


def test_attention_pool_matches_multi_head_attention_forward_with_many_heads():
    # locate.py:413-437: query = all tokens, separate q/k/v weights, head-averaged weights.
    torch.manual_seed(0)
    dim, heads, h, w, b = 8, 4, 2, 3, 2
    pool = AttentionPool2d(dim, heads, grid_size=(h, w))
    x = torch.randn(b, dim, h, w)
    seq = x.flatten(2).permute(2, 0, 1)
    seq = torch.cat([seq.mean(0, keepdim=True), seq]) + pool.positional_embedding[:, None]
    ref, att = F.multi_head_attention_forward(
        seq, seq, seq, dim, heads,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        need_weights=True,
    )  # fmt: skip
    out = pool(x)
    assert torch.allclose(out.pooled, ref[0], atol=1e-6)
    assert torch.allclose(out.tokens, ref[1:].permute(1, 2, 0).reshape(b, dim, h, w), atol=1e-6)
    assert torch.allclose(out.attn, att[:, 0, 1:].reshape(b, h, w), atol=1e-7)


def _reference_cfg(*overrides: str):
    base = ["model.backbone.weights=", "model.text.clip_weights=", "data.image_size=28", "data.resize_size=32"]
    base.append("model.backbone.kwargs={embed_dim: 64, depth: 1, num_heads: 2}")
    return load_config(REPO / "configs/reference/bitalign_seen.yaml", base + list(overrides))


@pytest.fixture(scope="module")
def reference_model():
    from models.build import build_model

    torch.manual_seed(0)
    return build_model(_reference_cfg(), ["beat", "cut_with", "hold", "sit_on"])


def test_reference_model_fixes_what_the_published_optimiser_never_updates(reference_model):
    m = reference_model
    assert m.attn_pool.num_heads == 64 and not m.attn_pool.positional_embedding.requires_grad
    assert "logit_scale" in dict(m.named_buffers()) and "logit_scale" not in dict(m.named_parameters())
    assert torch.isclose(m.logit_scale, torch.tensor(math.log(1 / 0.07)))
    assert not m.text.prompt.requires_grad and m.text.prompt.shape == (6, 512)
    assert all(not p.requires_grad for p in m.depth_prompt.parameters())
    in_optimiser = {n for g in param_groups(m, 1e-3) for n in g["param_names"]}
    kept = set(m.state_dict())
    for name in ("attn_pool.positional_embedding", "logit_scale", "text.prompt", "depth_prompt.blocks.0.gate"):
        assert name not in in_optimiser and name in kept
    assert not m.aff_proj.residual and m.parts.cam_thd == 0.8
    assert type(m.saliency) is BatchHeadSaliency and type(m.gate) is PooledTokenGate


def test_our_defaults_differ_from_the_reference():
    ours = load_config(REPO / "configs/bitalign_dinov2-vits14_agd20k-seen.yaml")
    ref = _reference_cfg()
    assert (ours.model.bitalign.gate, ref.model.bitalign.gate) == ("cosine", "published")
    assert (ours.model.bitalign.head_choice, ref.model.bitalign.head_choice) == ("sample", "batch")
    assert ours.model.adapter_residual and not ref.model.adapter_residual
    assert (ours.model.backbone.pos_embed_resize, ref.model.backbone.pos_embed_resize) == ("timm", "dinov2")
    assert not ours.data.depth_root and ref.data.depth_root
    assert (ours.model.kmeans, ref.model.kmeans) == ("kmeanspp", "locate")
    assert (ours.train.param_groups, ref.train.param_groups) == ("ours", "published")
    unseen = load_config(REPO / "configs/reference/bitalign_unseen.yaml")
    assert unseen.data.splits == ["Unseen"] and unseen.model.bitalign == ref.model.bitalign


# ----------------------------------------------------------------------------------------------------- text


def published_text_features(enc: OpenClipTextEncoder, phrases: list[str]) -> torch.Tensor:
    """locate.py:26-48 (forward_with_prompts) on our tower: prompts ahead of the tokens, EOT index unshifted."""
    tower = enc.tower
    m = enc.prompt.shape[0]
    tokens = enc.tokenizer([enc.template.format(p.replace("_", " ")) for p in phrases], context_length=16 - m)
    emb = tower.token_embedding(tokens)
    x = torch.cat([enc.prompt.unsqueeze(0).expand(len(phrases), -1, -1), emb], dim=1) + tower.positional_embedding
    x = tower.ln_final(tower.transformer(x, attn_mask=tower.attn_mask))
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ tower.text_projection


def test_unshifted_end_token_and_prompts_before_start_match_the_published_encoder():
    torch.manual_seed(0)
    names = ["beat", "hold", "cut_with", "sit_on"]
    enc = OpenClipTextEncoder(
        names, 8, text_cfg=TINY_TEXT, prompt_tokens=6, template="a good photo of {}", prompt_position="before_start",
        train_prompts=False, prompt_init_std=1.0, end_token="unshifted",
    )  # fmt: skip
    with torch.no_grad():
        ours = enc._encode_tower(enc.class_phrases())
        ref = published_text_features(enc, enc.class_phrases())
    assert torch.allclose(ours, ref, atol=1e-6)
    # With six prompts the read position is <SOT> (one-token names) or "a" (two-token names): under the causal mask it
    # sees only the prompts and "<SOT> a", so names of equal token count share one feature.
    assert torch.equal(ours[0], ours[1]) and torch.equal(ours[2], ours[3]) and not torch.equal(ours[0], ours[2])
    assert not enc.prompt.requires_grad and 0.5 < enc.prompt.std() < 2  # N(0, 1), frozen


def test_shifted_end_token_after_start_reads_the_end_token():
    torch.manual_seed(0)
    enc = OpenClipTextEncoder(["beat", "hold"], 8, text_cfg=TINY_TEXT, prompt_tokens=2)
    tower = enc.tower
    tokens = enc.tokenize(enc.class_phrases())
    with torch.no_grad():
        emb = tower.token_embedding(tokens)
        ctx = enc.prompt.unsqueeze(0).expand(2, -1, -1)
        x = torch.cat([emb[:, :1], ctx, emb[:, 1:]], dim=1) + tower.positional_embedding
        x = tower.ln_final(tower.transformer(x, attn_mask=tower.attn_mask))
        ref = x[torch.arange(2), tokens.argmax(-1) + 2] @ tower.text_projection
        assert torch.allclose(enc._encode_tower(enc.class_phrases()), ref, atol=1e-6)
    assert enc.prompt.requires_grad


# --------------------------------------------------------------------------------------- DINOv2 pos-embed resize


def _keys_cubic(t: float, a: float = -0.75) -> float:
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def _resize_1d(values: list[float], out: int, offset: float = 0.1) -> list[float]:
    """DINOv2's resize along one axis: scale factor (out + offset) / n, so source = (i + 0.5) n / (out + offset) - 0.5,
    Keys cubic (a = -0.75) taps clamped at the border."""
    n = len(values)
    res = []
    for i in range(out):
        src = (i + 0.5) * n / (out + offset) - 0.5
        base = math.floor(src)
        res.append(sum(_keys_cubic(src - j) * values[min(max(j, 0), n - 1)] for j in range(base - 1, base + 3)))
    return res


def test_dinov2_resize_matches_a_hand_typed_bicubic():
    m, g, e = 5, 3, 2
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + m * m, e)
    ours = resize_pos_embed_dinov2(pos, (g, g))
    assert torch.equal(ours[:, 0], pos[:, 0])  # the CLS row is kept
    for c in range(e):
        grid = pos[0, 1:, c].view(m, m).tolist()
        rows = [_resize_1d(r, g) for r in grid]  # along the width
        cols = [_resize_1d([rows[i][j] for i in range(m)], g) for j in range(g)]  # then along the height
        expected = torch.tensor(cols).t().reshape(-1)
        assert torch.allclose(ours[0, 1:, c], expected, atol=1e-5)
    assert resize_pos_embed_dinov2(pos, (m, m)) is pos
    # Not the exact-size resize: sampling (g + 0.1) / m reads a narrower grid.
    exact = F.interpolate(pos[:, 1:].view(1, m, m, e).permute(0, 3, 1, 2), size=(g, g), mode="bicubic")
    assert not torch.allclose(ours[0, 1:].view(g, g, e).permute(2, 0, 1), exact[0], atol=1e-3)


# ----------------------------------------------------------------------------------------------- checkpoints


def test_published_state_dict_names_are_converted():
    sd = {
        "vit_model.blocks.3.mpg_.mpg_down1.weight": torch.zeros(1),
        "vit_model.blocks.3.mpg_.mpg_g": torch.zeros(1),
        "vit_model.blocks.3.mpg_.mpg_fc_layer.1.weight": torch.zeros(1),
        "vit_model.blocks.3.attn.qkv.weight": torch.zeros(1),
        "vit_model.mask_token": torch.zeros(1),
        "ego_self_attention.positional_embedding": torch.zeros(1),
        "clip_line.weight": torch.zeros(1),
        "prompt_embeddings": torch.zeros(1),
        "module.aff_fc.bias": torch.zeros(1),
        "logit_scale": torch.zeros(()),
    }
    assert sorted(convert_bitalign_state_dict(sd)) == sorted(
        [
            "depth_prompt.blocks.3.down_rgb.weight",
            "depth_prompt.blocks.3.gate",
            "backbone.vit.blocks.3.attn.qkv.weight",
            "attn_pool.positional_embedding",
            "text.proj.weight",
            "text.prompt",
            "aff_fc.bias",
            "logit_scale",
        ]
    )
