"""Reject nonsense configuration values before any work starts, naming the key and the valid range."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from utils.config.schema import BASELINES, SPLITS, Config, ConfigError

__all__ = ["validate"]


# ---------------------------------------------------------------------------------------- validation


def _check(ok: bool, key: str, found: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={found!r} is invalid: expected {expected}.")


def _check_choices(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_choices(value, f"{prefix}{f.name}.")
            continue
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.4)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{prefix}{f.name}={value!r} is not one of {', '.join(map(str, choices))}.{hint}")


def validate(cfg: Config) -> None:
    """Reject nonsense values before any work starts (negative sizes, unknown choices, unknown backbones)."""
    _check_choices(cfg, "")
    d, t, m = cfg.data, cfg.train, cfg.model
    _check(
        len(d.splits) > 0 and all(s in SPLITS for s in d.splits),
        "data.splits",
        d.splits,
        "a non-empty list of Seen/Unseen",
    )
    _check(len(set(d.splits)) == len(d.splits), "data.splits", d.splits, "no repeated split")
    for key, value in (
        ("data.image_size", d.image_size),
        ("data.resize_size", d.resize_size),
        ("data.eval_size", d.eval_size),
        ("data.num_exo", d.num_exo),
        ("train.epochs", t.epochs),
        ("train.batch_size", t.batch_size),
        ("eval.batch_size", cfg.eval.batch_size),
        ("model.num_parts", m.num_parts),
        ("model.kmeans_iters", m.kmeans_iters),
        ("model.adapter_ratio", m.adapter_ratio),
        ("data.synthetic.image_size", d.synthetic.image_size),
        ("data.synthetic.exo_per_folder", d.synthetic.exo_per_folder),
        ("data.synthetic.ego_per_folder", d.synthetic.ego_per_folder),
        ("data.synthetic.test_per_folder", d.synthetic.test_per_folder),
    ):
        _check(value >= 1, key, value, "a positive integer")
    _check(d.resize_size >= d.image_size, "data.resize_size", d.resize_size, f">= data.image_size ({d.image_size})")
    for key, value in (
        ("train.max_steps_per_epoch", t.max_steps_per_epoch),
        ("train.lr_step", t.lr_step),
        ("eval.every", cfg.eval.every),
        ("eval.viz", cfg.eval.viz),
        ("viz.every", cfg.viz.every),
        ("viz.num", cfg.viz.num),
        ("model.text.prompt_tokens", m.text.prompt_tokens),
        ("model.bitalign.pool_heads", m.bitalign.pool_heads),
        ("loss.proto_warmup_epochs", cfg.loss.proto_warmup_epochs),
    ):
        _check(value >= 0, key, value, "an integer >= 0")
    _check(d.num_workers >= -1, "data.num_workers", d.num_workers, "-1 (one per usable CPU) or a count >= 0")
    _check(d.views >= 0, "data.views", d.views, "0 (a fresh augmentation at every use) or a number of views")
    _check(
        not t.cache or d.views > 0,
        "train.cache",
        t.cache,
        "false unless data.views > 0: the cache stores a fixed number of views per image (e.g. data.views=4)",
    )
    _check(
        not (t.cache and m.extensions.oracle_prototypes),
        "train.cache",
        t.cache,
        "false with model.extensions.oracle_prototypes (the oracle needs each view's part mask, which is not cached)",
    )
    _check(t.lr > 0, "train.lr", t.lr, "a positive learning rate")
    _check(t.head_lr_mult > 0, "train.head_lr_mult", t.head_lr_mult, "a positive multiplier")
    _check(t.bias_lr_mult > 0, "train.bias_lr_mult", t.bias_lr_mult, "a positive multiplier")
    _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, ">= 0")
    _check(0 <= t.momentum < 1, "train.momentum", t.momentum, "a value in [0, 1)")
    _check(0 < t.lr_gamma <= 1, "train.lr_gamma", t.lr_gamma, "a value in (0, 1]")
    _check(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, ">= 0 (0 disables clipping)")
    _check(m.text.prompt_init_std > 0, "model.text.prompt_init_std", m.text.prompt_init_std, "a positive std")
    _check(cfg.loss.proto_margin < 1, "loss.proto_margin", cfg.loss.proto_margin, "a margin below 1")
    ext = m.extensions
    _check(ext.appearance >= 0, "model.extensions.appearance", ext.appearance, "a weight >= 0 (0 turns it off)")
    _check(ext.contrast_weight >= 0, "model.extensions.contrast_weight", ext.contrast_weight, "a weight >= 0")
    _check(0 <= ext.object_prior < 1, "model.extensions.object_prior", ext.object_prior, "a share in [0, 1)")
    _check(ext.contrast_bank >= 1, "model.extensions.contrast_bank", ext.contrast_bank, "a positive integer")
    _check(0 <= ext.topk_pool <= 1, "model.extensions.topk_pool", ext.topk_pool, "a fraction in [0, 1] (0: GAP)")
    for key in ("proto", "conc", "contra", "sep", "border"):
        _check(getattr(cfg.loss, key) >= 0, f"loss.{key}", getattr(cfg.loss, key), "a weight >= 0")
    _check(
        len(m.proj_kernels) > 0 and all(k > 0 and k % 2 == 1 for k in m.proj_kernels),
        "model.proj_kernels",
        m.proj_kernels,
        "a non-empty list of positive odd kernel sizes",
    )
    for key in ("aff_cam_thd", "part_iou_thd"):
        _check(0 <= getattr(m, key) <= 1, f"model.{key}", getattr(m, key), "a threshold in [0, 1]")
    _check(
        all(h >= 0 for h in m.cls_heads) and len(m.cls_heads) > 0,
        "model.cls_heads",
        m.cls_heads,
        "a non-empty list of head indices >= 0",
    )
    for b in cfg.eval.baselines:
        _check(b in BASELINES, "eval.baselines", cfg.eval.baselines, f"names from {', '.join(BASELINES)}")
    _check(
        m.saliency != "bitalign" or m.text.encoder != "none",
        "model.saliency",
        m.saliency,
        "'locate' when model.text.encoder is 'none' (the BiT-Align saliency selects heads by text): "
        "set model.text.encoder=clip or learned",
    )
    _check(
        not m.text_gating or m.text.encoder != "none",
        "model.text_gating",
        m.text_gating,
        "false when model.text.encoder is 'none' (gating needs text features)",
    )
    for key, value in m.backbone.kwargs.items():
        # YAML reads `{patch_size:8}` as one key 'patch_size:8' with no value: say what to type instead
        _check(
            not (value is None and ":" in str(key)),
            "model.backbone.kwargs",
            m.backbone.kwargs,
            "a mapping such as {patch_size: 8} (YAML needs a space after each colon)",
        )
    dev = cfg.device
    ok_dev = dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())
    _check(ok_dev, "device", dev, "auto, cpu, cuda or cuda:N")
    _check_backbone_name(m.backbone.name)


def _check_backbone_name(name: str) -> None:
    import timm  # local: importing timm costs a second; only validation needs it here

    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models("vit_*"), n=3, cutoff=0.6)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise ConfigError(
            f"model.backbone.name={name!r} is not a timm model.{hint} Use a timm ViT name such as "
            "vit_small_patch16_224.dino (list them with `python -c \"import timm; print(timm.list_models('vit_*'))\"`)."
        )
