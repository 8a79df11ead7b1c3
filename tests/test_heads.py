"""Tests of models/heads.py: LOCATE's adapter and conv stacks, GAP logits, CLIP-style AttentionPool2d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.heads import AffordanceAdapter, AttentionPool2d, GlobalAveragePool, conv_bn_relu


def test_adapter_is_residual_prenorm_mlp_with_locate_names():
    torch.manual_seed(0)
    ad = AffordanceAdapter(8, hidden_ratio=4)
    assert set(ad.state_dict()) == {"norm.weight", "norm.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert ad.fc1.weight.shape == (32, 8) and ad.fc2.weight.shape == (8, 32)
    x = torch.randn(3, 5, 8)
    expected = x + ad.fc2(F.gelu(ad.fc1(F.layer_norm(x, (8,), ad.norm.weight, ad.norm.bias))))
    torch.testing.assert_close(ad(x), expected)
    # With fc2 at zero the adapter is the identity: the residual carries the descriptors through.
    torch.nn.init.zeros_(ad.fc2.weight)
    torch.nn.init.zeros_(ad.fc2.bias)
    torch.testing.assert_close(ad(x), x)


def test_adapter_without_residual_is_the_plain_mlp():
    torch.manual_seed(0)
    ad = AffordanceAdapter(8, residual=False)
    x = torch.randn(3, 5, 8)
    expected = ad.fc2(F.gelu(ad.fc1(F.layer_norm(x, (8,), ad.norm.weight, ad.norm.bias))))
    torch.testing.assert_close(ad(x), expected)
    torch.nn.init.zeros_(ad.fc2.weight)
    torch.nn.init.zeros_(ad.fc2.bias)
    torch.testing.assert_close(ad(x), torch.zeros_like(x))  # nothing carries the input through


def test_adapter_on_grid_equals_adapter_on_tokens():
    torch.manual_seed(0)
    ad = AffordanceAdapter(8, norm=False)
    assert "norm.weight" not in ad.state_dict()
    g = torch.randn(2, 8, 3, 4)
    tokens = g.flatten(2).transpose(1, 2)  # (2, 12, 8)
    out = ad.forward_grid(g)
    assert out.shape == (2, 8, 3, 4)
    torch.testing.assert_close(out.flatten(2).transpose(1, 2), ad(tokens))


def test_conv_bn_relu_matches_locate_layout():
    stack = conv_bn_relu(8)
    names = {k.split(".")[0] for k in stack.state_dict()}
    assert names == {"0", "1", "3", "4"}  # conv, BN, (ReLU), conv, BN, (ReLU)
    assert isinstance(stack[2], torch.nn.ReLU) and stack[0].kernel_size == (3, 3)
    out = stack(torch.randn(2, 8, 5, 6))
    assert out.shape == (2, 8, 5, 6) and bool((out >= 0).all())


def test_conv_bn_relu_kernel_one_scores_each_patch_by_its_own_descriptor():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 5, 6)
    y = x.clone()
    y[..., 2, 3] += 1.0  # change one patch
    for kernels, reach in (((1, 1), 0), ((3, 1), 1), ((3, 3), 2)):  # each k x k conv reaches k // 2 farther
        stack = conv_bn_relu(8, kernels).eval()
        assert [stack[i].kernel_size[0] for i in (0, 3)] == list(kernels)
        changed = (stack(x) - stack(y)).abs().sum(dim=1)[0] > 1e-6  # (5, 6)
        rows, cols = torch.nonzero(changed, as_tuple=True)
        assert changed[2, 3]
        assert int((rows - 2).abs().max()) == reach and int((cols - 3).abs().max()) == reach
    with pytest.raises(ValueError, match="positive odd numbers"):
        conv_bn_relu(8, (3, 2))


def test_global_average_pool_is_the_mean_of_each_map():
    cam = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[0.0, 0.0], [0.0, -4.0]]]])  # (1, 2, 2, 2)
    torch.testing.assert_close(GlobalAveragePool()(cam), torch.tensor([[3.0, -1.0]]))
    # any leading axes: (b, n, C, h, w) exocentric maps give (b, n, C)
    torch.testing.assert_close(
        GlobalAveragePool()(cam.expand(3, 4, 2, 2, 2)), torch.tensor([3.0, -1.0]).expand(3, 4, 2)
    )


def _clip_reference(
    pool: AttentionPool2d, x: torch.Tensor, pos: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CLIP's AttentionPool2d forward with torch's multi_head_attention_forward (weights averaged over heads)."""
    pos = pool.positional_embedding if pos is None else pos  # (1 + hw, D)
    seq = x.flatten(2).permute(2, 0, 1)  # (hw, B, D)
    seq = torch.cat([seq.mean(dim=0, keepdim=True), seq], dim=0) + pos[:, None]
    out, attn = F.multi_head_attention_forward(
        query=seq,
        key=seq,
        value=seq,
        embed_dim_to_check=seq.shape[-1],
        num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True,
        training=False,
        need_weights=True,
    )
    return out[0], out[1:].permute(1, 0, 2), attn[:, 0, 1:]


def test_attention_pool_matches_clip_reference():
    torch.manual_seed(0)
    pool = AttentionPool2d(16, num_heads=4, grid_size=(3, 3))
    x = torch.randn(2, 16, 3, 3)
    out = pool(x)
    ref_pooled, ref_tokens, ref_attn = _clip_reference(pool, x)
    assert out.pooled.shape == (2, 16) and out.tokens.shape == (2, 16, 3, 3) and out.attn.shape == (2, 3, 3)
    torch.testing.assert_close(out.pooled, ref_pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.tokens.flatten(2).transpose(1, 2), ref_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.attn.flatten(1), ref_attn, atol=1e-6, rtol=1e-5)


def test_attention_pool_interpolates_position_embedding_and_has_gradients():
    torch.manual_seed(0)
    pool = AttentionPool2d(16, num_heads=2, grid_size=(3, 3), out_dim=8)
    x = torch.randn(2, 16, 4, 5)
    out = pool(x)
    assert out.pooled.shape == (2, 8) and out.tokens.shape == (2, 8, 4, 5) and out.attn.shape == (2, 4, 5)
    # Another grid: CLIP's computation with the stored 3x3 embedding resampled to 4x5 (timm's bicubic, antialiased),
    # the mean token's entry kept as it is.
    pe = pool.positional_embedding
    grid = F.interpolate(pe[1:].T.reshape(1, 16, 3, 3), size=(4, 5), mode="bicubic", antialias=True)
    resampled = torch.cat([pe[:1], grid.reshape(16, 20).T])
    ref_pooled, ref_tokens, ref_attn = _clip_reference(pool, x, resampled)
    torch.testing.assert_close(out.pooled, ref_pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.tokens.flatten(2).transpose(1, 2), ref_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.attn.flatten(1), ref_attn, atol=1e-6, rtol=1e-5)
    # The mean query's row sums to one over (mean token + patches); without the mean token it is below one.
    assert bool(((out.attn.sum(dim=(-2, -1)) < 1) & (out.attn.sum(dim=(-2, -1)) > 0)).all())
    (out.pooled.sum() + out.tokens.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pool.parameters())
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        AttentionPool2d(10, num_heads=3)
