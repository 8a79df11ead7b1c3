"""CLIP text-tower weight files: reading them, telling where they come from, and checking that they fit.

OpenAI trained CLIP with QuickGELU (x · σ(1.702 x)); open_clip's own models mostly use GELU. The two names and shapes
are identical, so a tower built with the wrong activation loads the weights without complaint and computes other
features. The activation is therefore resolved from the weights' origin (:func:`resolve_quick_gelu`):

- OpenAI's release is a TorchScript archive; a state dict read out of one (``torch.jit.load(p).state_dict()``) keeps
  three entries no other CLIP checkpoint has: ``input_resolution``, ``context_length`` and ``vocab_size``. Both forms
  are recognised as OpenAI's (:func:`load_text_tower_state_dict`).
- open_clip's hub tags say which activation their weights need (the ``openai`` tag: QuickGELU).
- A model config named ``*-quickgelu`` asks for QuickGELU.

A plain ``torch.save`` of a rebuilt OpenAI model (``clip.load(..., jit=False)[0].state_dict()``) carries no mark of
its origin; it then follows the model config, and a warning says so and how to choose explicitly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "OPENAI_MARKERS",
    "TEXT_PREFIXES",
    "check_text_tower_fits",
    "describe_text_tower",
    "download_text_weights",
    "load_text_tower_state_dict",
    "resolve_quick_gelu",
]

logger = logging.getLogger(__name__)

# Top-level state-dict names of open_clip's TextTransformer (and of the text half of a CLIP checkpoint).
TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
# Entries that OpenAI's TorchScript archives hold besides the weights (open_clip drops them when it reads one).
OPENAI_MARKERS = ("input_resolution", "context_length", "vocab_size")


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: unwraps {"state_dict"|"model"|"module": ...} and "module." prefixes."""
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in ("state_dict", "model", "module") if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"load_text_tower_state_dict: {path} does not hold a state dict (a dict of tensors, possibly under "
            f"'state_dict' or 'model'); found {type(obj).__name__}. Pass a CLIP / open_clip checkpoint file."
        )
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    # CustomTextCLIP checkpoints keep the whole text tower under "text.".
    if not any(k.startswith(TEXT_PREFIXES) for k in sd) and any(k.startswith("text.") for k in sd):
        sd = {k[len("text.") :]: v for k, v in sd.items() if k.startswith("text.")}
    return sd


