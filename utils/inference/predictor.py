"""The Python API: load a model file in one call and predict affordance heatmaps on any images, batched.

    >>> from utils.inference import Predictor
    >>> predictor = Predictor.from_checkpoint("runs/<run>/Seen/last.pth")   # or LOCATE's released .pth
    >>> result = predictor.predict(["photo.jpg", rgb_array, pil_image], affordance="hold")
    >>> result.maps[0].shape, result.top_k(3)[0]        # (H, W) at photo.jpg's resolution; [(name, p), ...]

Images may be file paths, numpy arrays (H, W, 3) uint8 RGB (also grayscale, RGBA, uint16, float in [0, 1], or a
(B, H, W, 3) stack), PIL images, or torch tensors (3, H, W) / (B, 3, H, W), uint8 or float in [0, 1] (pass
``normalized=True`` for tensors that are already ImageNet-normalised). Every image is resized to the model's input
size (``data.image_size``, the protocol's test transform) and its maps are returned at the image's own resolution:
the class maps on the patch grid are upsampled (bilinear) straight to that size and min-max normalised, as
:meth:`models.grounder.Grounder.predict` does.

The query (``affordance``) is a class name (case-, space- and underscore-insensitive), a list of them, any phrase
when the model has a CLIP text encoder, or None for the model's own top-k predictions.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datasets.images import IMAGENET_MEAN, IMAGENET_STD, read_image, to_tensor
from models.text import phrase_key
from utils.inference.image_inputs import as_image_list, as_rgb
from utils.inference.loading import LoadedModel, load_model
from utils.maps import normalize_minmax

__all__ = ["MAX_IMAGE_SIDE", "PredictionResult", "Predictor", "UnknownAffordanceError"]

logger = logging.getLogger(__name__)

#: Longer side at which image *files* are decoded: a larger photo is shrunk while it is decoded (JPEGs at 1/2, 1/4
#: or 1/8 scale), so an 8000x6000 photo needs a few MB. The network sees ``data.image_size`` pixels anyway; the maps
#: of such a file have the decoded resolution.
MAX_IMAGE_SIDE = 1024


class UnknownAffordanceError(ValueError):
    """An affordance the model does not know; the message lists the valid names and the closest one."""


@dataclass
class PredictionResult:
    """What :meth:`Predictor.predict` returns for N images.

    Attributes:
        maps: per image, float32 heatmaps in [0, 1] at the image's resolution: (H, W) when one affordance was asked
            for as a string, else (k, H, W), one per name in ``affordances[i]``.
        affordances: per image, the names of its maps (the queried names or phrases, or its top-k classes).
        probs: (N, C) float32 class probabilities (softmax of the image-level logits), columns in ``class_names``.
        class_names: the model's affordance names.
        sizes: per image, (H, W) of its maps.
    """

    maps: list[np.ndarray]
    affordances: list[list[str]]
    probs: np.ndarray
    class_names: list[str]
    sizes: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.maps)

    @property
    def predicted(self) -> list[str]:
        """The most probable affordance of every image."""
        return [self.class_names[int(i)] for i in self.probs.argmax(axis=1)]

    def top_k(self, k: int = 3) -> list[list[tuple[str, float]]]:
        """Per image, the ``k`` most probable affordances as (name, probability), most probable first."""
        k = max(1, min(int(k), len(self.class_names)))
        order = np.argsort(-self.probs, axis=1, kind="stable")[:, :k]
        return [[(self.class_names[int(j)], float(p[j])) for j in row] for row, p in zip(order, self.probs)]


# ---------------------------------------------------------------------------------------------------- predictor


class Predictor:
    """Affordance heatmaps from a trained grounder for images of any source and size.

    Build it with :meth:`from_checkpoint` (our checkpoints and LOCATE's released state dicts), or wrap a model you
    already have. The model runs in eval mode, fp32, under no-grad.

    Args:
        model: a :class:`models.grounder.Grounder`.
        image_size: the side images are resized to before the network (the config's ``data.image_size``).
        device: where inputs go (default: the model's device).
        open_vocabulary: whether phrases other than class names may be asked for (a CLIP text encoder).
        batch_size: images per forward pass.
        max_side: image files are decoded with their longer side at most this (None: full size).
        cfg: the configuration the model was built with (kept for callers such as the demo).
        split: the split the model was trained on, if known.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        image_size: int,
        device: torch.device | str | None = None,
        open_vocabulary: bool = False,
        batch_size: int = 16,
        max_side: int | None = MAX_IMAGE_SIDE,
        cfg: Any = None,
        split: str = "",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.class_names: list[str] = list(model.class_names)
        self.image_size = int(image_size)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.open_vocabulary = bool(open_vocabulary)
        self.batch_size = int(batch_size)
        self.max_side = max_side
        self.cfg = cfg
        self.split = split
        self._index = {phrase_key(c): i for i, c in enumerate(self.class_names)}
        self.grid = model.backbone.grid_size(self.image_size, self.image_size)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(3, 1, 1)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: torch.device | str = "auto",
        backbone_weights: str | None = None,
        config: str | Path | None = None,
        overrides: Sequence[str] = (),
        batch_size: int = 16,
        max_side: int | None = MAX_IMAGE_SIDE,
    ) -> Predictor:
        """Load a checkpoint of this repository or a LOCATE state dict (recognised by content).

        Args:
            path: the model file.
            device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
            backbone_weights: a local file with the frozen ViT's weights, when the model file names but does not hold
                them (our checkpoints of pretrained backbones, LOCATE files without ``vit_model.*``).
            config: for a LOCATE file, the YAML config of its architecture (default: LOCATE's recipe).
            overrides: ``section.key=value`` changes to the configuration.
            batch_size: images per forward pass.
            max_side: see :data:`MAX_IMAGE_SIDE`.
        """
        from utils.engine.runtime import select_device

        loaded = load_model(path, select_device(str(device)), config, list(overrides), backbone_weights)
        return cls.from_loaded(loaded, batch_size=batch_size, max_side=max_side)

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, **kwargs: Any) -> Predictor:
        """A predictor for a :class:`utils.inference.loading.LoadedModel`."""
        model, cfg = loaded.model, loaded.cfg
        open_vocab = getattr(model, "text", None) is not None and cfg.model.text.encoder == "clip"
        device = next(model.parameters()).device
        return cls(model, cfg.data.image_size, device, open_vocab, cfg=cfg, split=loaded.split, **kwargs)

    # ------------------------------------------------------------------------------------------------ queries

    def resolve_affordance(self, name: str) -> str:
        """The class name ``name`` stands for (ignoring case, spaces and underscores), or the phrase itself for an
        open-vocabulary model.

        Raises:
            UnknownAffordanceError: not a class name of a closed-vocabulary model (lists the valid names).
        """
        if not isinstance(name, str) or not name.strip():
            raise UnknownAffordanceError(f"expected an affordance name, got {name!r}")
        index = self._index.get(phrase_key(name))
        if index is not None:
            return self.class_names[index]
        if self.open_vocabulary:
            logger.info("'%s' is not a training class: open-vocabulary query through the text encoder", name)
            return name
        key = phrase_key(name).replace(" ", "_")
        close = difflib.get_close_matches(key, self.class_names, n=1, cutoff=0.0)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UnknownAffordanceError(
            f"unknown affordance '{name}'.{hint} This model knows {len(self.class_names)}: "
            f"{', '.join(self.class_names)}"
            + ("" if self.open_vocabulary else " (free phrases need a model with a CLIP text encoder)")
        )

    # ------------------------------------------------------------------------------------------------- inputs

    def load_image(self, image: Any) -> np.ndarray:
        """One image (path, numpy array or PIL image) as uint8 RGB (H, W, 3); files are decoded with ``max_side``.

        Raises:
            FileNotFoundError: a path that does not exist.
            ValueError: a file that is not a decodable image, or an unusable array.
        """
        if isinstance(image, str | os.PathLike):
            return read_image(image, max_side=self.max_side)
        return as_rgb(image)

    def _prepare(self, image: Any, normalized: bool) -> tuple[torch.Tensor, tuple[int, int]]:
        """One image as a normalised (3, S, S) tensor on the device, and the size its maps get."""
        if isinstance(image, torch.Tensor):
            return self._prepare_tensor(image, normalized)
        rgb = self.load_image(image)
        return to_tensor(rgb, self.image_size).to(self.device), (int(rgb.shape[0]), int(rgb.shape[1]))

    def _prepare_tensor(self, t: torch.Tensor, normalized: bool) -> tuple[torch.Tensor, tuple[int, int]]:
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"expected a (3, H, W) or (1, H, W) image tensor, got {tuple(t.shape)}")
        x = t.to(self.device)
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        elif not torch.is_floating_point(x):
            raise ValueError(f"unsupported tensor dtype {x.dtype}; expected uint8 or float")
        else:
            x = x.float()
            if not normalized and x.numel() and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
                raise ValueError(
                    f"a float image tensor must hold values in [0, 1], found [{x.min():.3g}, {x.max():.3g}]; if it "
                    "is already ImageNet-normalised, pass normalized=True"
                )
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        size = (int(x.shape[1]), int(x.shape[2]))
        if size != (self.image_size, self.image_size):
            side = (self.image_size, self.image_size)
            x = F.interpolate(x[None], size=side, mode="bilinear", align_corners=False, antialias=True)[0]
        if not normalized:
            x = (x - self._mean) / self._std
        return x, size

    # --------------------------------------------------------------------------------------------- prediction

    def predict(
        self,
        images: Any,
        affordance: str | Sequence[str] | None = None,
        top_k: int = 1,
        normalized: bool = False,
        batch_size: int | None = None,
    ) -> PredictionResult:
        """Heatmaps of one or more images.

        Args:
            images: one image or several (see the module docstring for the accepted kinds).
            affordance: a name or phrase (every image gets its (H, W) map), a list of them (every image gets a
                (k, H, W) stack in that order), or None (every image gets the (k, H, W) maps of its ``top_k`` most
                probable classes).
            top_k: with ``affordance=None``, how many classes per image.
            normalized: tensors are already ImageNet-normalised.
            batch_size: images per forward pass (default: the predictor's).

        Returns:
            A :class:`PredictionResult`.

        Raises:
            UnknownAffordanceError: an affordance the model does not know.
            FileNotFoundError, ValueError, TypeError: an unusable image (the message names it and says why).
        """
        items = as_image_list(images)
        if not items:
            raise ValueError("predict: no images given")
        single = isinstance(affordance, str)
        if affordance is None:
            queries = None
        else:
            names = [affordance] if single else list(affordance)
            if not names:
                raise ValueError("predict: affordance is an empty list; give at least one name, or None for top-k")
            queries = [self.resolve_affordance(n) for n in names]
        size = batch_size or self.batch_size
        maps: list[np.ndarray] = []
        affordances: list[list[str]] = []
        probs: list[np.ndarray] = []
        sizes: list[tuple[int, int]] = []
        for start in range(0, len(items), size):
            prepared = [self._prepare(x, normalized) for x in items[start : start + size]]
            x = torch.stack([p[0] for p in prepared])  # (b, 3, S, S)
            batch_sizes = [p[1] for p in prepared]
            grid_maps, names_per_image, batch_probs = self.grid_maps(x, queries, top_k)
            for m, hw in zip(self.upsample(grid_maps, batch_sizes), batch_sizes):
                maps.append(m[0] if single else m)
                sizes.append(hw)
            affordances += names_per_image
            probs.append(batch_probs.float().cpu().numpy())
        return PredictionResult(maps, affordances, np.concatenate(probs), list(self.class_names), sizes)

    __call__ = predict

    def iter_predict(
        self, images: Sequence[Any], affordance: str | Sequence[str] | None = None, top_k: int = 1, **kwargs: Any
    ) -> Iterator[PredictionResult]:
        """:meth:`predict` one batch at a time (for long lists: results arrive as they are computed)."""
        size = kwargs.pop("batch_size", None) or self.batch_size
        for start in range(0, len(images), size):
            yield self.predict(list(images[start : start + size]), affordance, top_k, batch_size=size, **kwargs)

    @torch.no_grad()
    def grid_maps(
        self, x: torch.Tensor, queries: list[str] | None, top_k: int = 1
    ) -> tuple[torch.Tensor, list[list[str]], torch.Tensor]:
        """The heatmaps of a preprocessed batch on the patch grid.

        Args:
            x: (b, 3, S, S) ImageNet-normalised images.
            queries: resolved class names or phrases (every image gets each), or None for the top-k classes.
            top_k: with ``queries=None``, how many classes per image.

        Returns:
            maps (b, k, h, w) in [0, 1], the names of the k maps of each image, and the (b, C) probabilities.
        """
        model, b, grid = self.model, x.shape[0], self.grid
        # Without text gating the egocentric class maps do not depend on the query: one label-free pass gives every
        # class's map. With gating (or for a free phrase) each query needs its own conditioned pass.
        gated = getattr(model, "gate", None) is not None
        free = model.predict(x, None, output_size=grid)
        probs = free.probs  # (b, C)
        if queries is None:
            k = max(1, min(int(top_k), len(self.class_names)))
            top = probs.topk(k, dim=1).indices  # (b, k)
            names = [[self.class_names[int(j)] for j in row] for row in top.tolist()]
            if gated:
                maps = torch.stack([model.predict(x, top[:, r], output_size=grid).maps for r in range(k)], dim=1)
            else:
                maps = free.all_maps.gather(1, top[:, :, None, None].expand(-1, -1, *free.all_maps.shape[-2:]))
            return maps.float(), names, probs
        idx = [self._index.get(phrase_key(q)) for q in queries]
        if not gated and all(i is not None for i in idx):
            maps = free.all_maps[:, idx]  # (b, k, h, w)
        else:
            maps = torch.stack([model.predict(x, [q] * b, output_size=grid).maps for q in queries], dim=1)
        return maps.float(), [list(queries) for _ in range(b)], probs

    @staticmethod
    def upsample(maps: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """(b, k, h, w) grid maps -> per image (k, H_i, W_i) float32 numpy in [0, 1] (bilinear, then min-max).

        The grid maps are already min-max normalised; min-max is invariant to the affine rescaling and bilinear
        interpolation commutes with it, so this equals one bilinear pass from the raw class maps, as the
        evaluation protocol does.
        """
        out = []
        for m, (h, w) in zip(maps, sizes):
            up = F.interpolate(m[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0]  # (k, H, W)
            out.append(normalize_minmax(up).cpu().numpy().astype(np.float32, copy=False))
        return out

    # ------------------------------------------------------------------------------------------- exocentric

    @torch.no_grad()
    def exo_maps(self, exo_images: Sequence[Any], affordance: str, ego: Any | None = None) -> list[np.ndarray]:
        """``gt_aff_cam`` of a training sample: each exocentric image's class map of ``affordance``.

        Runs :meth:`models.grounder.Grounder.forward` (eval mode) on one sample made of the exocentric images and an
        egocentric image (default: the first exocentric one; it does not change these maps).

        Args:
            exo_images: the exocentric images (people using the object), any kinds :meth:`predict` takes.
            affordance: a class name (the sample's label).
            ego: the egocentric image, optional.

        Returns:
            Per exocentric image, an (H, W) float32 map in [0, 1] at its resolution.
        """
        name = self.resolve_affordance(affordance)
        label = self._index.get(phrase_key(name))
        if label is None:
            raise UnknownAffordanceError(
                f"gt_aff_cam needs one of the model's class names, got the phrase '{affordance}'; "
                f"valid names: {', '.join(self.class_names)}"
            )
        items = as_image_list(exo_images)
        if not items:
            raise ValueError("exo_maps: no exocentric images given")
        prepared = [self._prepare(x, False) for x in items]
        exo = torch.stack([p[0] for p in prepared])  # (n, 3, S, S)
        ego_x = self._prepare(ego, False)[0][None] if ego is not None else exo[:1]
        label_t = torch.tensor([label], device=self.device)
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model({"exo": exo[None], "ego": ego_x, "label": label_t})
        finally:
            self.model.train(was_training)
        cams = normalize_minmax(out.gt_aff_cam[0].float())  # (n, h, w)
        return [m[0] for m in self.upsample(cams[:, None], [p[1] for p in prepared])]
