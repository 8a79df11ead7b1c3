"""Tests of models/backbone.py on tiny random ViTs (one check on a real-size ViT-S/16), CPU only."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_VIT
from einops import rearrange
from safetensors.torch import save_file

from models.backbone import ViTBackbone, read_state_dict
from models.outputs import Features

TINY = TINY_VIT
TINY_REG = {"img_size": 28, "patch_size": 7, "embed_dim": 32, "depth": 2, "num_heads": 2}  # DINOv2 + 4 registers


def tiny(descriptor: str = "key", **kw) -> ViTBackbone:
    torch.manual_seed(0)
    return ViTBackbone("vit_small_patch16_224", descriptor=descriptor, **{**TINY, **kw})


def naive_last_block(bb: ViTBackbone, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full (T x T) attention of the last block computed by hand: returns (attn (B,nh,T,T), keys (B,nh,T,dh))."""
    vit = bb.vit
    with torch.no_grad():
        t = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        for blk in vit.blocks[:-1]:
            t = blk(t)
        last = vit.blocks[-1]
        xn = last.norm1(t)
        b, n, _ = xn.shape
        qkv = last.attn.qkv(xn).reshape(b, n, 3, bb.num_heads, bb.head_dim).permute(2, 0, 3, 1, 4)
        q, k = last.attn.q_norm(qkv[0]), last.attn.k_norm(qkv[1])
        attn = (q @ k.transpose(-2, -1) * bb.head_dim**-0.5).softmax(dim=-1)
    return attn, k


@pytest.mark.parametrize("size", [(32, 32), (32, 40), (48, 32)])
def test_cls_attention_and_keys_match_naive_full_attention(size):
    bb = tiny()
    assert (bb.embed_dim, bb.num_heads, bb.patch_size, bb.num_prefix_tokens, bb.out_dim) == (32, 2, 8, 1, 32)
    x = torch.randn(2, 3, *size)
    out = bb(x)
    h, w = size[0] // 8, size[1] // 8  # the grid follows the input
    assert isinstance(out, Features)
    assert out.descriptors.shape == (2, 32, h, w) and out.cls_attn.shape == (2, 2, h, w)
    attn, k = naive_last_block(bb, x)
    row = rearrange(attn[:, :, 0, 1:], "b nh (h w) -> b nh h w", h=h, w=w)
    torch.testing.assert_close(out.cls_attn, row, atol=1e-6, rtol=1e-5)
    keys = rearrange(k[:, :, 1:], "b nh (h w) dh -> b (nh dh) h w", h=h, w=w)  # head-major channels
    torch.testing.assert_close(out.descriptors, keys, atol=1e-6, rtol=1e-5)


def test_key_descriptors_stop_before_the_rest_of_the_last_block():
    # Keys need only the last block's normed input: its attention output, MLP and the final norm never run.
    ran: list[str] = []
    for descriptor in ("key", "token"):
        bb = tiny(descriptor)
        watched = {"mlp": bb.vit.blocks[-1].mlp, "norm": bb.vit.norm}
        hooks = [m.register_forward_hook(lambda *_, n=n: ran.append(n)) for n, m in watched.items()]
        bb(torch.randn(1, 3, 32, 32))
        for hook in hooks:
            hook.remove()
        ran.append(f"end {descriptor}")
    assert ran == ["end key", "mlp", "norm", "end token"]


def test_register_tokens_are_stripped_and_included_in_the_softmax():
    torch.manual_seed(0)
    bb = ViTBackbone("vit_small_patch14_reg4_dinov2", **TINY_REG)
    assert bb.num_prefix_tokens == 5  # CLS + 4 registers
    x = torch.randn(1, 3, 28, 35)
    out = bb(x)
    assert out.cls_attn.shape == (1, 2, 4, 5)
    assert out.descriptors.shape == (1, 32, 4, 5)
    attn, k = naive_last_block(bb, x)
    row = rearrange(attn[:, :, 0, 5:], "b nh (h w) -> b nh h w", h=4, w=5)
    torch.testing.assert_close(out.cls_attn, row, atol=1e-6, rtol=1e-5)
    keys = rearrange(k[:, :, 5:], "b nh (h w) dh -> b (nh dh) h w", h=4, w=5)  # registers stripped, not [:, 1:]
    torch.testing.assert_close(out.descriptors, keys, atol=1e-6, rtol=1e-5)
    # The softmax ran over all tokens: the patch columns alone sum to less than one.
    assert bool((out.cls_attn.sum(dim=(-2, -1)) < 1 - 1e-4).all())


def test_token_descriptor_is_final_normed_patch_tokens():
    bb = tiny(descriptor="token")
    x = torch.randn(1, 3, 32, 32)
    out = bb(x)
    with torch.no_grad():
        feats = bb.vit.forward_features(x)[:, bb.num_prefix_tokens :]  # (1, 16, 32)
    torch.testing.assert_close(out.descriptors, rearrange(feats, "b (h w) d -> b d h w", h=4, w=4))
    # the CLS attention does not depend on which descriptor is handed out
    torch.testing.assert_close(out.cls_attn, tiny("key")(x).cls_attn)