def load_text_tower_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """Read a CLIP / open_clip checkpoint and keep only the text tower's tensors.

    Accepts ``.safetensors``, a plain ``torch.save`` state dict (loaded with ``weights_only=True``, so no pickled code
    runs), possibly nested under ``state_dict``/``model`` or prefixed ``module.``, and OpenAI's TorchScript ``.pt``
    archives (read with ``torch.jit.load``, which restores tensors and TorchScript code without running it).

    Args:
        path: checkpoint file.

    Returns:
        The text tensors (keys as in open_clip's ``TextTransformer``) and whether the file is recognisably OpenAI's
        (a TorchScript archive, or a state dict holding the archive's :data:`OPENAI_MARKERS`): those weights were
        trained with QuickGELU.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"OpenClipTextEncoder: text weights file {path} does not exist; pass the path of a CLIP checkpoint "
            "(e.g. OpenAI's ViT-B-16.pt or an open_clip .bin/.safetensors), weights='hub' to download, or None"
        )
    is_jit = False
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Any = load_file(str(path))
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # OpenAI's checkpoints are TorchScript archives, which torch.load refuses here.
            try:
                obj = torch.jit.load(str(path), map_location="cpu").state_dict()
                is_jit = True
            except Exception:
                raise ValueError(
                    f"load_text_tower_state_dict: could not read {path} as a state dict ({err}) nor as a TorchScript "
                    "archive; pass a CLIP checkpoint saved with torch.save, safetensors or OpenAI's .pt"
                ) from err
    sd = _unwrap_state_dict(obj, path)
    from_openai = is_jit or all(k in sd for k in OPENAI_MARKERS)
    text = {k: v for k, v in sd.items() if k.startswith(TEXT_PREFIXES)}
    logger.info(
        "text weights %s%s: kept %d text tensors, dropped %d others",
        path,
        " (OpenAI's)" if from_openai else "",
        len(text),
        len(sd) - len(text),
    )
    return text, from_openai


def describe_text_tower(state_dict: dict[str, torch.Tensor]) -> dict[str, int | None]:
    """The architecture a CLIP text-tower state dict implies: width, layers, vocab_size, context_length, output_dim.

    Entries that are missing come out as None.
    """
    layers = {int(k.split(".")[2]) for k in state_dict if k.startswith("transformer.resblocks.")}
    tok = state_dict.get("token_embedding.weight")
    pos = state_dict.get("positional_embedding")
    proj = state_dict.get("text_projection")
    if isinstance(proj, torch.Tensor) and proj.dim() == 2:
        out_dim = int(proj.shape[1])
    elif "text_projection.weight" in state_dict:
        out_dim = int(state_dict["text_projection.weight"].shape[0])
    else:
        out_dim = None
    return {
        "width": int(tok.shape[1]) if tok is not None else None,
        "layers": max(layers) + 1 if layers else None,
        "vocab_size": int(tok.shape[0]) if tok is not None else None,
        "context_length": int(pos.shape[0]) if pos is not None else None,
        "output_dim": out_dim,
    }


def resolve_quick_gelu(
    activation: str,
    model_name: str,
    config_quick_gelu: bool,
    weights_quick_gelu: bool | None,
    source: str | None,
) -> bool:
    """Whether the text tower uses QuickGELU, from the requested activation and what the weights and config say.

    Args:
        activation: ``"auto"``, ``"quick_gelu"`` or ``"gelu"``.
        model_name: the open_clip model config's name (for messages).
        config_quick_gelu: the model config asks for QuickGELU (``*-quickgelu`` names).
        weights_quick_gelu: the weights' origin says which activation they were trained with (True: OpenAI's; False:
            an open_clip hub tag with GELU), or None when the origin is unknown or there are no weights.
        source: the weights (for messages), or None for a random tower.

    Returns:
        True for QuickGELU.

    Raises:
        ValueError: an unknown activation, or an explicit choice that contradicts the weights' origin or the config.
    """
    if activation not in ("auto", "quick_gelu", "gelu"):
        raise ValueError(f"text activation must be 'auto', 'quick_gelu' or 'gelu', got {activation!r}")
    if weights_quick_gelu is not None and config_quick_gelu and not weights_quick_gelu:
        raise ValueError(
            f"OpenClipTextEncoder: model {model_name!r} uses QuickGELU but the weights {source} were trained with "
            f"GELU; use the model name without '-quickgelu'"
        )
    if activation == "auto":
        if weights_quick_gelu is not None:
            return weights_quick_gelu
        if source is not None and not config_quick_gelu:
            logger.warning(
                "text weights %s do not say where they come from; the %r tower uses GELU as its config says. For "
                "OpenAI's CLIP weights set model.text.activation=quick_gelu (or use the '-quickgelu' model name).",
                source,
                model_name,
            )
        return config_quick_gelu
    wanted = activation == "quick_gelu"
    expected = weights_quick_gelu if weights_quick_gelu is not None else (True if config_quick_gelu else None)
    if expected is not None and expected != wanted:
        why = f"the weights {source} were trained with" if weights_quick_gelu is not None else f"{model_name!r} uses"
        right = "quick_gelu" if expected else "gelu"
        raise ValueError(
            f"OpenClipTextEncoder: activation={activation!r} contradicts the text tower: {why} "
            f"{'QuickGELU' if expected else 'GELU'}. Set model.text.activation to {right!r} or 'auto'."
        )
    return wanted


def download_text_weights(model_name: str, tag: str) -> tuple[str, bool]:
    """Download open_clip's pretrained ``tag`` of ``model_name``: (local path, whether those weights need QuickGELU)."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg, list_pretrained_tags_by_model

    pcfg = get_pretrained_cfg(model_name, tag)
    if not pcfg:
        raise ValueError(
            f"OpenClipTextEncoder: open_clip has no pretrained tag {tag!r} for {model_name!r}; valid tags: "
            f"{list_pretrained_tags_by_model(model_name)}"
        )
    try:
        path = download_pretrained(pcfg)
    except Exception as err:
        raise RuntimeError(
            f"OpenClipTextEncoder: could not download {model_name}/{tag} ({err}). Without a network, download the "
            "checkpoint elsewhere and pass its path as weights, or use weights=None / text.kind=learned"
        ) from err
    if not path:
        raise RuntimeError(f"OpenClipTextEncoder: open_clip returned no file for {model_name}/{tag}")
    return str(path), bool(pcfg.get("quick_gelu", False))


def check_text_tower_fits(
    expected: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor], model_name: str, source: str
) -> None:
    """Raise a ValueError naming both architectures and every missing, unexpected and mis-shaped key, if any.

    Args:
        expected: the built tower's state dict.
        state_dict: the weights read from ``source``.
        model_name: the open_clip model config's name.
        source: the weight file (for the message).
    """
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if not (missing or unexpected or wrong_shape):
        return

    def show(keys: list[str]) -> str:
        return f"{keys[:8]}{' ...' if len(keys) > 8 else ''} ({len(keys)})"

    def arch(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items() if v is not None)

    raise ValueError(
        f"OpenClipTextEncoder: the text weights in {source} do not fit the {model_name!r} text tower: the file holds "
        f"({arch(describe_text_tower(state_dict))}), the model is ({arch(describe_text_tower(expected))}); missing "
        f"keys {show(missing)}, unexpected keys {show(unexpected)}, shape mismatches {show(wrong_shape)}. Pick the "
        "model_name (or text_cfg) of the checkpoint, e.g. ViT-B-32 for OpenAI's ViT-B/32."
    )
