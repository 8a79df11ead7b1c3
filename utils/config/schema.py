"""Typed configuration: a dataclass schema with defaults, YAML files that hold differences, CLI overrides.

The whole configuration of a run is one `Config` object. It is built in three layers, each overriding the last:

1. the defaults written in the dataclasses below (the published LOCATE recipe on AGD20K Seen);
2. a YAML file (``--config``) holding only what differs; ``_base_: other.yaml`` inherits from another file,
   resolved relative to the file that names it;
3. ``section.key=value`` overrides on the command line, parsed as YAML scalars and type-checked.

Every key is checked before any work starts: an unknown key fails with the closest valid name, a wrong type
with the expected type, a nonsense value (a negative batch size, an unknown choice) with the valid range.
The resolved configuration is written into the run folder and into every checkpoint (`config_to_dict`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "BASELINES",
    "SPLITS",
    "BackboneConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "OutputConfig",
    "SyntheticConfig",
    "TextConfig",
    "TrainConfig",
    "VizConfig",
    "config_from_dict",
    "config_help",
    "config_to_dict",
    "load_config",
    "parse_override",
    "save_config",
    "validate",
]


class ConfigError(ValueError):
    """A configuration key, type or value is invalid. The message names the key and what to do."""


def _f(default: Any, help: str, choices: tuple[Any, ...] | None = None) -> Any:
    """A dataclass field with help text (and optional choices), used by --help and validation."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: _copy(d), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(x: Any) -> Any:
    if isinstance(x, list):
        return [_copy(v) for v in x]
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    return x


def _section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help, "choices": None})


# ---------------------------------------------------------------------------------------------- schema


@dataclass
class SyntheticConfig:
    enabled: bool = _f(
        False,
        "Generate the offline synthetic AGD20K-format world at data.root when it is not there yet (then reuse it). "
        "On for configs/synthetic.yaml; off for real AGD20K.",
    )
    seed: int = _f(0, "Generator seed of the synthetic world. Change it to check that results hold on other worlds.")
    image_size: int = _f(128, "Side of the generated images in pixels (128 keeps the CPU demo fast).")
    exo_per_folder: int = _f(24, "Exocentric training images per <affordance>/<object> folder.")
    ego_per_folder: int = _f(8, "Egocentric training images per <affordance>/<object> folder.")
    test_per_folder: int = _f(6, "Egocentric test images (with GT heatmaps) per <affordance>/<object> folder.")


@dataclass
class DataConfig:
    root: str = _f(
        "data/AGD20K",
        "Dataset root holding Seen/ and Unseen/ (AGD20K layout, see README). For the synthetic world: where it is "
        "generated and cached.",
    )
    splits: list[str] = _f(
        ["Seen"],
        "AGD20K splits to run, each trained and evaluated on its own (Unseen test objects never appear in the Unseen "
        "training set). Usual: [Seen] or [Unseen]; the synthetic demo runs [Seen, Unseen].",
    )
    image_size: int = _f(224, "Network input side (random crop in training, resize at test). Multiple of the patch.")
    resize_size: int = _f(256, "Training images are resized so that their shorter side has this length, then cropped.")
    eval_size: int = _f(224, "Resolution at which predictions and GT are compared (the published protocol: 224).")
    num_exo: int = _f(3, "Exocentric images per training sample (anchor + partners from the same folder).")
    num_workers: int = _f(4, "DataLoader worker processes. 0 loads in the main process (easiest to debug).")
    gt_cache: str = _f("", "Folder for a cache of resized GT maps (.npy); empty disables the cache.")
    synthetic: SyntheticConfig = _section(SyntheticConfig, "The offline synthetic world (datasets/synthetic.py).")


