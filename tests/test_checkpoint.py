"""Checkpoint writing, safe loading, compatibility checks and RNG round trips (utils/engine/checkpoint.py,
atomic_files.py and rng_state.py)."""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import utils.engine.atomic_files as atomic_mod
import utils.engine.checkpoint as ckpt_mod
from utils.config import Config, config_to_dict
from utils.engine.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    apply_overrides,
    check_compatibility,
    load_checkpoint,
    load_model_state,
    restore_training_state,
    save_checkpoint,
)
from utils.engine.optim import build_optimizer, build_scheduler
from utils.engine.rng_state import get_rng_state, set_rng_state

CLASSES = ["cut", "hold", "pour"]


class TinyGrounder(nn.Module):
    """Stand-in with a frozen backbone named by frozen_prefixes(), trainable heads and a BatchNorm buffer."""

    def __init__(self, num_classes: int = 3, width: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Linear(width, width)
        self.backbone.requires_grad_(False)
        self.aff_proj = nn.Linear(width, width)
        self.bn = nn.BatchNorm1d(width)
        self.aff_fc = nn.Linear(width, num_classes)

    def frozen_prefixes(self) -> tuple[str, ...]:
        return ("backbone.",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aff_fc(self.bn(self.aff_proj(self.backbone(x))))


def _cfg(weights: str = "dino.pth") -> Config:
    cfg = Config()
    cfg.model.backbone.weights = weights
    return cfg


def _train_a_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    loss = model(torch.randn(6, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_roundtrip_weights_only_frozen_backbone_named_not_stored(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, cfg = TinyGrounder(), _cfg()
    opt = build_optimizer(model, cfg.train)
    sched = build_scheduler(opt, cfg.train)
    _train_a_step(model, opt)
    sched.step()
    path = save_checkpoint(
        tmp_path / "last.pth",
        model=model,
        cfg=cfg,
        class_names=CLASSES,
        epoch=3,
        step=17,
        optimizer=opt,
        scheduler=sched,
        split="Seen",
        extra={"history": [{"epoch": 0, "KLD": 1.5}]},
    )
    raw = torch.load(path, weights_only=True)  # no pickled objects inside
    assert not any(k.startswith("backbone.") for k in raw["model"])
    assert "bn.running_mean" in raw["model"] and "aff_fc.weight" in raw["model"]
    assert raw["frozen"]["prefixes"] == ["backbone."] and raw["frozen"]["num_tensors"] == 2
    assert raw["frozen"]["backbone"] == {"name": cfg.model.backbone.name, "weights": "dino.pth"}
    assert (raw["epoch"], raw["step"], raw["split"], raw["class_names"]) == (3, 17, "Seen", CLASSES)
    assert raw["config"] == config_to_dict(cfg)
    assert raw["extra"]["history"][0]["KLD"] == 1.5

    # a fresh model, optimiser and scheduler resume to the same state; the frozen backbone keeps its own values
    torch.manual_seed(1)
    fresh = TinyGrounder()
    backbone_before = fresh.backbone.weight.clone()
    opt2 = build_optimizer(fresh, cfg.train)
    sched2 = build_scheduler(opt2, cfg.train)
    info = restore_training_state(load_checkpoint(path), fresh, opt2, sched2, cfg, CLASSES)
    assert info["epoch"] == 3 and info["step"] == 17
    for k, v in model.state_dict().items():
        if not k.startswith("backbone."):
            assert torch.equal(fresh.state_dict()[k], v), k
    assert torch.equal(fresh.backbone.weight, backbone_before)
    assert sched2.last_epoch == sched.last_epoch == 1
    buf = opt.state[model.aff_fc.weight]["momentum_buffer"]
    assert torch.equal(opt2.state[fresh.aff_fc.weight]["momentum_buffer"], buf)


def test_random_or_requested_backbone_is_stored(tmp_path: Path) -> None:
    model = TinyGrounder()
    # random init (weights "") cannot be rebuilt from the config, so it is stored
    p1 = save_checkpoint(tmp_path / "a.pth", model=model, cfg=_cfg(""), class_names=CLASSES, epoch=0, step=0)
    assert "backbone.weight" in load_checkpoint(p1)["model"]
    p2 = save_checkpoint(
        tmp_path / "b.pth", model=model, cfg=_cfg(), class_names=CLASSES, epoch=0, step=0, save_backbone=True
    )
    ck = load_checkpoint(p2)
    assert "backbone.weight" in ck["model"] and ck["frozen"]["prefixes"] == []


def test_rng_state_roundtrip() -> None:
    state = get_rng_state()
    a = (random.random(), np.random.rand(3), torch.rand(3))
    # the state must survive a weights_only save/load too
    set_rng_state(copy.deepcopy(state))
    b = (random.random(), np.random.rand(3), torch.rand(3))
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    assert torch.equal(a[2], b[2])


def test_rng_state_survives_weights_only(tmp_path: Path) -> None:
    torch.save(get_rng_state(), tmp_path / "rng.pt")
    first = (random.random(), np.random.randn(), torch.randn(2))
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), np.random.randn(), torch.randn(2))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


@pytest.mark.parametrize("target", ["torch.save", "os.replace"])
def test_interrupted_write_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    model, cfg = TinyGrounder(), _cfg()
    path = save_checkpoint(tmp_path / "last.pth", model=model, cfg=cfg, class_names=CLASSES, epoch=0, step=5)
    before = path.read_bytes()

    real_save = torch.save

    def broken_save(obj, f, *a, **k):  # writes half a file, then dies
        real_save(obj, f, *a, **k)
        f.seek(0)
        f.truncate(100)
        raise KeyboardInterrupt("killed mid-write")

    def broken_replace(src, dst):
        raise OSError("disk vanished")

    if target == "torch.save":
        monkeypatch.setattr(atomic_mod.torch, "save", broken_save)
        expected = KeyboardInterrupt
    else:
        monkeypatch.setattr(atomic_mod.os, "replace", broken_replace)
        expected = OSError
    with pytest.raises(expected):
        save_checkpoint(path, model=model, cfg=cfg, class_names=CLASSES, epoch=1, step=10)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 0
    assert os.listdir(tmp_path) == ["last.pth"]  # the temporary file is gone


def test_truncated_missing_and_foreign_files(tmp_path: Path) -> None:
    path = save_checkpoint(
        tmp_path / "last.pth", model=TinyGrounder(), cfg=_cfg(), class_names=CLASSES, epoch=0, step=0
    )
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth.*truncated"):
        load_checkpoint(cut)
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_checkpoint(tmp_path / "nope.pth")
    plain = tmp_path / "plain.pth"
    torch.save(TinyGrounder().state_dict(), plain)  # a bare state dict, e.g. backbone weights
    with pytest.raises(CheckpointError, match=r"plain\.pth is not a checkpoint of this repository"):
        load_checkpoint(plain)
    pickled = tmp_path / "pickled.pth"
    torch.save({"format": ckpt_mod.CHECKPOINT_FORMAT, "obj": Path("x")}, pickled)  # needs full unpickling
    with pytest.raises(CheckpointError, match=r"pickled\.pth"):
        load_checkpoint(pickled)


def test_compatibility_names_the_differing_fields(tmp_path: Path) -> None:
    cfg = _cfg()
    path = save_checkpoint(tmp_path / "last.pth", model=TinyGrounder(), cfg=cfg, class_names=CLASSES, epoch=0, step=0)
    ck = load_checkpoint(path)
    check_compatibility(ck, cfg, CLASSES)  # the same configuration passes
    other = copy.deepcopy(cfg)
    other.model.backbone.name = "vit_base_patch16_224.dino"
    other.model.backbone.descriptor = "token"
    other.train.lr = 0.5  # not an architecture field: ignored
    with pytest.raises(CheckpointMismatchError) as err:
        check_compatibility(ck, other, ["cut", "hold", "pour", "sip"])
    msg = str(err.value)
    assert "class count: checkpoint 3 vs now 4" in msg
    assert "only now ['sip']" in msg
    assert "model.backbone.name: checkpoint 'vit_small_patch16_224.dino' vs now 'vit_base_patch16_224.dino'" in msg
    assert "model.backbone.descriptor" in msg and "train.lr" not in msg


def test_load_model_state_reports_shape_and_key_differences(tmp_path: Path) -> None:
    path = save_checkpoint(
        tmp_path / "last.pth", model=TinyGrounder(), cfg=_cfg(), class_names=CLASSES, epoch=0, step=0
    )
    with pytest.raises(
        CheckpointMismatchError, match=r"shape mismatches.*aff_fc\.weight: checkpoint \(3, 4\) vs model \(5, 4\)"
    ):
        load_model_state(TinyGrounder(num_classes=5), load_checkpoint(path))
    bigger = TinyGrounder()
    bigger.extra = nn.Linear(2, 2)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(2\): extra\.bias, extra\.weight"):
        load_model_state(bigger, load_checkpoint(path))


def test_apply_overrides_changes_a_saved_config() -> None:
    cfg = apply_overrides(config_to_dict(_cfg()), ["model.backbone.weights=/new/dino.pth", "eval.batch_size=3"])
    assert cfg.model.backbone.weights == "/new/dino.pth" and cfg.eval.batch_size == 3
