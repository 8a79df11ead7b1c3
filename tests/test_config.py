"""The config system: defaults, YAML merge, CLI overrides, errors that name the key, the round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from utils.config import Config, ConfigError, config_from_dict, config_help, config_to_dict, load_config, save_config

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_published_recipe():
    cfg = load_config()
    assert cfg.model.backbone.name == "vit_small_patch16_224.dino"
    assert cfg.model.backbone.descriptor == "key"
    assert cfg.model.cls_heads == [0, 1, 3]
    assert (cfg.model.aff_cam_thd, cfg.model.part_iou_thd, cfg.model.num_parts) == (0.6, 0.6, 3)
    assert (cfg.loss.proto, cfg.loss.conc, cfg.loss.contra) == (1.0, 0.07, 1.0)
    t = cfg.train
    assert (t.epochs, t.batch_size, t.lr, t.momentum, t.weight_decay, t.lr_step, t.lr_gamma) == (
        15,
        16,
        1e-3,
        0.9,
        5e-4,
        5,
        0.1,
    )
    assert t.nesterov and cfg.data.num_exo == 3 and cfg.data.image_size == 224
    assert cfg.data.num_workers == -1 and cfg.data.reduced_decode  # one worker per usable CPU but one
    ext = cfg.model.extensions  # our offline-world additions: all off in the published recipe
    assert ext.appearance == ext.topk_pool == ext.object_prior == 0.0
    assert not (ext.center_descriptors or ext.class_contrast)
    assert not ext.oracle_prototypes


def test_default_lists_are_not_shared_between_instances():
    a, b = Config(), Config()
    a.model.cls_heads.append(7)
    assert b.model.cls_heads == [0, 1, 3]


def test_yaml_merge_keeps_unmentioned_defaults(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.01\nmodel:\n  backbone:\n    descriptor: token\n")
    cfg = load_config(f)
    assert cfg.train.lr == 0.01
    assert cfg.model.backbone.descriptor == "token"
    assert cfg.train.batch_size == 16  # untouched default
    assert cfg.model.backbone.name == "vit_small_patch16_224.dino"


def test_yaml_base_inheritance_is_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.5\n  epochs: 3\n")
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("_base_: ../base.yaml\ntrain:\n  epochs: 4\n")
    cfg = load_config(child)
    assert (cfg.train.lr, cfg.train.epochs) == (0.5, 4)


def test_yaml_base_loop_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.yaml")


def test_cli_overrides_coerce_types_and_win_over_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.01\n")
    cfg = load_config(
        f,
        [
            "train.lr=2e-3",
            "train.epochs=7",
            "train.nesterov=false",
            "model.cls_heads=[0, 2]",
            "data.splits=[Seen, Unseen]",
            "model.backbone.kwargs={patch_size: 8, depth: 2}",
            "output.name=2024",  # a str field keeps what was typed, not YAML's int
            "train.grad_clip=1",  # an int literal is accepted for a float field
        ],
    )
    assert cfg.train.lr == 2e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 7
    assert cfg.train.nesterov is False
    assert cfg.model.cls_heads == [0, 2]
    assert cfg.data.splits == ["Seen", "Unseen"]
    assert cfg.model.backbone.kwargs == {"patch_size": 8, "depth": 2}
    assert cfg.output.name == "2024"
    assert cfg.train.grad_clip == 1.0 and isinstance(cfg.train.grad_clip, float)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.lrr=1", r"unknown config key 'train\.lrr'\. Did you mean 'train\.lr'\?"),
        ("trian.lr=1", r"unknown config key 'trian'\. Did you mean 'train'\?"),
        ("model.backbone.nmae=x", r"Did you mean 'model\.backbone\.name'\?"),
        ("train.lr=fast", r"train\.lr: expected a float, got 'fast'"),
        ("train.epochs=2.5", r"train\.epochs: expected an int, got 2\.5"),
        ("train.nesterov=maybe", r"train\.nesterov: expected a bool"),
        ("model.cls_heads=3", r"model\.cls_heads: expected a list of int"),
        ("model.cls_heads=[0, x]", r"model\.cls_heads\[1\]: expected an int"),
        (
            "model.center_descriptors=true",
            r"unknown config key 'model\.center_descriptors'\. Did you mean 'model\.extensions'",
        ),
        ("model.backbone.trainable=true", r"unknown config key 'model\.backbone\.trainable'"),
        ("model.extensions.topk=0.2", r"Did you mean 'model\.extensions\.topk_pool'\?"),
        ("train", r"not of the form section\.key=value"),
        ("train.=3", r"empty key"),
    ],
)
def test_bad_overrides_name_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.batch_size=-1", r"train\.batch_size=-1 is invalid: expected a positive integer"),
        ("data.num_exo=0", r"data\.num_exo=0 is invalid"),
        ("train.lr=0", r"train\.lr=0\.0 is invalid"),
        ("model.saliency=bitalgn", r"not one of locate, bitalign\. Did you mean 'bitalign'\?"),
        ("train.amp=fp16", r"train\.amp='fp16' is not one of auto, bf16, off"),
        ("data.splits=[Seen, Train]", r"data\.splits"),
        ("eval.baselines=[centre]", r"eval\.baselines"),
        ("model.backbone.name=vit_smal_patch16_224", r"not a timm model\. Closest: vit_small_patch16_224"),
        ("model.saliency=bitalign", r"model\.text\.encoder=clip or learned"),
        ("device=gpu", r"device='gpu' is invalid"),
        (
            "model.extensions.object_prior=1",
            r"model\.extensions\.object_prior=1\.0 is invalid: expected a share in \[0, 1\)",
        ),
        (
            "model.extensions.topk_pool=1.5",
            r"model\.extensions\.topk_pool=1\.5 is invalid: expected a fraction in \[0, 1\]",
        ),
        (
            "model.extensions.contrast_bank=0",
            r"model\.extensions\.contrast_bank=0 is invalid: expected a positive integer",
        ),
        ("model.extensions.contrast_weight=-1", r"model\.extensions\.contrast_weight=-1\.0 is invalid"),
        ("model.extensions.appearance=-2", r"model\.extensions\.appearance=-2\.0 is invalid"),
        ("data.num_workers=-2", r"data\.num_workers=-2 is invalid: expected -1 \(one per usable CPU\) or a count >= 0"),
        (
            "model.proj_kernels=[3, 2]",
            r"model\.proj_kernels=\[3, 2\] is invalid: expected a non-empty list of positive odd",
        ),
        ("data.resize_size=100", r"data\.resize_size=100 is invalid: expected >= data\.image_size \(224\)"),
        ("model.backbone.kwargs={patch_size:8}", r"needs a space after each colon"),
    ],
)
def test_nonsense_values_fail_before_any_work(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_unknown_key_in_yaml_file_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  backbone:\n    descriptr: key\n")
    with pytest.raises(ConfigError, match=r"model\.backbone\.descriptr.*Did you mean 'model\.backbone\.descriptor'"):
        load_config(f)


def test_missing_and_invalid_files_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(scalar)


def test_resolved_config_round_trip(tmp_path):
    cfg = load_config(None, ["train.lr=0.02", "model.cls_heads=[1]", "model.backbone.kwargs={depth: 2}"])
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    assert yaml.safe_load(path.read_text())["train"]["lr"] == 0.02
    again = load_config(path)
    assert again == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_help_documents_every_option():
    text = config_help()

    def keys(cls, prefix=""):
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type) or isinstance(f.default_factory, type):
                yield from keys(f.default_factory, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}"

    all_keys = list(keys(Config))
    assert len(all_keys) > 50
    for key in all_keys:
        assert f"    {key} (" in text, key
    assert "default 0.001" in text  # train.lr shows its default


def test_every_shipped_config_loads():
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert files, "configs/ holds no YAML file"
    for f in files:
        load_config(f)