@dataclass
class BackboneConfig:
    name: str = _f(
        "vit_small_patch16_224.dino",
        "timm model name of the ViT. Also vit_base_patch8_224.dino, vit_small_patch14_dinov2.lvd142m, "
        "vit_small_patch14_reg4_dinov2.lvd142m.",
    )
    weights: str = _f(
        "",
        "Pretrained weights: a local file (official DINO .pth, timm .pth or .safetensors), 'hub' to download through "
        "timm (needs network), or empty for random init (tests and the offline demo only).",
    )
    descriptor: str = _f(
        "key",
        "Patch descriptors: 'key' (keys of the last attention block, LOCATE) or 'token' (final normed tokens, "
        "BiT-Align).",
        ("key", "token"),
    )
    trainable: bool = _f(
        False,
        "Train the backbone too. The published design keeps it frozen; only the offline synthetic world, where no "
        "pretrained weights exist, turns this on.",
    )
    appearance: float = _f(
        0.0,
        "Weight of seven per-patch appearance statistics (mean and standard deviation of each colour, texture energy) "
        "appended to the descriptors (ours, for the offline world's random ViT, whose tokens keep too little of a "
        "patch's look; README, 'The offline proof'). 0 keeps the published descriptors.",
    )
    kwargs: dict[str, Any] = _f(
        {},
        "Extra keyword arguments for timm.create_model (e.g. {patch_size: 8, embed_dim: 192, depth: 4}) to build a "
        "small ViT for the offline world.",
    )


@dataclass
class TextConfig:
    encoder: str = _f(
        "none",
        "Text encoder for BiT-Align's head selection, gating and contrastive loss: 'none', 'clip' (open_clip text "
        "tower, frozen) or 'learned' (one learned embedding per class, offline).",
        ("none", "clip", "learned"),
    )
    clip_model: str = _f("ViT-B-16", "open_clip model name whose text tower is used.")
    clip_weights: str = _f(
        "", "CLIP weights: a local checkpoint file, 'hub' (open_clip pretrained tag, needs network), or empty (random)."
    )
    prompt_tokens: int = _f(0, "Learnable prompt (context) tokens before the class name; 0 uses the plain name.")
    template: str = _f("{}", "Text template for class names, e.g. 'a photo of something to {} with'.")


@dataclass
class ModelConfig:
    backbone: BackboneConfig = _section(BackboneConfig, "The frozen ViT backbone.")
    text: TextConfig = _section(TextConfig, "The text encoder (BiT-Align).")
    saliency: str = _f(
        "locate",
        "Egocentric saliency: 'locate' (fixed CLS-attention heads) or 'bitalign' (AttentionPool2d mask fused with the "
        "text-selected head; needs a text encoder).",
        ("locate", "bitalign"),
    )
    cls_heads: list[int] = _f([0, 1, 3], "CLS-attention heads averaged by the 'locate' saliency (LOCATE: 0, 1, 3).")
    text_gating: bool = _f(False, "Gate egocentric tokens by their similarity to the label's text feature (BiT-Align).")
    num_parts: int = _f(3, "K, the k-means clusters (candidate parts) per sample.")
    aff_cam_thd: float = _f(0.6, "Exocentric CAM threshold (after min-max) selecting the patches that are clustered.")
    part_iou_thd: float = _f(0.6, "Minimum PartIoU score for a cluster to become the sample's part prototype.")
    pooling: str = _f(
        "gap",
        "How class maps become logits: 'gap' (global average, LOCATE) or 'topk' (ours: the mean of each map's top "
        "pool_top fraction, so that a class is not predicted from how much background an image has).",
        ("gap", "topk"),
    )
    pool_top: float = _f(0.2, "The fraction of positions that pooling=topk averages, in (0, 1].")
    kmeans_iters: int = _f(300, "Maximum Lloyd iterations of the k-means (it stops earlier when it converges).")
    proj_kernels: list[int] = _f(
        [3, 3],
        "Kernel size of each convolution in aff_exo_proj and aff_ego_proj (LOCATE: [3, 3]). [1, 1] (ours) scores each "
        "patch by its own descriptor only, so a part is recognised by its look and not by the object shape around it.",
    )
    adapter_ratio: int = _f(4, "Hidden width of the aff_proj adapter MLP, as a multiple of the descriptor width.")
    object_prior: float = _f(
        0.0,
        "Share of the model's own class-agnostic object map (the min-max of the log-sum-exp of its class maps) mixed "
        "into every predicted heatmap, both scaled to sum 1 on the patch grid (ours; 0 in the published recipe: the "
        "label's map alone). KLD is convex in the prediction, so the mixture hedges the label map's misses. It "
        "changes predictions only, not training.",
    )
    center_descriptors: bool = _f(
        False,
        "Subtract the running mean of the descriptors before the part prototypes and the prototype loss compare them "
        "by cosine (ours; off in the published recipe). A random ViT's descriptors share a large common component, "
        "so raw cosines barely tell a part from the background.",
    )
    part_selection: str = _f(
        "partiou",
        "How each sample's part prototype is chosen among its k-means clusters: 'partiou' (LOCATE: the cluster that "
        "overlaps the egocentric saliency most) or 'contrast' (ours: the cluster most visible in recent egocentric "
        "images of its own class and least in those of any other class).",
        ("partiou", "contrast"),
    )
    part_contrast: float = _f(
        0.5, "With part_selection=contrast: how much a cluster's presence in the other classes counts against it."
    )
    part_bank: int = _f(8, "With part_selection=contrast: egocentric images remembered per class.")
    oracle_prototypes: bool = _f(
        False,
        "Diagnostic, not the method: train with part prototypes taken from the true affordance-part masks of the "
        "egocentric images (the synthetic world only). It bounds what better prototype selection could give.",
    )


