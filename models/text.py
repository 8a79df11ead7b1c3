"""Text encoders for BiT-Align's text-guided head selection, text gating and contrastive loss.

BiT-Align (IROS 2025) encodes each affordance name with CLIP's text tower (Radford et al., ICML 2021), optionally
preceded by learnable context vectors (CoOp, Zhou et al., IJCV 2022), and projects it to the backbone width D with a
linear layer. The published code ran the tower under ``torch.no_grad()``, so its prompt vectors never received a
gradient; here the frozen tower runs with autograd enabled whenever prompts are learnable, so they do train. The
published arrangement (prompts ahead of the start token, frozen, read at the unshifted end-token index) is an option
for the reference configuration. Weight files are read and checked in :mod:`models.text_weights`.

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
from models.text_weights import (
    check_text_tower_fits,
    download_text_weights,
    load_text_tower_state_dict,
    resolve_quick_gelu,
)

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

# Options of the CLIP encoder that a config may pass whatever the kind; the other kinds ignore them.
_CLIP_OPTIONS = (
    "model_name",
    "weights",
    "prompt_tokens",
    "template",
    "text_cfg",
    "activation",
    "prompt_position",
    "train_prompts",
    "prompt_init_std",
    "end_token",
)
PROMPT_POSITIONS = ("after_start", "before_start")
END_TOKENS = ("shifted", "unshifted")


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


class OpenClipTextEncoder(TextEncoder):
    """CLIP's text tower (open_clip), frozen, with optional learnable prompt tokens and a learnable projection to D.

    BiT-Align (IROS 2025) uses it for text-guided head selection: features of the affordance names select the
    CLS-attention head whose masked ego features agree best with the text. With ``prompt_tokens = M > 0`` the input
    is ``[SOT] v_1 … v_M w_1 … w_L [EOT]`` (CoOp, Zhou et al., IJCV 2022), the v_m learnable and shared by all
    classes; the pooled EOT feature goes through CLIP's frozen ``text_projection`` and then our linear layer.

    BiT-Align's published code instead puts the prompts ahead of the start token (``v_1 … v_M [SOT] w_1 … [EOT]``),
    keeps them at their N(0, 1) initial values, and reads the feature at the end token's index in the text *without*
    the prompts, i.e. M places too early: under the causal mask that feature depends only on the prompts and the first
    words, so the 36 AGD20K names collapse to two features (names of one and of two BPE tokens). The options
    ``prompt_position="before_start"``, ``train_prompts=False``, ``prompt_init_std=1`` and ``end_token="unshifted"``
    reproduce it.

    Args:
        class_names: the split's affordance names, in label order.
        out_dim: output width D (the backbone width).
        model_name: open_clip model config whose text tower is built (e.g. "ViT-B-16"; OpenAI's BiT-Align tower is
            "ViT-B-32" with QuickGELU).
        weights: a local checkpoint path (full CLIP checkpoints are fine: only the text tensors are kept),
            "hub" / "hub:<tag>" (download open_clip's pretrained tag, "openai" by default; needs a network),
            or None for a random tower (tests, offline demos).
        prompt_tokens: number of context vectors M (0 disables them).
        template: format string applied to every phrase, e.g. "a photo of something to {}".
        text_cfg: overrides of the model's text config (e.g. a tiny tower for tests:
            {"width": 32, "layers": 2, "heads": 2, "context_length": 16}).
        activation: "auto" (from the weights' origin, see :func:`models.text_weights.resolve_quick_gelu`),
            "quick_gelu" or "gelu"; a choice that contradicts the weights raises a ValueError.
        prompt_position: "after_start" (CoOp) or "before_start" (BiT-Align's code).
        train_prompts: whether the context vectors train; False keeps them at their initial values (still saved).
        prompt_init_std: standard deviation of their random initial values (CoOp 0.02, BiT-Align 1).
        end_token: "shifted" reads the end token where the prompts moved it; "unshifted" reads its index in the
            text without the prompts (BiT-Align's code).
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
        activation: str = "auto",
        prompt_position: str = "after_start",
        train_prompts: bool = True,
        prompt_init_std: float = 0.02,
        end_token: str = "shifted",
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
        if prompt_position not in PROMPT_POSITIONS or end_token not in END_TOKENS:
            raise ValueError(
                f"OpenClipTextEncoder: prompt_position must be one of {PROMPT_POSITIONS} and end_token one of "
                f"{END_TOKENS}, got {prompt_position!r} and {end_token!r}"
            )
        tcfg = {**cfg["text_cfg"], **(text_cfg or {})}
        if tcfg.get("hf_model_name") or tcfg.get("embed_cls"):
            raise ValueError(
                f"OpenClipTextEncoder: model {model_name!r} has a HuggingFace or CoCa text tower, which is not "
                "supported; use a CLIP model such as 'ViT-B-16'"
            )

        state_dict, weights_quick_gelu = None, None
        if weights is not None:
            path: str | Path = weights
            if weights == "hub" or weights.startswith("hub:"):
                path, weights_quick_gelu = download_text_weights(model_name, weights.partition(":")[2] or "openai")
            state_dict, from_openai = load_text_tower_state_dict(path)
            if from_openai:
                weights_quick_gelu = True
        quick_gelu = resolve_quick_gelu(
            activation, model_name, bool(cfg.get("quick_gelu", False)), weights_quick_gelu, weights
        )

        self.template = template
        self.model_name = model_name
        self.quick_gelu = quick_gelu
        self.tower = _build_text_tower(cfg["embed_dim"], tcfg, quick_gelu=quick_gelu)
        if state_dict is not None:
            check_text_tower_fits(self.tower.state_dict(), state_dict, model_name, str(weights))
            self.tower.load_state_dict(state_dict, strict=True)
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
        self.prompt_position = prompt_position
        self.end_token = end_token
        width = self.tower.width
        self.prompt = None
        if prompt_tokens > 0:
            self.prompt = nn.Parameter(torch.randn(prompt_tokens, width) * prompt_init_std, requires_grad=train_prompts)
        feat_dim = self.tower.output_dim if self.tower.text_projection is not None else width
        self.proj = nn.Linear(feat_dim, out_dim)

        self._cache_key: tuple | None = None
        self._cache: torch.Tensor | None = None
        n_frozen = sum(p.numel() for p in self.tower.parameters())
        n_learn = sum(p.numel() for p in self.parameters() if p.requires_grad)
        logger.info(
            "OpenClipTextEncoder %s (width %d, %d layers, %s, weights=%s): %.1fM frozen, %d learnable parameters",
            model_name,
            width,
            self.tower.transformer.layers,
            "QuickGELU" if quick_gelu else "GELU",
            weights,
            n_frozen / 1e6,
            n_learn,
        )

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
            if self.prompt_position == "after_start":
                x = torch.cat([x[:, :1], ctx, x[:, 1:]], dim=1)  # (P, L, W): SOT, context, words, EOT, padding
            else:
                x = torch.cat([ctx, x], dim=1)  # (P, L, W): context, SOT, words, EOT, padding
        x = x + tower.positional_embedding[: x.shape[1]].to(cast_dtype)
        x = tower.transformer(x, attn_mask=tower.attn_mask)  # (P, L, W)
        x = tower.ln_final(x)
        rows = torch.arange(x.shape[0], device=device)
        # The context vectors sit before the words, so the EOT token moved M places to the right; the unshifted
        # reading (BiT-Align's code) takes the index of EOT in the prompt-free text instead.
        if self.end_token == "unshifted":
            m = 0
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

    def _prompts_learn(self) -> bool:
        return self.prompt is not None and self.prompt.requires_grad and torch.is_grad_enabled()

    def _tower_features(self, phrases: list[str]) -> torch.Tensor:
        # Gradients through the frozen tower are only needed to reach learnable prompt vectors.
        if self._prompts_learn():
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
        if self._prompts_learn():
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
            activation, prompt_position, train_prompts, prompt_init_std, end_token); "none" and "learned" ignore
            them.

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
