"""Text encoders for BiT-Align's text-guided head selection, text gating and contrastive loss.

BiT-Align (IROS 2025) encodes each affordance name with CLIP's text tower (Radford et al., ICML 2021), optionally
preceded by learnable context vectors (CoOp, Zhou et al., IJCV 2022), and projects it to the backbone width D with a
linear layer. The published code ran the tower under ``torch.no_grad()``, so its prompt vectors never received a
gradient; here the frozen tower runs with autograd enabled whenever prompts are learnable, so they do train.

Two encoders share one interface (:class:`TextEncoder`): :class:`OpenClipTextEncoder` (open_clip's text tower only,
frozen, weights from a local file, the hub or random) and :class:`LearnedTextEncoder` (one learned vector per class,
the offline fallback, which only knows the class names). :func:`build_text_encoder` maps a config string to one.
"""

from __future__ import annotations

import difflib
import functools
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from models.affordances import phrase_key

__all__ = [
    "TEXT_ENCODER_KINDS",
    "LearnedTextEncoder",
    "OpenClipTextEncoder",
    "TextEncoder",
    "build_text_encoder",
    "load_text_tower_state_dict",
    "phrase_key",
]

logger = logging.getLogger(__name__)

TEXT_ENCODER_KINDS = ("none", "clip", "learned")

# Top-level state-dict names of open_clip's TextTransformer (and of the text half of a CLIP checkpoint).
_TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
# Options of the CLIP encoder that a config may pass whatever the kind; the other kinds ignore them.
_CLIP_OPTIONS = ("model_name", "weights", "prompt_tokens", "template", "text_cfg", "quick_gelu")


def _check_phrases(phrases: Any, who: str) -> list[str]:
    if isinstance(phrases, str) or not isinstance(phrases, (list, tuple)):
        raise TypeError(f"{who}: expected a list of phrases (list[str]), got {type(phrases).__name__}; wrap one in [ ]")
    if len(phrases) == 0:
        raise ValueError(f"{who}: expected at least one phrase, got an empty list")
    bad = [p for p in phrases if not isinstance(p, str)]
    if bad:
        raise TypeError(f"{who}: every phrase must be a str, got {[type(p).__name__ for p in bad][:5]}")
    return list(phrases)


class TextEncoder(nn.Module):
    """Base class: maps phrases (affordance names or free text) to (P, D) features.

    Subclasses implement :meth:`forward`; :meth:`class_features` encodes the class names (with '_' read as a space)
    and may cache what does not learn.

    Attributes:
        class_names: the split's affordance names, in label order.
        dim: output width D.
    """

    def __init__(self, class_names: list[str], out_dim: int) -> None:
        super().__init__()
        if isinstance(class_names, str) or not class_names or not all(isinstance(c, str) for c in class_names):
            raise ValueError(f"{type(self).__name__}: expected a non-empty list of class names, got {class_names!r}")
        if out_dim < 1:
            raise ValueError(f"{type(self).__name__}: expected out_dim >= 1, got {out_dim}")
        self.class_names = list(class_names)
        self.dim = int(out_dim)

    def class_phrases(self) -> list[str]:
        """The class names as text: affordance names with '_' replaced by a space ("cut_with" -> "cut with")."""
        return [c.replace("_", " ") for c in self.class_names]

    def forward(self, phrases: list[str]) -> torch.Tensor:
        """Encode phrases.

        Args:
            phrases: P strings.

        Returns:
            (P, D) features.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forward(phrases)")

    def class_features(self) -> torch.Tensor:
        """(C, D) features of the class names, in label order."""
        return self(self.class_phrases())

    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes (relative to this module) of frozen pretrained parts that checkpoints need not store."""
        return ()