def test_frozen_backbone_stays_eval_and_gives_no_grad():
    bb = tiny()
    parent = torch.nn.Sequential(bb)
    parent.train()
    assert bb.training and not bb.vit.training
    assert not any(m.training for m in bb.vit.modules())
    assert not any(p.requires_grad for p in bb.parameters())
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    out = bb(x)
    assert not out.descriptors.requires_grad and not out.cls_attn.requires_grad


def test_input_not_multiple_of_patch_raises():
    with pytest.raises(ValueError, match="not a positive multiple of the patch size 8"):
        tiny()(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="descriptor must be one of"):
        tiny(descriptor="value")
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\)"):
        tiny()(torch.randn(1, 4, 32, 32))


def test_real_vit_s16_at_224():
    torch.manual_seed(0)
    bb = ViTBackbone()  # vit_small_patch16_224.dino, random weights
    out = bb(torch.randn(1, 3, 224, 224))
    assert out.descriptors.shape == (1, 384, 14, 14)
    assert out.cls_attn.shape == (1, 6, 14, 14)
    assert bb.default_grid == (14, 14) and bb.grid_size(224, 320) == (14, 20)
    # the CLS row is a softmax over CLS and patches: the patch columns sum to more than zero and less than one
    total = out.cls_attn.sum(dim=(-2, -1))
    assert bool(((total > 0) & (total < 1)).all())


# ------------------------------------------------------------------------------------------ weight files


def _same_params(a: ViTBackbone, b: ViTBackbone) -> bool:
    sa, sb = a.vit.state_dict(), b.vit.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loads_official_dino_style_pth(tmp_path):
    src = tiny()
    path = tmp_path / "dino_official.pth"
    torch.save(src.vit.state_dict(), path)  # official DINO: plain dict, timm's names, no prefix
    torch.manual_seed(123)
    dst = ViTBackbone("vit_small_patch16_224", weights=str(path), **TINY)
    assert _same_params(src, dst)


def test_loads_wrapped_teacher_with_prefixes_and_projection_head(tmp_path):
    src = tiny()
    state = {f"module.backbone.{k}": v for k, v in src.vit.state_dict().items()}
    state["module.head.mlp.0.weight"] = torch.zeros(4, 32)  # DINOHead entries, not part of the backbone
    path = tmp_path / "checkpoint_teacher.pth"
    torch.save({"teacher": state}, path)
    dst = ViTBackbone("vit_small_patch16_224", weights=path, **TINY)
    assert _same_params(src, dst)


def test_loads_safetensors_under_model_key_shape(tmp_path):
    src = tiny()
    path = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in src.vit.state_dict().items()}, str(path))
    dst = ViTBackbone("vit_small_patch16_224", weights=path, **TINY)
    assert _same_params(src, dst)
    assert set(read_state_dict(path)) == set(src.vit.state_dict())


def test_weight_file_that_does_not_fit_lists_keys(tmp_path):
    state = tiny().vit.state_dict()
    state["blocks.0.norm_one.weight"] = state.pop("blocks.0.norm1.weight")
    state["norm.bias"] = torch.zeros(7)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys \(\d+\): blocks\.0\.norm1\.weight") as err:
        ViTBackbone("vit_small_patch16_224", weights=path, **TINY)
    assert "blocks.0.norm_one.weight" in str(err.value).split("unexpected keys")[1]
    assert "norm.bias: file (7,) vs model (32,)" in str(err.value)


def test_missing_weight_file_and_wrong_patch_size(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone weights not found"):
        ViTBackbone("vit_small_patch16_224", weights=tmp_path / "nope.pth", **TINY)
    path = tmp_path / "p16.pth"
    torch.save(tiny(patch_size=16).vit.state_dict(), path)
    with pytest.raises(ValueError, match="another patch size"):
        ViTBackbone("vit_small_patch16_224", weights=path, **TINY)


def test_loads_official_dinov2_layout_with_registers(tmp_path):
    torch.manual_seed(0)
    src = ViTBackbone("vit_small_patch14_reg4_dinov2", **TINY_REG)
    state = dict(src.vit.state_dict())
    # Official DINOv2: the position embedding also covers CLS, registers are "register_tokens", plus a mask token.
    pe = state.pop("pos_embed")  # (1, 16, 32), patches only in timm
    cls = state.pop("cls_token")
    pe_cls = torch.randn(1, 1, 32)
    state.update(
        pos_embed=torch.cat([pe_cls, pe], dim=1),
        cls_token=cls - pe_cls,
        register_tokens=state.pop("reg_token"),
        mask_token=torch.zeros(1, 32),
    )
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(state, path)
    torch.manual_seed(1)
    dst = ViTBackbone("vit_small_patch14_reg4_dinov2", weights=path, **TINY_REG)
    x = torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(dst(x).cls_attn, src(x).cls_attn, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(dst.vit.cls_token, src.vit.cls_token)
