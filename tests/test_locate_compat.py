"""Tests of models/locate_compat.py: a state dict in LOCATE's layout reproduces LOCATE's outputs after conversion."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_VIT, tiny_config
from einops import rearrange
from torch import nn

from models.backbone import ViTBackbone
from models.build import build_model
from models.grounder import Grounder
from models.heads import AffordanceAdapter, conv_bn_relu
from models.locate_compat import convert_locate_state_dict, interleaved_to_head_major, load_locate_checkpoint

NAMES = ["cut", "hold", "pour", "swing"]


def test_interleaved_to_head_major_hand_values():
    # heads=2, d_h=3: our channel c = head*3 + d holds LOCATE's d*2 + head.
    assert interleaved_to_head_major(2, 3).tolist() == [0, 2, 4, 1, 3, 5]
    x_head_major = torch.arange(6.0)
    interleaved = rearrange(x_head_major, "(nh dh) -> (dh nh)", nh=2)
    assert interleaved[interleaved_to_head_major(2, 3)].tolist() == x_head_major.tolist()


class LocateHeads(nn.Module):
    """The trainable part of LOCATE's Net, with its module names, run on interleaved key descriptors."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.aff_proj = AffordanceAdapter(dim)
        self.aff_ego_proj = conv_bn_relu(dim)
        self.aff_exo_proj = conv_bn_relu(dim)
        self.aff_fc = nn.Conv2d(dim, num_classes, 1)

    def ego(self, desc: torch.Tensor) -> torch.Tensor:
        return self.aff_fc(self.aff_ego_proj(self.aff_proj.forward_grid(desc)))

    def exo(self, desc: torch.Tensor) -> torch.Tensor:
        return self.aff_fc(self.aff_exo_proj(self.aff_proj.forward_grid(desc)))


def locate_checkpoint() -> tuple[dict[str, torch.Tensor], LocateHeads]:
    torch.manual_seed(42)
    heads = LocateHeads(32, len(NAMES))
    for m in heads.modules():  # non-trivial BatchNorm statistics so that the eval path is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    with torch.no_grad():
        heads.aff_proj.norm.weight.uniform_(0.5, 1.5)
        heads.aff_proj.norm.bias.uniform_(-0.5, 0.5)
    heads.eval()
    vit = ViTBackbone("vit_small_patch16_224", **TINY_VIT).vit  # another random ViT than the model's
    state = {f"module.{k}": v for k, v in heads.state_dict().items()}  # saved from DataParallel
    state.update({f"module.vit_model.{k}": v for k, v in vit.state_dict().items()})
    return state, heads


def make_model(descriptor: str = "key", classes: list[str] = NAMES) -> Grounder:
    torch.manual_seed(0)
    return build_model(tiny_config({"model": {"backbone": {"descriptor": descriptor}, "kmeans_iters": 5}}), classes)


@pytest.mark.parametrize("from_file", [False, True])
def test_converted_checkpoint_reproduces_locate_outputs(tmp_path, from_file):
    state, ref = locate_checkpoint()
    model = make_model()
    if from_file:
        path = tmp_path / "best_model.pth"
        torch.save(state, path)
        load_locate_checkpoint(model, path)
    else:
        load_locate_checkpoint(model, state)
    model.eval()
    vit_state = {k[len("module.vit_model.") :]: v for k, v in state.items() if k.startswith("module.vit_model.")}
    assert all(torch.equal(model.backbone.vit.state_dict()[k], v) for k, v in vit_state.items())

    torch.manual_seed(3)
    images = torch.randn(2, 3, 32, 32)
    keys = model.backbone(images).descriptors  # (2, 32, 4, 4) head-major
    interleaved = rearrange(keys, "b (nh dh) h w -> b (dh nh) h w", nh=2)  # LOCATE's d * heads + head
    assert not torch.allclose(interleaved, keys)  # the layouts really differ
    with torch.no_grad():
        ref_ego = ref.ego(interleaved)
        ref_exo = ref.exo(interleaved)
    pred = model.predict(images, torch.tensor([1, 3]))
    torch.testing.assert_close(pred.ego_pred, ref_ego, atol=1e-5, rtol=1e-4)
    out = model({"exo": images.unsqueeze(1), "ego": images, "label": torch.tensor([1, 3])})
    torch.testing.assert_close(out.aff_cam, ref_exo, atol=1e-5, rtol=1e-4)
    # Without the conversion the outputs would differ: the permutation matters.
    naive = make_model()
    naive.load_state_dict(
        {k.replace("module.vit_model.", "backbone.vit.").replace("module.", ""): v for k, v in state.items()}
    )
    naive_pred = naive.eval().predict(images, torch.tensor([1, 3]))
    assert not torch.allclose(naive_pred.ego_pred, ref_ego, atol=1e-3)


def test_checkpoint_without_backbone_weights_loads_into_frozen_model():
    state, _ = locate_checkpoint()
    heads_only = {k: v for k, v in state.items() if "vit_model." not in k}
    model = make_model()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    load_locate_checkpoint(model, heads_only)
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())


def test_mismatches_are_reported():
    state, _ = locate_checkpoint()
    with pytest.raises(ValueError, match=r"shape mismatches \(2\): aff_fc\.bias: checkpoint \(4,\) vs model \(3,\)"):
        load_locate_checkpoint(make_model(classes=NAMES[:3]), state)
    with pytest.raises(ValueError, match="need key descriptors"):
        load_locate_checkpoint(make_model(descriptor="token"), state)
    bad = dict(state)
    bad["module.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): extra\.weight"):
        load_locate_checkpoint(make_model(), bad)
    with pytest.raises(ValueError, match="descriptor channels"):
        convert_locate_state_dict(state, num_heads=4, head_dim=4)