class LearnedTextEncoder(TextEncoder):
    """One learned D-dimensional vector per class: the offline stand-in for a text tower.

    It only knows the class names: phrases are matched case-, underscore- and space-insensitively ("Cut With",
    "cut_with" and "cut  with" are one class); anything else raises a ValueError that names the closest class.
    """

    def __init__(self, class_names: list[str], out_dim: int) -> None:
        super().__init__(class_names, out_dim)
        self._index: dict[str, int] = {}
        for i, name in enumerate(self.class_names):
            key = phrase_key(name)
            if key in self._index:
                raise ValueError(
                    f"LearnedTextEncoder: class names {self.class_names[self._index[key]]!r} and {name!r} are the same "
                    "once case, '_' and spaces are ignored; give distinct class names"
                )
            self._index[key] = i
        self.embedding = nn.Embedding(len(self.class_names), out_dim)
        # Unit expected norm, so the cosine/gating scales start in the same range as with CLIP features.
        nn.init.normal_(self.embedding.weight, std=out_dim**-0.5)

    def indices(self, phrases: list[str]) -> torch.Tensor:
        """Class indices (P,) long of the phrases; ValueError for a phrase that is not a class name."""
        phrases = _check_phrases(phrases, "LearnedTextEncoder")
        out = []
        for p in phrases:
            idx = self._index.get(phrase_key(p))
            if idx is None:
                close = difflib.get_close_matches(phrase_key(p), list(self._index), n=1, cutoff=0.0)
                hint = f" Closest class name: {self.class_names[self._index[close[0]]]!r}." if close else ""
                raise ValueError(
                    f"LearnedTextEncoder: unknown phrase {p!r}; this encoder only knows its {len(self.class_names)} "
                    f"class names {self.class_names}.{hint} Use a class name, or text.kind=clip for free-form phrases."
                )
            out.append(idx)
        return torch.tensor(out, dtype=torch.long, device=self.embedding.weight.device)

    def forward(self, phrases: list[str]) -> torch.Tensor:
        """(P, D) learned vectors of the phrases' classes."""
        return self.embedding(self.indices(phrases))

    def class_features(self) -> torch.Tensor:
        """(C, D) all learned vectors (they learn, so nothing is cached)."""
        return self.embedding.weight