@dataclass
class LossConfig:
    proto: float = _f(1.0, "Weight of the part-prototype hinge loss (0 disables it; an ablation).")
    conc: float = _f(0.07, "Weight of the concentration loss on the egocentric class maps.")
    sep: float = _f(
        0.0,
        "Weight of the class-map separation loss (ours, not in LOCATE): the maps of the affordances an egocentric "
        "image is predicted to have must not overlap. 0 keeps the published recipe.",
    )
    contra: float = _f(1.0, "Weight of the image-text contrastive loss (used only with a text encoder).")
    border: float = _f(
        0.0,
        "Weight of the border loss (ours, not in LOCATE): the share of the egocentric label map on the outermost ring "
        "of patches, a boundary prior for object-centred images. 0 keeps the published recipe.",
    )
    proto_warmup_epochs: int = _f(1, "Epochs before the prototype loss starts (LOCATE: it starts at the second).")
    proto_margin: float = _f(
        0.5,
        "Hinge margin of the prototype loss, max(0, 1 - cos - margin) (LOCATE: 0.5). The loss is silent once the "
        "cosine exceeds 1 - margin; lower it when descriptors are less spread out than DINO's.",
    )


@dataclass
class TrainConfig:
    epochs: int = _f(15, "Training epochs (the published schedule: 15).")
    batch_size: int = _f(16, "Samples per step, each 1 egocentric + num_exo exocentric images.")
    lr: float = _f(1e-3, "Base learning rate (weights x1, biases x2, adapter and aff_fc x10, their biases x20).")
    head_lr_mult: float = _f(
        10.0, "Learning-rate multiplier of the adapter (aff_proj) and aff_fc (published: 10; 1 suits AdamW)."
    )
    bias_lr_mult: float = _f(2.0, "Learning-rate multiplier of biases (published: 2; their heads get both).")
    momentum: float = _f(0.9, "SGD momentum (Nesterov).")
    nesterov: bool = _f(True, "Use Nesterov momentum.")
    weight_decay: float = _f(5e-4, "Weight decay.")
    optimizer: str = _f("sgd", "Optimiser: 'sgd' (published recipe) or 'adamw'.", ("sgd", "adamw"))
    lr_step: int = _f(5, "StepLR: multiply the learning rate by lr_gamma every lr_step epochs (0: constant rate).")
    lr_gamma: float = _f(0.1, "StepLR decay factor.")
    amp: str = _f(
        "auto",
        "Mixed precision: 'auto' (bf16 autocast on CUDA and on CPUs with native bf16 units, fp32 elsewhere), "
        "'bf16' (force), 'off'. k-means, losses and metrics always run in fp32.",
        ("auto", "bf16", "off"),
    )
    grad_clip: float = _f(0.0, "Clip the gradient norm to this value; 0 disables clipping.")
    max_steps_per_epoch: int = _f(0, "Stop each epoch after this many steps (0: the whole dataset). For quick checks.")
    log_every: int = _f(20, "Log training scalars every this many steps.")


@dataclass
class EvalConfig:
    every: int = _f(
        1,
        "Evaluate on the test split every this many epochs (0: only after the last). The reported number is always "
        "the last epoch; the test-selected best epoch is reported beside it, labelled.",
    )
    batch_size: int = _f(32, "Test images per batch.")
    baselines: list[str] = _f(
        [],
        "Baselines evaluated through the same code path after training: any of center, uniform, object "
        "(object needs masks, as the synthetic world has).",
    )
    viz: int = _f(8, "Prediction | GT triptychs written after training (0: none).")


@dataclass
class VizConfig:
    every: int = _f(200, "Write TensorBoard pictures every this many training steps (0: never).")
    num: int = _f(4, "Samples shown per TensorBoard picture.")


