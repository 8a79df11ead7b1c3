"""One way to turn a model file into a ready model: our checkpoints and LOCATE's released state dicts.

Two kinds of file are recognised by what they hold, not by their name:

- a checkpoint written by ``train.py`` (``format: wsag-checkpoint-v1``): it carries its configuration and class names,
  and is rebuilt by :func:`utils.engine.checkpoint.build_model_from_checkpoint`;
- a state dict saved by LOCATE's public code (Li et al., CVPR 2023): a flat mapping with ``aff_fc.weight`` and the
  DINO ViT under ``vit_model.`` (``module.`` prefixes from DataParallel allowed). It carries no configuration: the
  architecture comes from a config (default: the schema's defaults, which are LOCATE's recipe), the class list from
  the number of ``aff_fc`` outputs (36: AGD20K Seen, 25: Unseen), and the frozen DINO weights from the file itself.

``test.py``, :class:`utils.inference.predictor.Predictor`, the folder tool, the demo and the exporter all load
through :func:`load_model`.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "LOCATE_SPLITS",
    "LoadedModel",
    "checkpoint_kind",
    "is_locate_state_dict",
    "load_model",
    "locate_class_names",
    "read_model_file",
]

logger = logging.getLogger(__name__)

#: LOCATE's class counts and the AGD20K split each one means.
LOCATE_SPLITS: dict[int, str] = {36: "Seen", 25: "Unseen"}


@dataclass
class LoadedModel:
    """A model ready for inference and what it was built from.

    Attributes:
        model: the :class:`models.grounder.Grounder`, in eval mode on the requested device.
        cfg: the configuration it was built with (the checkpoint's own, or the given config for a LOCATE file).
        class_names: its affordance names, in label order.
        split: the split it was trained on ("Seen", "Unseen" or "" when unknown).
        kind: "wsag" (a checkpoint of this repository) or "locate" (a LOCATE state dict).
        epoch: epochs completed for our checkpoints, None for LOCATE files.
        checkpoint: our checkpoint's metadata (everything but the weights and optimiser state), {} for LOCATE files.
    """

    model: nn.Module
    cfg: Any
    class_names: list[str]
    split: str
    kind: str
    epoch: int | None = None
    checkpoint: dict[str, Any] = field(default_factory=dict)


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def is_locate_state_dict(obj: Any) -> bool:
    """Whether ``obj`` is a state dict in LOCATE's naming: tensors only, ``aff_fc.weight`` and ``aff_proj.*``."""
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        return False
    keys = {_strip_module(str(k)) for k in obj}
    return "aff_fc.weight" in keys and any(k.startswith("aff_proj.") for k in keys)


def locate_class_names(state: dict[str, torch.Tensor], path: str | Path = "<state dict>") -> tuple[list[str], str]:
    """The AGD20K class list and split that a LOCATE state dict was trained on, from its ``aff_fc`` output count.

    Raises:
        utils.engine.checkpoint.CheckpointError: the count is not one LOCATE's code produces (36 Seen, 25 Unseen).
    """
    from datasets.agd20k import SEEN_AFFORDANCES, UNSEEN_AFFORDANCES
    from utils.engine.checkpoint import CheckpointError

    weight = next(v for k, v in state.items() if _strip_module(k) == "aff_fc.weight")
    count = int(weight.shape[0])
    split = LOCATE_SPLITS.get(count)
    if split is None:
        known = ", ".join(f"{n} ({s})" for n, s in LOCATE_SPLITS.items())
        raise CheckpointError(
            f"{path}: a LOCATE state dict whose aff_fc has {count} outputs; the known class counts are {known}. "
            "A LOCATE model trained on another class list cannot be named from the file alone: convert it with "
            "models.locate_compat.load_locate_checkpoint into a model built with those class names."
        )
    return list(SEEN_AFFORDANCES if split == "Seen" else UNSEEN_AFFORDANCES), split


def _read(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of ``path``; a damaged or foreign file fails as our checkpoint loader says."""
    from utils.engine.checkpoint import load_checkpoint

    if not path.is_file():
        return load_checkpoint(path)  # raises FileNotFoundError with the usual advice
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # the checkpoint loader words the reason (truncated, code-carrying pickle, ...)
        return load_checkpoint(path)


def _unwrap(obj: Any) -> Any:
    """A state dict nested in ``{"state_dict": ...}`` or ``{"model": ...}`` (how some scripts save LOCATE weights)."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and "format" not in obj:
            return obj[key]
    return obj


def read_model_file(path: str | Path) -> tuple[str, dict[str, Any]]:
    """Read a model file once and say which kind it is.

    Returns:
        ``("wsag", checkpoint dict)`` or ``("locate", state dict)``.

    Raises:
        FileNotFoundError: no such file.
        utils.engine.checkpoint.CheckpointError: the file is damaged, or is neither kind (the message lists what each
            kind holds and what the file holds).
    """
    return _identify(Path(path), _read(Path(path)))


def checkpoint_kind(path: str | Path) -> str:
    """``"wsag"`` or ``"locate"`` for the file at ``path`` (see :func:`read_model_file`)."""
    return read_model_file(path)[0]


def _identify(path: Path, obj: Any) -> tuple[str, Any]:
    from utils.engine.checkpoint import CHECKPOINT_FORMAT, CheckpointError

    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return "wsag", obj
    inner = _unwrap(obj)
    if is_locate_state_dict(inner):
        return "locate", inner
    found = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(
        f"{path} is neither a checkpoint of this repository (format {CHECKPOINT_FORMAT!r}, written by train.py) nor "
        f"a LOCATE state dict (aff_fc.weight, aff_proj.*, vit_model.*); found {found}. Pretrained backbone files go "
        "to model.backbone.weights instead."
    )


def load_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    config: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    backbone_weights: str | None = None,
    contents: tuple[str, dict[str, Any]] | None = None,
) -> LoadedModel:
    """Build the model a file describes, whichever of the two kinds it is.

    Args:
        path: a checkpoint of this repository or a LOCATE state dict.
        device: where the model goes.
        config: for a LOCATE file, the YAML config giving the architecture (default: the schema's defaults, which are
            LOCATE's recipe: DINO ViT-S/16, key descriptors). Ignored for our checkpoints, which carry theirs.
        overrides: ``section.key=value`` changes (for our checkpoints, to the stored configuration).
        backbone_weights: a local file with the frozen ViT's weights: for our checkpoints that name (not store) the
            backbone and whose file has moved, and for LOCATE files saved without ``vit_model.*``.
        contents: what :func:`read_model_file` returned for ``path``, to spare reading it again.

    Returns:
        A :class:`LoadedModel`.

    Raises:
        FileNotFoundError, utils.engine.checkpoint.CheckpointError, CheckpointMismatchError, utils.config.ConfigError:
            with what was expected, what was found and what to do.
    """
    path = Path(path)
    kind, obj = contents if contents is not None else read_model_file(path)
    overrides = list(overrides)
    if kind == "wsag":
        from utils.engine.checkpoint import build_model_from_checkpoint

        if backbone_weights:
            overrides.append(f"model.backbone.weights={backbone_weights}")
        model, cfg, class_names = build_model_from_checkpoint(path, device, overrides)
        meta = {k: v for k, v in obj.items() if k not in ("model", "optimizer", "scheduler", "rng")}
        split = str(obj.get("split") or "")
        return LoadedModel(model, cfg, class_names, split, kind, int(obj.get("epoch", 0)), meta)
    return _load_locate(path, obj, device, config, overrides, backbone_weights)


def _load_locate(
    path: Path,
    state: dict[str, torch.Tensor],
    device: torch.device | str,
    config: str | Path | None,
    overrides: list[str],
    backbone_weights: str | None,
) -> LoadedModel:
    from models.build import build_model
    from models.locate_compat import load_locate_checkpoint
    from utils.config import ConfigError, load_config
    from utils.engine.checkpoint import CheckpointError, CheckpointMismatchError

    class_names, split = locate_class_names(state, path)
    cfg = load_config(config, overrides)
    if cfg.model.backbone.descriptor != "key" or cfg.model.text.encoder != "none":
        raise ConfigError(
            f"{path} is a LOCATE state dict, which needs model.backbone.descriptor=key and model.text.encoder=none; "
            f"the config has {cfg.model.backbone.descriptor!r} and {cfg.model.text.encoder!r}. Use "
            "configs/locate_dino-vits16_agd20k-seen.yaml (or -unseen)."
        )
    has_vit = any(_strip_module(k).startswith("vit_model.") for k in state)
    build_cfg = copy.deepcopy(cfg)
    if has_vit:
        build_cfg.model.backbone.weights = ""  # the file holds the DINO weights: nothing to read or download
    elif backbone_weights:
        build_cfg.model.backbone.weights = backbone_weights
    elif not cfg.model.backbone.weights:
        raise CheckpointError(
            f"{path} is a LOCATE state dict without the DINO weights (no vit_model.* entries) and no backbone weights "
            "were given; pass the DINO ViT-S/16 file (dino_deitsmall16_pretrain.pth) as backbone_weights= or "
            "model.backbone.weights=PATH."
        )
    model = build_model(build_cfg, class_names)
    try:
        if has_vit:
            _check_backbone_complete(model, state, path)
        load_locate_checkpoint(model, state)
    except ValueError as e:
        raise CheckpointMismatchError(f"{path}: {e}") from e
    model.to(device).eval()
    cfg.model.backbone.weights = build_cfg.model.backbone.weights
    logger.info("loaded LOCATE state dict %s (%s, %d classes)", path, split, len(class_names))
    return LoadedModel(model, cfg, class_names, split, "locate", None)


def _check_backbone_complete(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """A LOCATE file that names some ViT weights must hold all of them (a half-random backbone is silent garbage)."""
    own = {k[len("backbone.vit.") :] for k in model.state_dict() if k.startswith("backbone.vit.")}
    names = (_strip_module(k) for k in state)
    have = {k[len("vit_model.") :] for k in names if k.startswith("vit_model.")} - {"head.weight", "head.bias"}
    missing, unexpected = sorted(own - have), sorted(have - own)
    if missing or unexpected:
        raise ValueError(
            f"the vit_model.* weights do not fit model.backbone.name; missing {missing[:10]} ({len(missing)}), "
            f"unexpected {unexpected[:10]} ({len(unexpected)}). LOCATE uses vit_small_patch16_224.dino; pass the "
            "config it was trained with."
        )
