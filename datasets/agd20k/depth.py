"""AGD20K-Depth: one depth map per AGD20K image, for BiT-Align's depth prompt (``data.depth_root``).

The depth root mirrors the dataset root: the image ``<root>/<rel>/<stem>.jpg`` has its depth map at
``<depth_root>/<rel>/<stem>_depth.png`` (BiT-Align's code derives it by replacing "AGD20K" with "AGD20K-Depth" in the
path), an 8-bit grayscale PNG. It gets the image's geometry (the same resize, crop and flip) and is normalised to
[-1, 1] as (d / 255 − 0.5) / 0.5.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import torch

from datasets.images import center_resize, normalize, random_crop, random_flip, resize_shorter

__all__ = [
    "check_depth_maps",
    "depth_path",
    "depth_tensor",
    "eval_depth",
    "read_depth",
    "train_transform_with_depth",
]


def depth_path(image: str | os.PathLike, root: str | os.PathLike, depth_root: str | os.PathLike) -> Path:
    """The depth map of ``image`` (a file under ``root``): ``<depth_root>/<same folders>/<stem>_depth.png``."""
    rel = Path(os.path.relpath(image, root))
    return Path(depth_root) / rel.parent / f"{rel.stem}_depth.png"


def check_depth_maps(
    images: Iterable[str | os.PathLike], root: str | os.PathLike, depth_root: str | os.PathLike
) -> None:
    """Fail before any work when an image has no depth map.

    Raises:
        FileNotFoundError: listing how many are missing, the first few expected paths and the layout.
    """
    images = list(images)
    missing = [depth_path(p, root, depth_root) for p in images]
    missing = [str(p) for p in missing if not p.is_file()]
    if missing:
        shown = "\n  ".join(missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(
            f"data.depth_root={str(depth_root)!r}: {len(missing)} of {len(images)} images have no depth map. "
            f"Expected (first {min(5, len(missing))}):\n  {shown}{more}\nEach image <root>/<split>/.../<stem>.jpg "
            "needs <depth_root>/<split>/.../<stem>_depth.png (the AGD20K-Depth layout); check the path, or leave "
            "data.depth_root empty to train without the depth prompt."
        )


def read_depth(path: str | os.PathLike) -> np.ndarray:
    """Read a depth map as uint8 (H, W): 8-bit grayscale as stored (a colour PNG is converted to gray).

    Raises:
        FileNotFoundError: no file.
        ValueError: undecodable, or not 8-bit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Depth map not found: '{path}'. Check data.depth_root.")
    buf = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise ValueError(f"Could not decode depth map '{path}'. Expected an 8-bit grayscale PNG.")
    if img.dtype != np.uint8:
        raise ValueError(f"Depth map '{path}' is {img.dtype}; expected 8-bit grayscale (AGD20K-Depth's format).")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    return img


def depth_tensor(depth: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) -> float32 (1, H, W) in [-1, 1]: (d / 255 − 0.5) / 0.5."""
    x = torch.from_numpy(np.ascontiguousarray(depth).astype(np.float32) / 255.0)
    return ((x - 0.5) / 0.5).unsqueeze(0)


def _match(depth: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The depth map at the image's size (AGD20K-Depth maps normally have it already)."""
    if depth.shape[:2] == shape:
        return depth
    return cv2.resize(depth, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def train_transform_with_depth(
    img: np.ndarray,
    depth: np.ndarray,
    resize_size: int,
    crop_size: int,
    rng: np.random.Generator,
    backend: str = "opencv",
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`datasets.images.train_transform` of an image and the same resize, crop and flip of its depth map.

    Args:
        img: uint8 RGB (H, W, 3).
        depth: uint8 (H', W') depth map (resized to (H, W) first if it differs).
        resize_size: shorter side after resizing.
        crop_size: side of the random crop.
        rng: consumed exactly as ``train_transform`` consumes it, so the image is the one it would give.
        backend: the resize backend (``opencv`` or ``pil``).

    Returns:
        The normalised image (3, S, S) and the depth map (1, S, S) in [-1, 1].
    """
    both = np.concatenate([img, _match(depth, img.shape[:2])[..., None]], axis=2)  # (H, W, 4): one geometry
    both = random_crop(resize_shorter(both, resize_size, backend), crop_size, rng, backend)
    both = np.ascontiguousarray(random_flip(both, rng))
    return normalize(np.ascontiguousarray(both[..., :3])), depth_tensor(both[..., 3])


def eval_depth(depth: np.ndarray, size: int, backend: str = "opencv") -> torch.Tensor:
    """The test transform of a depth map: resized to size × size like the image, then (1, S, S) in [-1, 1]."""
    return depth_tensor(center_resize(depth, size, backend))