@dataclass
class OutputConfig:
    dir: str = _f("", "Run folder. Empty: runs/<name>-<timestamp>.")
    name: str = _f("run", "Run name, used in the default run folder.")
    save_backbone: bool = _f(False, "Store the frozen backbone weights in checkpoints too (normally only named).")
    tensorboard: bool = _f(True, "Write TensorBoard event files into the run folder.")


@dataclass
class Config:
    data: DataConfig = _section(DataConfig, "Data.")
    model: ModelConfig = _section(ModelConfig, "Model.")
    loss: LossConfig = _section(LossConfig, "Loss weights.")
    train: TrainConfig = _section(TrainConfig, "Optimisation.")
    eval: EvalConfig = _section(EvalConfig, "Evaluation.")
    viz: VizConfig = _section(VizConfig, "TensorBoard pictures.")
    output: OutputConfig = _section(OutputConfig, "Outputs.")
    device: str = _f("auto", "'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    seed: int = _f(0, "Seed for Python, numpy, torch and the data pairing.")


# ------------------------------------------------------------------------------------- dict <-> config

SPLITS = ("Seen", "Unseen")
BASELINES = ("center", "uniform", "object")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON-serialisable) of a config or config section."""
    return dataclasses.asdict(cfg)


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is None:
        return getattr(tp, "__name__", str(tp))
    args = ", ".join(_type_name(a) for a in typing.get_args(tp))
    return f"{getattr(origin, '__name__', str(origin))}[{args}]"


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check (and gently coerce) ``value`` against the annotation ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            # a bare scalar for a list field is almost always a mistake in the override syntax
            raise ConfigError(
                f"{key}: expected a list of {_type_name(item_tp)} (e.g. {key}=[a,b]), got {value!r} "
                f"({type(value).__name__})"
            )
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (e.g. {key}={{a: 1}}), got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected a bool (true/false), got {value!r} ({type(value).__name__})")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an int, got {value!r} ({type(value).__name__})")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads `2e-3` as text: accept any numeric string for a float field
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a float, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"{key}: expected a string, got {value!r} ({type(value).__name__})")
        return str(value)
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")  # a schema bug, not a user error


def _unknown_key(prefix: str, name: str, cls: type) -> ConfigError:
    valid = sorted(_fields(cls))
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{prefix}{name}'.{hint} Valid keys here: {', '.join(valid)}.")


def _merge_into(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    """Apply a nested dict of updates onto a dataclass instance, validating every key and type."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {updates!r}")
    cls = type(obj)
    fields = _fields(cls)
    hints = _hints(cls)
    for name, value in updates.items():
        if name not in fields:
            raise _unknown_key(prefix, str(name), cls)
        tp = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            _merge_into(getattr(obj, name), value, prefix=f"{key}.")
        else:
            setattr(obj, name, _coerce(key, value, tp))


def config_from_dict(d: dict[str, Any]) -> Config:
    """Build and validate a Config from a (possibly partial) nested dict; missing keys take their defaults."""
    cfg = Config()
    _merge_into(cfg, d)
    validate(cfg)
    return cfg


# ------------------------------------------------------------------------------------------ loading


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config, resolving `_base_` (a path or list of paths relative to this file) recursively."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"config files include each other in a loop: {chain}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}. Pass an existing YAML file (see configs/).")
    with path.open() as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, found {type(data).__name__}")
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict[str, Any] = {}
    for base in bases:
        _deep_update(merged, _read_yaml(path.parent / base, (*seen, path)))
    _deep_update(merged, data)
    return merged