@functools.lru_cache(maxsize=1)
def _clip_tokenizer() -> Any:
    """open_clip's BPE tokenizer; its vocabulary ships inside the package, so this works offline."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


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
    if not any(k.startswith(_TEXT_PREFIXES) for k in sd) and any(k.startswith("text.") for k in sd):
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
        The text tensors (keys as in open_clip's ``TextTransformer``) and whether the file was an OpenAI TorchScript
        archive (those weights were trained with QuickGELU).
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
    text = {k: v for k, v in sd.items() if k.startswith(_TEXT_PREFIXES)}
    logger.info("text weights %s: kept %d text tensors, dropped %d others", path, len(text), len(sd) - len(text))
    return text, is_jit


class OpenClipTextEncoder(TextEncoder):
    """CLIP's text tower (open_clip), frozen, with optional learnable prompt tokens and a learnable projection to D.

    BiT-Align (IROS 2025) uses it for text-guided head selection: features of the affordance names select the
    CLS-attention head whose masked ego features agree best with the text. With ``prompt_tokens = M > 0`` the input
    is ``[SOT] v_1 … v_M w_1 … w_L [EOT]`` (CoOp, Zhou et al., IJCV 2022), the v_m learnable and shared by all
    classes; the pooled EOT feature goes through CLIP's frozen ``text_projection`` and then our linear layer.

    Args:
        class_names: the split's affordance names, in label order.
        out_dim: output width D (the backbone width).
        model_name: open_clip model config whose text tower is built (e.g. "ViT-B-16").
        weights: a local checkpoint path (full CLIP checkpoints are fine: only the text tensors are kept),
            "hub" / "hub:<tag>" (download open_clip's pretrained tag, "openai" by default; needs a network),
            or None for a random tower (tests, offline demos).
        prompt_tokens: number of learnable context vectors inserted after SOT (0 disables them).
        template: format string applied to every phrase, e.g. "a photo of something to {}".
        text_cfg: overrides of the model's text config (e.g. a tiny tower for tests:
            {"width": 32, "layers": 2, "heads": 2, "context_length": 16}).
        quick_gelu: the tower's activation; None picks QuickGELU when the model config, the hub tag or an OpenAI
            TorchScript checkpoint says so (OpenAI's weights were trained with it), else GELU.
    """

    def __init__(
        self,
        class_names: list[str],
        out_dim: int,
        model_name: str = "ViT-B-16",
        weights: str | None = None,
        prompt_tokens: int = 0,
        template: str = "{}",
        text_cfg: dict | None = None,
        quick_gelu: bool | None = None,
    ) -> None:
        super().__init__(class_names, out_dim)
        import open_clip
        from open_clip.model import _build_text_tower  # the text tower alone, without building the vision tower

        cfg = open_clip.get_model_config(model_name)
        if cfg is None or "text_cfg" not in cfg:
            close = difflib.get_close_matches(model_name, open_clip.list_models(), n=5)
            raise ValueError(f"OpenClipTextEncoder: unknown open_clip model {model_name!r}; close names: {close}")
        if "{}" not in template:
            raise ValueError(f"OpenClipTextEncoder: template must contain '{{}}' for the phrase, got {template!r}")
        if prompt_tokens < 0:
            raise ValueError(f"OpenClipTextEncoder: expected prompt_tokens >= 0, got {prompt_tokens}")
        tcfg = {**cfg["text_cfg"], **(text_cfg or {})}
        if tcfg.get("hf_model_name") or tcfg.get("embed_cls"):
            raise ValueError(
                f"OpenClipTextEncoder: model {model_name!r} has a HuggingFace or CoCa text tower, which is not "
                "supported; use a CLIP model such as 'ViT-B-16'"
            )

        state_dict, hub_quick_gelu, is_jit = None, False, False
        if weights is not None:
            path: str | Path = weights
            if weights == "hub" or weights.startswith("hub:"):
                path, hub_quick_gelu = self._download(model_name, weights.partition(":")[2] or "openai")
            state_dict, is_jit = load_text_tower_state_dict(path)
        if quick_gelu is None:
            quick_gelu = bool(cfg.get("quick_gelu", False) or hub_quick_gelu or is_jit)

        self.template = template
        self.model_name = model_name
        self.tower = _build_text_tower(cfg["embed_dim"], tcfg, quick_gelu=quick_gelu)
        if state_dict is not None:
            self._load_tower(state_dict, str(weights))
        self.tower.requires_grad_(False)
        self.tower.eval()

        if self.tokenizer.vocab_size > self.tower.vocab_size:
            raise ValueError(
                f"OpenClipTextEncoder: the tokenizer has {self.tokenizer.vocab_size} tokens but the tower's "
                f"vocab_size is {self.tower.vocab_size}; keep text_cfg.vocab_size at the CLIP default (49408)"
            )
        self.context_length = int(self.tower.context_length)
        if prompt_tokens > self.context_length - 3:
            raise ValueError(
                f"OpenClipTextEncoder: prompt_tokens={prompt_tokens} leaves no room for words in a context of "
                f"{self.context_length} tokens; use at most {self.context_length - 3}"
            )
        self.prompt_tokens = int(prompt_tokens)
        width = self.tower.width
        # CoOp initialises the context vectors like word embeddings (std 0.02).
        self.prompt = nn.Parameter(torch.randn(prompt_tokens, width) * 0.02) if prompt_tokens > 0 else None
        feat_dim = self.tower.output_dim if self.tower.text_projection is not None else width
        self.proj = nn.Linear(feat_dim, out_dim)

        self._cache_key: tuple | None = None
        self._cache: torch.Tensor | None = None
        n_frozen = sum(p.numel() for p in self.tower.parameters())
        n_learn = sum(p.numel() for p in self.parameters() if p.requires_grad)
        logger.info(
            "OpenClipTextEncoder %s (width %d, %d layers, weights=%s): %.1fM frozen, %d learnable parameters",
            model_name,
            width,
            self.tower.transformer.layers,
            weights,
            n_frozen / 1e6,
            n_learn,
        )

    @staticmethod
    def _download(model_name: str, tag: str) -> tuple[str, bool]:
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

    def _load_tower(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        expected = self.tower.state_dict()
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        wrong_shape = [
            f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
            for k, v in state_dict.items()
            if k in expected and v.shape != expected[k].shape
        ]
        if missing or unexpected or wrong_shape:

            def show(keys: list[str]) -> str:
                return f"{keys[:8]}{' ...' if len(keys) > 8 else ''} ({len(keys)})"

            raise ValueError(
                f"OpenClipTextEncoder: the text weights in {source} do not fit the {self.model_name!r} text tower: "
                f"missing keys {show(missing)}, unexpected keys {show(unexpected)}, shape mismatches "
                f"{show(wrong_shape)}. Check model_name / text_cfg against the checkpoint."
            )
        self.tower.load_state_dict(state_dict, strict=True)

    @property
    def tokenizer(self) -> Any:
        """open_clip's SimpleTokenizer (shared, not an attribute, so that the module stays deep-copyable)."""
        return _clip_tokenizer()

    def frozen_prefixes(self) -> tuple[str, ...]:
        """The frozen CLIP tower: ("tower.",)."""
        return ("tower.",)

    def train(self, mode: bool = True) -> OpenClipTextEncoder:
        """Set training mode; the frozen tower always stays in eval mode."""
        super().train(mode)
        self.tower.eval()
        return self

    def tokenize(self, phrases: list[str]) -> torch.Tensor:
        """(P, context_length - prompt_tokens) token ids of the templated phrases ('_' read as a space)."""
        texts = [self.template.format(p.replace("_", " ")) for p in phrases]
        return self.tokenizer(texts, context_length=self.context_length - self.prompt_tokens)

    def _encode_tower(self, phrases: list[str]) -> torch.Tensor:
        """(P, E) pooled, CLIP-projected features of the phrases (before our projection)."""
        tower = self.tower
        device = tower.positional_embedding.device
        tokens = self.tokenize(phrases).to(device)  # (P, L - M)
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(tokens).to(cast_dtype)  # (P, L - M, W)
        m = self.prompt_tokens
        if self.prompt is not None:
            ctx = self.prompt.to(cast_dtype).unsqueeze(0).expand(x.shape[0], -1, -1)  # (P, M, W)
            x = torch.cat([x[:, :1], ctx, x[:, 1:]], dim=1)  # (P, L, W): SOT, context, words, EOT, padding
        x = x + tower.positional_embedding[: x.shape[1]].to(cast_dtype)
        x = tower.transformer(x, attn_mask=tower.attn_mask)  # (P, L, W)
        x = tower.ln_final(x)
        rows = torch.arange(x.shape[0], device=device)
        # The context vectors sit between SOT and the words, so the EOT token moved M places to the right.
        if tower.pool_type == "argmax":  # EOT has the largest id
            pooled = x[rows, tokens.argmax(dim=-1) + m]
        elif tower.pool_type == "eos":
            pooled = x[rows, (tokens == tower.eos_id).int().argmax(dim=-1) + m]
        elif tower.pool_type == "first":
            pooled = x[:, 0]
        elif tower.pool_type == "last":
            pooled = x[:, -1]
        else:
            raise ValueError(f"OpenClipTextEncoder: unsupported text pool_type {tower.pool_type!r}")
        proj = tower.text_projection
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        return pooled.float()  # (P, E)

    def _tower_features(self, phrases: list[str]) -> torch.Tensor:
        # Gradients through the frozen tower are only needed to reach learnable prompt vectors.
        if self.prompt is not None and torch.is_grad_enabled():
            return self._encode_tower(phrases)
        with torch.no_grad():
            return self._encode_tower(phrases)

    def forward(self, phrases: list[str]) -> torch.Tensor:
        """Encode phrases (affordance names or free text) to (P, D) features."""
        phrases = _check_phrases(phrases, "OpenClipTextEncoder")
        feats = self._tower_features(phrases)  # (P, E)
        return self.proj(feats.to(self.proj.weight.dtype))

    def _state_key(self) -> tuple:
        """Changes whenever anything that shapes the tower features could have changed (params, device, mode)."""
        params = list(self.tower.parameters()) + ([self.prompt] if self.prompt is not None else [])
        return (self.training, tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params))

    def class_features(self) -> torch.Tensor:
        """(C, D) features of the class names.

        The tower part is cached when it cannot learn (no prompt vectors, or autograd disabled) and recomputed when a
        tower/prompt parameter, the device, the dtype or the training mode changes; the learnable projection is
        applied on every call so that it always receives its gradient.
        """
        if self.prompt is not None and torch.is_grad_enabled():
            feats = self._encode_tower(self.class_phrases())
        else:
            key = self._state_key()
            if self._cache is None or key != self._cache_key:
                self._cache = self._tower_features(self.class_phrases()).detach()
                self._cache_key = key
            feats = self._cache
        return self.proj(feats.to(self.proj.weight.dtype))


