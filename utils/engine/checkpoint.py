"""Checkpoints: atomic writes, safe loading (``weights_only=True``), compatibility checks, and resume.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so that ``torch.load(...,
weights_only=True)`` reads it without unpickling arbitrary objects (the published code ``torch.load``s full
pickles). It holds:

- ``model``: the state dict of the trainable weights and buffers. Entries under ``Grounder.frozen_prefixes()``
  (the frozen pretrained backbone) are *named*, not stored (``frozen`` records their source), unless
  ``output.save_backbone`` is set or the source cannot be reloaded (random initialisation, as in the tests and the
  offline demo);
- ``optimizer``, ``scheduler``, ``epoch`` (epochs completed: training resumes at this 0-based epoch), ``step``
  (optimiser steps so far);
- ``rng``: the Python, numpy and torch (CPU and CUDA) random states, as tensors;
- ``config`` (the resolved configuration dict), ``class_names``, ``split`` and ``extra`` (training history).

Writes are atomic (:mod:`utils.engine.atomic_files`): an interrupted write leaves the previous checkpoint intact. The
random states are captured and restored by :mod:`utils.engine.rng_state`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.state_dict import compare_state_dicts
from utils.config import Config, config_to_dict, load_config
from utils.engine.atomic_files import atomic_save
from utils.engine.distributed import unwrap_model
from utils.engine.rng_state import get_rng_state, set_rng_state

__all__ = [
    "CHECKPOINT_FORMAT",
    "COMPAT_FIELDS",
    "CheckpointError",
    "CheckpointMismatchError",
    "apply_overrides",
    "build_model_from_checkpoint",
    "check_compatibility",
    "load_checkpoint",
    "load_model_state",
    "restore_training_state",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "wsag-checkpoint-v1"

COMPAT_FIELDS: tuple[str, ...] = (
    "model.backbone.name",
    "model.backbone.descriptor",
    "model.backbone.kwargs",
    "model.text.encoder",
    "model.text.clip_model",
    "model.text.prompt_tokens",
    "model.text.template",
    "model.saliency",
    "model.text_gating",
    "model.adapter_ratio",
)
"""Config fields that change the model's weights or their meaning; they must match to load a checkpoint."""

# Frozen-module prefix -> the config field naming its pretrained source. A frozen module whose source is empty
# (random init) cannot be rebuilt from the config, so checkpoints store it.
_FROZEN_SOURCES: dict[str, str] = {"backbone": "model.backbone.weights", "text": "model.text.clip_weights"}


class CheckpointError(RuntimeError):
    """A file is missing, truncated, or not a checkpoint of this repository."""


class CheckpointMismatchError(ValueError):
    """A checkpoint's configuration differs from the one it is loaded into; the message names the fields."""


# -------------------------------------------------------------------------------------------------- saving


def _get_field(d: dict[str, Any], dotted: str) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _frozen_prefixes(model: nn.Module) -> tuple[str, ...]:
    fn = getattr(model, "frozen_prefixes", None)
    return tuple(fn()) if callable(fn) else ()


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name.startswith(p) for p in prefixes)


def _prefix_source(prefix: str, cfg_dict: dict[str, Any]) -> str:
    """The pretrained source of a frozen prefix ('' when it is random or unknown, i.e. must be stored)."""
    root = prefix.split(".", 1)[0]
    key = _FROZEN_SOURCES.get(root)
    return str(_get_field(cfg_dict, key) or "") if key else ""


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    cfg: Config,
    class_names: Sequence[str],
    epoch: int,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    split: str = "",
    extra: dict[str, Any] | None = None,
    save_backbone: bool | None = None,
) -> Path:
    """Write a checkpoint atomically (see the module docstring for its content).

    Args:
        path: destination file (``last.pth`` / ``best.pth``).
        model: the model (a DDP wrapper is unwrapped).
        cfg: the resolved configuration.
        class_names: the model's class names.
        epoch: epochs completed (training resumes at this 0-based epoch index).
        step: optimiser steps so far.
        optimizer: its state is stored when given.
        scheduler: its state is stored when given.
        split: the data split the model was trained on.
        extra: more ``weights_only``-loadable values (training history, best epoch).
        save_backbone: store frozen modules too; default ``cfg.output.save_backbone``.

    Returns:
        The path written.
    """
    model = unwrap_model(model)
    cfg_dict = config_to_dict(cfg)
    save_all = cfg.output.save_backbone if save_backbone is None else save_backbone
    named: list[str] = []
    if not save_all:
        # a frozen module is only left out when the config can rebuild it (its weights come from a file or the hub)
        named = [p for p in _frozen_prefixes(model) if _prefix_source(p, cfg_dict)]
    state = model.state_dict()
    stored = {k: v.detach().cpu() for k, v in state.items() if not _under(k, named)}
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "model": stored,
        "frozen": {
            "prefixes": named,
            "sources": {p: _prefix_source(p, cfg_dict) for p in named},
            "num_tensors": len(state) - len(stored),
            "backbone": {"name": cfg.model.backbone.name, "weights": cfg.model.backbone.weights},
        },
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "step": int(step),
        "rng": get_rng_state(),
        "config": cfg_dict,
        "class_names": list(class_names),
        "split": split,
        "extra": copy.deepcopy(extra) if extra is not None else {},
        "torch_version": str(torch.__version__),  # a TorchVersion object would need unpickling
    }
    atomic_save(ckpt, path)
    logger.debug("saved checkpoint %s (epoch %d, step %d, %d tensors)", path, epoch, step, len(stored))
    return Path(path)