def _deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and k != "kwargs":
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` into its key path and its value (a YAML scalar, list or mapping)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value (e.g. train.lr=0.01)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key; expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # e.g. an unquoted string with a colon: keep it as text
    return key.split("."), value


def _override_to_dict(path: list[str], value: Any, raw: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cur = out
    for part in path[:-1]:
        cur = cur.setdefault(part, {})
    cur[path[-1]] = value
    return out


def _keep_strings(cfg_cls: type, path: list[str], value: Any, raw: str) -> Any:
    """YAML turns `name=1e-3` or `root=2024` into numbers; for str fields keep the text the user typed."""
    cls = cfg_cls
    for part in path[:-1]:
        hints = _hints(cls)
        if part not in hints or not dataclasses.is_dataclass(hints[part]):
            return value
        cls = hints[part]
    tp = _hints(cls).get(path[-1])
    if tp is str and not isinstance(value, str):
        return raw.split("=", 1)[1]
    return value


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
) -> Config:
    """Defaults, then ``base`` or the YAML file (with its `_base_` chain), then ``section.key=value`` overrides.

    Args:
        path: a YAML file holding only what differs from the defaults, or None for the defaults.
        overrides: command-line overrides such as ``train.lr=0.01`` or ``model.cls_heads=[0,2]``.
        base: a (possibly partial) config dict used in place of a file, e.g. the config stored in a checkpoint.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: an unknown key (with the closest valid one), a wrong type, or a nonsense value.
    """
    if path is not None and base is not None:
        raise ConfigError("load_config: give a config file or a base dict, not both")
    data = _read_yaml(Path(path)) if path is not None else _copy(base or {})
    for text in overrides:
        key_path, value = parse_override(text)
        value = _keep_strings(Config, key_path, value, text)
        _deep_update(data, _override_to_dict(key_path, value, text))
    return config_from_dict(data)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved configuration as YAML (load_config reads it back to an equal Config)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        yaml.safe_dump(config_to_dict(cfg), fh, sort_keys=False)


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
        ("data.num_workers", d.num_workers),
        ("train.max_steps_per_epoch", t.max_steps_per_epoch),
        ("train.lr_step", t.lr_step),
        ("eval.every", cfg.eval.every),
        ("eval.viz", cfg.eval.viz),
        ("viz.every", cfg.viz.every),
        ("viz.num", cfg.viz.num),
        ("model.text.prompt_tokens", m.text.prompt_tokens),
        ("loss.proto_warmup_epochs", cfg.loss.proto_warmup_epochs),
    ):
        _check(value >= 0, key, value, "an integer >= 0")
    _check(t.lr > 0, "train.lr", t.lr, "a positive learning rate")
    _check(t.head_lr_mult > 0, "train.head_lr_mult", t.head_lr_mult, "a positive multiplier")
    _check(t.bias_lr_mult > 0, "train.bias_lr_mult", t.bias_lr_mult, "a positive multiplier")
    _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, ">= 0")
    _check(0 <= t.momentum < 1, "train.momentum", t.momentum, "a value in [0, 1)")
    _check(0 < t.lr_gamma <= 1, "train.lr_gamma", t.lr_gamma, "a value in (0, 1]")
    _check(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, ">= 0 (0 disables clipping)")
    _check(cfg.loss.proto_margin < 1, "loss.proto_margin", cfg.loss.proto_margin, "a margin below 1")
    _check(m.backbone.appearance >= 0, "model.backbone.appearance", m.backbone.appearance, "a weight >= 0")
    _check(m.part_contrast >= 0, "model.part_contrast", m.part_contrast, "a weight >= 0")
    _check(0 <= m.object_prior < 1, "model.object_prior", m.object_prior, "a share in [0, 1)")
    _check(m.part_bank >= 1, "model.part_bank", m.part_bank, "a positive integer")
    for key in ("proto", "conc", "contra", "sep", "border"):
        _check(getattr(cfg.loss, key) >= 0, f"loss.{key}", getattr(cfg.loss, key), "a weight >= 0")
    _check(
        len(m.proj_kernels) > 0 and all(k > 0 and k % 2 == 1 for k in m.proj_kernels),
        "model.proj_kernels",
        m.proj_kernels,
        "a non-empty list of positive odd kernel sizes",
    )
    _check(0 < m.pool_top <= 1, "model.pool_top", m.pool_top, "a fraction in (0, 1]")
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


# -------------------------------------------------------------------------------------------- help


def config_help(cls: type = Config, prefix: str = "") -> str:
    """Every option as ``key (type, default): help``, for ``--help``."""
    lines: list[str] = []
    hints = _hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(f"\n  [{prefix}{f.name}] {f.metadata.get('help', '')}")
            lines.append(config_help(tp, f"{prefix}{f.name}."))
            continue
        default = getattr(defaults, f.name)
        choices = f.metadata.get("choices")
        extra = f"; one of {', '.join(map(str, choices))}" if choices else ""
        lines.append(f"    {prefix}{f.name} ({_type_name(tp)}, default {default!r}{extra})")
        lines.append(f"        {f.metadata.get('help', '')}")
    return "\n".join(lines)