def build_text_encoder(kind: str, class_names: list[str], out_dim: int, **kw: Any) -> TextEncoder | None:
    """Build the text encoder named by ``kind``.

    Args:
        kind: "none" (no text encoder, LOCATE), "clip" (:class:`OpenClipTextEncoder`) or "learned"
            (:class:`LearnedTextEncoder`, offline fallback).
        class_names: the split's affordance names, in label order.
        out_dim: output width D.
        **kw: options of :class:`OpenClipTextEncoder` (model_name, weights, prompt_tokens, template, text_cfg,
            quick_gelu); "none" and "learned" ignore them.

    Returns:
        The encoder, or None for "none".
    """
    key = str(kind).lower()
    if key not in TEXT_ENCODER_KINDS:
        raise ValueError(f"build_text_encoder: unknown kind {kind!r}; valid kinds: {list(TEXT_ENCODER_KINDS)}")
    unknown = sorted(set(kw) - set(_CLIP_OPTIONS))
    if unknown:
        raise TypeError(f"build_text_encoder: unknown options {unknown}; valid options: {list(_CLIP_OPTIONS)}")
    if key == "clip":
        return OpenClipTextEncoder(class_names, out_dim, **kw)
    if kw:
        logger.debug("build_text_encoder: kind %r ignores %s", key, sorted(kw))
    if key == "learned":
        return LearnedTextEncoder(class_names, out_dim)
    return None
