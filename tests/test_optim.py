"""Parameter groups, optimisers and the learning-rate schedule of utils/engine/optim.py (LOCATE's recipe)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from utils.config import TrainConfig
from utils.engine.optim import build_optimizer, build_scheduler, current_lr, param_groups


class TinyGrounder(nn.Module):
    """Stand-in with the grounder's module names: a frozen backbone, the x10 heads and ordinary layers."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 4)
        self.backbone.requires_grad_(False)
        self.aff_proj = nn.Module()  # the adapter: a LayerNorm (x1, LOCATE's 'fc' rule) and an fc layer (x10)
        self.aff_proj.norm = nn.LayerNorm(4)
        self.aff_proj.fc1 = nn.Linear(4, 8)
        self.aff_exo_proj = nn.Conv2d(8, 8, 3, padding=1)  # not a x10 module, despite the similar name
        self.aff_fc = nn.Conv2d(8, 3, 1)
        self.attn_pool = nn.MultiheadAttention(8, 2)  # in_proj_bias is a bias too
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8))  # neither weight nor bias: trains with the weights


def _groups_by_name(groups: list[dict]) -> dict[str, dict]:
    return {g["name"]: g for g in groups}


def test_param_groups_learning_rates_and_membership() -> None:
    model = TinyGrounder()
    groups = _groups_by_name(param_groups(model, lr=1e-3))
    assert {k: g["lr"] for k, g in groups.items()} == pytest.approx(
        {"weights": 1e-3, "biases": 2e-3, "head_weights": 1e-2, "head_biases": 2e-2}
    )
    assert set(groups["head_weights"]["param_names"]) == {"aff_proj.fc1.weight", "aff_fc.weight"}
    assert set(groups["head_biases"]["param_names"]) == {"aff_proj.fc1.bias", "aff_fc.bias"}
    assert set(groups["biases"]["param_names"]) == {
        "aff_proj.norm.bias",
        "aff_exo_proj.bias",
        "attn_pool.in_proj_bias",
        "attn_pool.out_proj.bias",
    }
    assert set(groups["weights"]["param_names"]) == {
        "aff_proj.norm.weight",
        "aff_exo_proj.weight",
        "attn_pool.in_proj_weight",
        "attn_pool.out_proj.weight",
        "pos_embed",
    }
    # every trainable parameter exactly once, the frozen backbone nowhere
    listed = [id(p) for g in groups.values() for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(listed) == sorted(trainable)
    assert not any(n.startswith("backbone") for g in groups.values() for n in g["param_names"])


def test_param_groups_ignore_wrapper_prefix_and_drop_empty_groups() -> None:
    class Wrapper(nn.Module):  # DDP names the wrapped parameters module.<name>
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Module()
            self.module.aff_fc = nn.Linear(2, 2, bias=False)

    groups = param_groups(Wrapper(), lr=0.1)
    assert [(g["name"], g["param_names"], g["lr"]) for g in groups] == [("head_weights", ["aff_fc.weight"], 1.0)]


def test_no_trainable_parameter_is_an_error() -> None:
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        param_groups(model, lr=1e-3)


def test_sgd_recipe_and_one_hand_computed_step() -> None:
    model = TinyGrounder()
    cfg = TrainConfig(lr=1e-3, momentum=0.9, weight_decay=5e-4)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.SGD)
    for g in opt.param_groups:
        assert g["nesterov"] is True and g["momentum"] == 0.9 and g["weight_decay"] == 5e-4
    # first Nesterov step: d = g + wd * p; buf = d; update = lr_group * (d + m * buf) = lr_group * 1.9 * d
    with torch.no_grad():
        model.aff_fc.bias.fill_(1.0)
        model.aff_exo_proj.bias.fill_(1.0)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5) if p.requires_grad else None
    opt.step()
    d = 0.5 + 5e-4 * 1.0
    assert model.aff_fc.bias.detach() == pytest.approx(torch.full((3,), 1.0 - 2e-2 * 1.9 * d))
    assert model.aff_exo_proj.bias.detach() == pytest.approx(torch.full((8,), 1.0 - 2e-3 * 1.9 * d))


def test_adamw_uses_the_same_groups() -> None:
    opt = build_optimizer(TinyGrounder(), TrainConfig(optimizer="adamw", lr=2e-4, weight_decay=0.01))
    assert isinstance(opt, torch.optim.AdamW)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"weights": 2e-4, "biases": 4e-4, "head_weights": 2e-3, "head_biases": 4e-3})


def test_step_lr_every_lr_step_epochs_and_constant_when_zero() -> None:
    model = TinyGrounder()
    opt = build_optimizer(model, TrainConfig(lr=1.0, lr_step=2, lr_gamma=0.1))
    sched = build_scheduler(opt, TrainConfig(lr=1.0, lr_step=2, lr_gamma=0.1))
    seen = []
    for _ in range(5):
        seen += [current_lr(opt), {g["name"]: g["lr"] for g in opt.param_groups}["head_biases"]]
        opt.step()
        sched.step()
    assert seen == pytest.approx([1.0, 20.0, 1.0, 20.0, 0.1, 2.0, 0.1, 2.0, 0.01, 0.2])

    opt = build_optimizer(model, TrainConfig(lr=1.0, lr_step=0))
    sched = build_scheduler(opt, TrainConfig(lr=1.0, lr_step=0))
    for _ in range(7):
        opt.step()
        sched.step()
    assert current_lr(opt) == pytest.approx(1.0)