# ------------------------------------------------------------------------------------------------- loading


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` onto the CPU.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is truncated, unreadable, or not a checkpoint written by this repository.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path}. Pass the last.pth or best.pth of a run folder (runs/<name>-<time>/<Split>/)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... depending on the damage
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(e).__name__}: {_reason(e)}). "
            "The file is truncated (an interrupted copy or write) or is not a weights-only checkpoint of this "
            "repository (objects other than tensors and plain data are refused, and nothing in the file was run). "
            "Use another checkpoint (best.pth or last.pth of the run), copy the file again, or retrain."
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = f"a dict with keys {sorted(ckpt)[:8]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not a checkpoint of this repository (expected format {CHECKPOINT_FORMAT!r}, found "
            f"{found}). Pretrained backbone files go to model.backbone.weights instead; train.py writes checkpoints "
            "as last.pth / best.pth."
        )
    return ckpt


def _reason(e: Exception) -> str:
    """The informative line of a torch.load error (the weights-only unpickler buries it in a long text)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if "Unsupported global" in ln:
            return ln[:300]
        if "WeightsUnpickler error" in ln:
            detail = ln.split("WeightsUnpickler error", 1)[1].strip(" :")
            if not detail and i + 1 < len(lines):  # the reason is on the next line
                detail = lines[i + 1]
            return f"WeightsUnpickler error: {detail}"[:300]
    return lines[0][:300] if lines else "no message"


def _fmt(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 200 else text[:197] + "..."


def check_compatibility(ckpt: dict[str, Any], cfg: Config, class_names: Sequence[str] | None = None) -> None:
    """Fail, naming every differing field, when ``ckpt`` was trained with a different model configuration.

    Compared: the class count and names, and :data:`COMPAT_FIELDS` (backbone name, descriptor, timm kwargs, text
    encoder, saliency, ...). A different pretrained-weights source of a frozen module that the checkpoint does not
    store is only warned about (the file may have moved).

    Raises:
        CheckpointMismatchError: one line per differing field, checkpoint value vs configuration value.
    """
    saved = ckpt.get("config") or {}
    now = config_to_dict(cfg)
    diffs: list[str] = []
    if class_names is not None:
        old = list(ckpt.get("class_names") or [])
        new = list(class_names)
        if len(old) != len(new):
            diffs.append(f"class count: checkpoint {len(old)} vs now {len(new)}")
        if old != new:
            only_old = [c for c in old if c not in new]
            only_new = [c for c in new if c not in old]
            detail = f"only in checkpoint {only_old}, only now {only_new}" if only_old or only_new else "other order"
            diffs.append(f"class names: {detail}")
    for key in COMPAT_FIELDS:
        a, b = _get_field(saved, key), _get_field(now, key)
        if a != b:
            diffs.append(f"{key}: checkpoint {_fmt(a)} vs now {_fmt(b)}")
    if diffs:
        raise CheckpointMismatchError(
            "the checkpoint was trained with a different model configuration:\n  - "
            + "\n  - ".join(diffs)
            + "\nLoad it with the configuration it was trained with (build_model_from_checkpoint reads it from the "
            "checkpoint), or train a new model for this configuration."
        )
    for prefix, source in (ckpt.get("frozen") or {}).get("sources", {}).items():
        current = _prefix_source(prefix, now)
        if current != source:
            logger.warning(
                "frozen %s* was trained on weights %r but the configuration now names %r: the results may differ",
                prefix,
                source,
                current,
            )


def load_model_state(
    model: nn.Module,
    ckpt: dict[str, Any],
    cfg: Config | None = None,
    class_names: Sequence[str] | None = None,
) -> None:
    """Load a checkpoint's weights into ``model`` after checking that they belong to it.

    Entries under the checkpoint's named-but-not-stored frozen prefixes keep the values ``model`` was built with.

    Args:
        model: the model (a DDP wrapper is unwrapped).
        ckpt: a dict from :func:`load_checkpoint`.
        cfg: the configuration ``model`` was built from; when given, :func:`check_compatibility` runs first.
        class_names: the model's class names (checked with ``cfg``).

    Raises:
        CheckpointMismatchError: a differing configuration, or missing, unexpected or differently shaped tensors.
    """
    model = unwrap_model(model)
    if cfg is not None:
        check_compatibility(ckpt, cfg, class_names)
    stored: dict[str, torch.Tensor] = ckpt["model"]
    named = tuple((ckpt.get("frozen") or {}).get("prefixes", []))
    diff = compare_state_dicts(model.state_dict(), stored, "checkpoint", optional_prefixes=named)
    if not diff.ok:
        raise CheckpointMismatchError(
            f"the checkpoint's weights do not fit this model: {diff.describe(limit=10)}. Build the model with the "
            "checkpoint's configuration (build_model_from_checkpoint)."
        )
    model.load_state_dict(stored, strict=False)


def restore_training_state(
    ckpt: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    cfg: Config | None = None,
    class_names: Sequence[str] | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Resume: load the model, optimiser, scheduler and RNG states of ``ckpt``.

    Returns:
        ``{"epoch": epochs completed, "step": optimiser steps, "extra": the saved extra dict}``.

    Raises:
        CheckpointMismatchError: see :func:`load_model_state`; also when the optimiser state is missing.
    """
    load_model_state(model, ckpt, cfg, class_names)
    if optimizer is not None:
        if ckpt.get("optimizer") is None:
            raise CheckpointMismatchError("the checkpoint holds no optimiser state: it cannot resume training")
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as e:
            raise CheckpointMismatchError(
                f"the checkpoint's optimiser state does not fit this optimiser ({e}); train.optimizer or the set of "
                "trainable parameters changed since it was written. Resume with the original configuration."
            ) from e
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if restore_rng and ckpt.get("rng"):
        set_rng_state(ckpt["rng"])
    return {"epoch": int(ckpt["epoch"]), "step": int(ckpt["step"]), "extra": ckpt.get("extra") or {}}


# ----------------------------------------------------------------------------------------- model building


def apply_overrides(cfg_dict: dict[str, Any], overrides: Sequence[str]) -> Config:
    """A validated Config from a saved config dict plus ``section.key=value`` overrides."""
    return load_config(None, list(overrides), base=cfg_dict)


def build_model_from_checkpoint(
    path: str | Path,
    device: torch.device | str = "cpu",
    overrides: Sequence[str] = (),
) -> tuple[nn.Module, Config, list[str]]:
    """Rebuild a trained model from a checkpoint, with the configuration stored in it (for test.py and the CLIs).

    Args:
        path: a checkpoint written by :func:`save_checkpoint`.
        device: where the model goes.
        overrides: ``section.key=value`` changes to the stored configuration (e.g. a moved backbone weights file,
            ``model.backbone.weights=/new/path.pth``); architecture changes fail with the differing fields.

    Returns:
        ``(model in eval mode on device, configuration, class names)``.
    """
    from models.build import build_model  # local: checkpoint I/O must not need the model code

    ckpt = load_checkpoint(path)
    cfg = apply_overrides(ckpt["config"], overrides)
    class_names = list(ckpt["class_names"])
    build_cfg = copy.deepcopy(cfg)
    named_roots = {p.split(".", 1)[0] for p in (ckpt.get("frozen") or {}).get("prefixes", [])}
    # modules stored in full need no pretrained file: build them randomly and overwrite them with the checkpoint
    if "backbone" not in named_roots:
        build_cfg.model.backbone.weights = ""
    if "text" not in named_roots:
        build_cfg.model.text.clip_weights = ""
    model = build_model(build_cfg, class_names)
    try:
        load_model_state(model, ckpt, cfg, class_names)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"{path}: {e}") from e
    model.to(device).eval()
    logger.info(
        "loaded %s (split %s, %d epochs, %d classes)", path, ckpt.get("split", ""), ckpt["epoch"], len(class_names)
    )
    return model, cfg, class_names
