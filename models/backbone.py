"""The frozen DINO ViT from timm that hands out patch descriptors and the last block's CLS attention.

LOCATE (Li et al., CVPR 2023) describes each patch by the *key* of the last self-attention block and reads the
object saliency off the CLS query's attention in that block; BiT-Align (IROS 2025) uses the final normed patch
tokens of a DINOv2 ViT instead. Both come out of one pass here: every block but the last runs timm's own (fused)
attention, untouched; the last block's normed input gives the keys and the single CLS query, whose attention row
softmax(q_cls · kᵀ · scale) costs one (T × d) product per head instead of the (T × T) attention of every block.
With key descriptors nothing after that runs.

Prefix tokens (CLS and registers) are stripped with ``num_prefix_tokens``, and the patch grid is read from the
input and the patch size, so DINO ViT-S/16, ViT-B/8 and DINOv2 (with or without registers) at any input that is a
multiple of the patch size all work. Weight files (official DINO/DINOv2 or timm) are read with ``weights_only``.

Two BiT-Align parts live in the token loop: the position embedding can be resized the way DINOv2 does it
(:mod:`models.pos_embed`), and a depth prompt (:mod:`models.depth`) can be mixed into the tokens before every block.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import timm
import torch
from einops import einsum, rearrange
from torch import nn

from models.depth import DepthPrompt
from models.outputs import Features
from models.pos_embed import POS_EMBED_RESIZE, resize_pos_embed_dinov2
from models.state_dict import compare_state_dicts

__all__ = [
    "DESCRIPTORS",
    "ViTBackbone",
    "clean_vit_state_dict",
    "load_vit_weights",
    "read_state_dict",
]

logger = logging.getLogger(__name__)

DESCRIPTORS = ("key", "token")
# Containers that training scripts wrap a state dict in (timm/DeiT: "model", Lightning: "state_dict", DINO: "teacher").
_WRAPPER_KEYS = ("state_dict", "model", "teacher")
# Prefixes left by DistributedDataParallel, DINO's MultiCropWrapper and torch.compile.
_STRIP_PREFIXES = ("module.", "backbone.", "_orig_mod.")


# ------------------------------------------------------------------------------------------ weight files


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.pth``/``.pt``/``.bin`` (safe ``torch.load``) or a ``.safetensors`` file.

    Wrappers such as ``{"model": ...}``, ``{"state_dict": ...}`` or DINO's ``{"teacher": ...}`` are unwrapped.

    Args:
        path: the weight file.

    Returns:
        A flat mapping from parameter names to tensors (names not yet cleaned of prefixes).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file holds something other than tensors (e.g. a full DINO training checkpoint with
            pickled arguments, which ``weights_only`` loading refuses).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights not found: {path}. Pass an existing .pth/.safetensors file, 'hub' to download "
            "through timm, or nothing for random weights."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Any = load_file(str(path), device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"{path} holds more than tensors (weights_only loading refused it: {e}). For a full DINO training "
                "checkpoint, save only its weights first, e.g. torch.save(torch.load(p, weights_only=False)"
                "['teacher'], 'teacher.pth') on a file you trust."
            ) from e
    return _unwrap(obj, path)


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, dict) and not _is_tensor_dict(obj):
        key = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            raise ValueError(
                f"{path}: expected a state dict (names -> tensors), possibly under one of {list(_WRAPPER_KEYS)}; "
                f"found a dict with keys {sorted(map(str, obj))[:10]}"
            )
        obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def _is_tensor_dict(d: dict) -> bool:
    return len(d) > 0 and all(isinstance(v, torch.Tensor) for v in d.values())


def clean_vit_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes, drop a projection head the model does not have, convert to timm's layout.

    Args:
        state_dict: weights as read from a file (official DINO/DINOv2 names or timm names).
        model: the timm VisionTransformer the weights are meant for.

    Returns:
        A state dict in the model's naming, with the position embedding resampled to the model's grid.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _STRIP_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    model_keys = set(model.state_dict())
    head = [k for k in out if k.startswith("head.") and k not in model_keys]
    if head:  # DINO's teacher carries its projection head (DINOHead); the backbone has none (num_classes=0)
        logger.info("ignoring %d projection-head entries (e.g. %s) absent from the backbone", len(head), head[0])
        out = {k: v for k, v in out.items() if k not in set(head)}
    # timm's filter resamples a patch embedding of another size without asking; a different patch size is a
    # different model, so refuse it here instead.
    pe_key = "patch_embed.proj.weight"
    if pe_key in out and out[pe_key].dim() == 4 and out[pe_key].shape != model.state_dict()[pe_key].shape:
        raise ValueError(
            f"backbone weights have {pe_key} of shape {tuple(out[pe_key].shape)} but the model expects "
            f"{tuple(model.state_dict()[pe_key].shape)}: the file is for another patch size or width; pick the "
            "matching model.backbone.name"
        )
    return checkpoint_filter_fn(out, model)


def load_vit_weights(model: nn.Module, path: str | Path) -> None:
    """Load a weight file into a timm ViT, failing with every missing, unexpected and mis-shaped key.

    Args:
        model: the timm VisionTransformer.
        path: an official DINO/DINOv2 ``.pth``, or a timm ``.pth``/``.safetensors`` file.

    Raises:
        ValueError: the file does not fit the model (the message lists what differs).
    """
    state = clean_vit_state_dict(read_state_dict(path), model)
    diff = compare_state_dicts(model.state_dict(), state)
    if not diff.ok:
        raise ValueError(
            f"backbone weights {path} do not fit {type(model).__name__}: {diff.describe()}. Check that "
            "model.backbone.name matches the file (e.g. vit_small_patch16_224.dino for dino_deitsmall16_pretrain.pth)."
        )
    model.load_state_dict(state, strict=True)
    logger.info("loaded backbone weights from %s (%d tensors)", path, len(state))


# ----------------------------------------------------------------------------------------------- module


class ViTBackbone(nn.Module):
    """A frozen timm ViT that returns patch descriptors and the last block's CLS attention.

    Frozen as in LOCATE and BiT-Align: ``requires_grad_(False)``, kept in eval mode whatever the parent does, run
    under no-grad. The blocks run one after the other as timm runs them (fused attention included); the last block
    is cut open: its normed input gives the keys and the CLS query, and the rest of it (attention output, MLP, final
    norm) runs only when the descriptors are the final tokens.

    Args:
        name: timm model name, e.g. ``vit_small_patch16_224.dino`` (LOCATE), ``vit_base_patch8_224.dino``,
            ``vit_small_patch14_dinov2.lvd142m`` or ``vit_small_patch14_reg4_dinov2.lvd142m`` (BiT-Align).
        weights: a local weight file (official DINO/DINOv2 ``.pth``, timm ``.pth``/``.safetensors``), ``"hub"`` to
            download through timm, or None/"" for random initialisation (tests, offline demo).
        descriptor: ``"key"`` (keys of the last attention block, LOCATE) or ``"token"`` (final normed tokens).
        img_size: input side the position embedding is stored for (other multiples of the patch still work, by
            interpolation); None keeps the model's default.
        pos_embed_resize: ``"timm"`` (resampled by timm, antialiased, to the input grid) or ``"dinov2"`` (resized on
            every call as DINOv2 does; build the model at its checkpoint's size, ``img_size=None``).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``patch_size=8, embed_dim=32, depth=2`` for tests).
    """

    def __init__(
        self,
        name: str = "vit_small_patch16_224.dino",
        weights: str | Path | None = None,
        descriptor: str = "key",
        img_size: int | None = None,
        pos_embed_resize: str = "timm",
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        if descriptor not in DESCRIPTORS:
            raise ValueError(f"descriptor must be one of {DESCRIPTORS}, got {descriptor!r}")
        if pos_embed_resize not in POS_EMBED_RESIZE:
            raise ValueError(f"pos_embed_resize must be one of {POS_EMBED_RESIZE}, got {pos_embed_resize!r}")
        weights = str(weights) if weights else None
        kwargs: dict[str, Any] = {"num_classes": 0, "dynamic_img_size": True, **timm_kwargs}
        if img_size is not None:
            kwargs["img_size"] = img_size
        try:
            self.vit = timm.create_model(name, pretrained=weights == "hub", **kwargs)
        except Exception as e:  # download failures surface as OSError, RuntimeError or hub-specific errors
            if weights == "hub":
                raise RuntimeError(
                    f"could not download pretrained weights for {name!r} ({e}). Without network, pass a local weight "
                    "file as model.backbone.weights."
                ) from e
            raise
        last = self.vit.blocks[-1] if hasattr(self.vit, "blocks") else None
        if last is None or not hasattr(last, "attn") or not hasattr(last.attn, "qkv"):
            raise ValueError(
                f"{name!r} is not a timm VisionTransformer with qkv attention blocks; use a ViT such as "
                "vit_small_patch16_224.dino"
            )
        if getattr(self.vit, "cls_token", None) is None:
            raise ValueError(f"{name!r} has no CLS token, so it has no CLS attention; use a ViT with a class token")
        patch = tuple(self.vit.patch_embed.patch_size)
        if patch[0] != patch[1]:
            raise ValueError(f"only square patches are supported, {name!r} has patch size {patch}")
        if weights is not None and weights != "hub":
            load_vit_weights(self.vit, weights)

        if pos_embed_resize == "dinov2" and (self.vit.pos_embed is None or self.vit.no_embed_class):
            raise ValueError(
                f"pos_embed_resize='dinov2' needs a ViT whose position embedding covers the CLS token, as DINOv2's "
                f"does; {name!r} has none or keeps it apart (no_embed_class). Use pos_embed_resize='timm'."
            )
        self.name = name
        self.descriptor = descriptor
        self.pos_embed_resize = pos_embed_resize
        self.patch_size: int = int(patch[0])
        self.embed_dim: int = int(self.vit.embed_dim)
        self.num_heads: int = int(last.attn.num_heads)
        self.head_dim: int = int(last.attn.head_dim)
        self.num_prefix_tokens: int = int(self.vit.num_prefix_tokens)
        # The descriptor width: num_heads * head_dim for keys (equal to embed_dim in every DINO ViT).
        self.out_dim: int = self.num_heads * self.head_dim if descriptor == "key" else self.embed_dim
        self.default_grid: tuple[int, int] = tuple(int(g) for g in self.vit.patch_embed.grid_size)
        self.vit.requires_grad_(False)
        self.vit.eval()

    def train(self, mode: bool = True) -> ViTBackbone:
        """Set the training mode; the frozen ViT stays in eval mode (no dropout, no drop-path) regardless."""
        super().train(mode)
        self.vit.eval()
        return self

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (h, w) for an input of the given size; raises if the size is not a multiple of the patch."""
        p = self.patch_size
        if height % p or width % p or height < p or width < p:
            raise ValueError(
                f"input size {height}x{width} is not a positive multiple of the patch size {p}; resize the images "
                f"to a multiple of {p} (e.g. {max(p, height // p * p)}x{max(p, width // p * p)})"
            )
        return height // p, width // p

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding, prefix tokens and position embedding of (B, 3, H, W) inputs: (B, T, E) tokens."""
        vit = self.vit
        if self.pos_embed_resize == "timm":
            return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        patches = vit.patch_embed(x)  # (B, h, w, E): timm's dynamic-size patch embedding keeps the grid
        h, w = patches.shape[1:3]
        pos = resize_pos_embed_dinov2(vit.pos_embed, (h, w), num_prefix_tokens=vit.num_prefix_tokens)
        prefix = [vit.cls_token.expand(x.shape[0], -1, -1)]
        if vit.reg_token is not None:
            prefix.append(vit.reg_token.expand(x.shape[0], -1, -1))
        tokens = torch.cat([*prefix, rearrange(patches, "b h w e -> b (h w) e")], dim=1) + pos.to(patches.dtype)
        return vit.norm_pre(vit.patch_drop(vit.pos_drop(tokens)))

    @torch.no_grad()
    def forward(
        self, x: torch.Tensor, depth: torch.Tensor | None = None, prompt: DepthPrompt | None = None
    ) -> Features:
        """Run the ViT.

        Args:
            x: (B, 3, H, W) ImageNet-normalised images, H and W multiples of the patch size.
            depth: (B, 1, H, W) depth maps normalised to [-1, 1], needed with a ``prompt``.
            prompt: BiT-Align's depth prompt, applied before every block (:mod:`models.depth`), or None.

        Returns:
            :class:`Features`: ``descriptors`` (B, D, h, w), the last block's keys in timm's head-major channel
            order (channel = head * d_h + d) or the final normed patch tokens; ``cls_attn`` (B, heads, h, w), the
            CLS query's attention over the patches in the last block, softmax taken over all tokens (prefix tokens
            included) before the prefix columns are dropped.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        h, w = self.grid_size(x.shape[-2], x.shape[-1])
        npt = self.num_prefix_tokens
        vit = self.vit
        tokens = self.embed(x)  # (B, T, E), T = npt + h * w
        p = None
        if prompt is not None:
            if depth is None or depth.shape != (x.shape[0], 1, *x.shape[-2:]):
                found = None if depth is None else tuple(depth.shape)
                raise ValueError(
                    f"the depth prompt needs depth maps of shape {(x.shape[0], 1, *x.shape[-2:])}, got {found}"
                )
            # The depth map enters through the RGB patch embedding, CLS token and position embedding.
            p = self.embed(depth.to(x.dtype).expand(-1, 3, -1, -1))  # (B, T, E)
        for i, block in enumerate(vit.blocks):
            if p is not None:
                p = prompt(i, tokens, p)  # this block's prompt output, handed on to the next block
                tokens = tokens + p
            if i < len(vit.blocks) - 1:
                tokens = block(tokens)
        last = vit.blocks[-1]
        attn = last.attn
        qkv = attn.qkv(last.norm1(tokens))  # (B, T, 3 * heads * d_h)
        q, k = rearrange(qkv, "b t (three nh dh) -> three b nh t dh", three=3, nh=self.num_heads)[:2]
        q, k = attn.q_norm(q), attn.k_norm(k)  # (B, nh, T, dh) each
        q_cls = q[:, :, 0] * attn.scale  # (B, nh, dh)
        logits = einsum(q_cls.float(), k.float(), "b nh dh, b nh t dh -> b nh t")
        cls_attn = logits.softmax(dim=-1)[:, :, npt:]  # (B, nh, h*w)
        cls_attn = rearrange(cls_attn, "b nh (h w) -> b nh h w", h=h, w=w)
        if self.descriptor == "key":
            descriptors = rearrange(k[:, :, npt:], "b nh (h w) dh -> b (nh dh) h w", h=h, w=w)
        else:
            out = vit.norm(last(tokens))  # (B, T, E)
            descriptors = rearrange(out[:, npt:], "b (h w) e -> b e h w", h=h, w=w)
        return Features(descriptors=descriptors, cls_attn=cls_attn)
