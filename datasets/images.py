"""Robust image IO and the train/test transforms, with OpenCV and numpy (PIL for the published resize).

Images enter the repository here and nowhere else: ``read_image`` always returns uint8 RGB (H, W, 3), whatever
the file holds (grayscale, RGBA, 16-bit), so the BGR->RGB swap happens exactly once. The transforms take a numpy
``Generator`` so that the caller (the dataset) decides the randomness and can make it reproducible.

Two resize backends (``data.resize``) share one geometry: ``opencv`` (area averaging when shrinking, bilinear when
growing) and ``pil``, PIL's antialiased bilinear filter, which is what torchvision's ``Resize`` applies to the PIL
images of LOCATE's and BiT-Align's data pipelines. The decoding is OpenCV's in both: on the JPEGs we tried it gave
the same pixels as PIL's ``Image.open(...).convert('RGB')`` (both use libjpeg-turbo).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "RESIZE_BACKENDS",
    "center_resize",
    "decode_image",
    "denormalize",
    "image_file_problem",
    "is_image_file",
    "jpeg_size",
    "normalize",
    "random_crop",
    "random_flip",
    "read_gt",
    "read_image",
    "read_mask",
    "resize_gt",
    "resize_shorter",
    "to_tensor",
    "train_transform",
    "train_transform_with_mask",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Values of ``data.resize``.
RESIZE_BACKENDS: tuple[str, ...] = ("opencv", "pil")

#: File name endings treated as images; everything else (.DS_Store, .txt, Thumbs.db) is ignored by the loaders.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# A JPEG whose end-of-image marker is missing from its last bytes was cut short. OpenCV 5 refuses most of those,
# older builds return a half-grey picture with only a console warning, so we check the marker ourselves (and
# the IEND chunk of a PNG). A little trailing junk after the marker (some cameras add padding) is tolerated.
_JPEG_TAIL_SLACK = 1024
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has an image extension and is not a hidden file (macOS ``._x.jpg`` resource forks)."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _read_bytes(path: str | os.PathLike) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: '{path}'. Check the dataset root and the file name.")
    return path.read_bytes()


def _truncation(head: bytes, tail: bytes) -> str | None:
    """Why a file whose first bytes are ``head`` and last bytes ``tail`` is cut short, or None if it looks whole.

    ``tail`` must hold at least the last ``_JPEG_TAIL_SLACK + 12`` bytes (or the whole file if shorter). Formats
    other than JPEG and PNG are not checked.
    """
    if head[:2] == b"\xff\xd8":  # JPEG start-of-image
        eoi = tail.rfind(b"\xff\xd9")
        if eoi < 0 or eoi < len(tail) - 2 - _JPEG_TAIL_SLACK:
            return "truncated JPEG (no end-of-image marker)"
    elif head[:8] == _PNG_SIGNATURE and b"IEND" not in tail[-(12 + _JPEG_TAIL_SLACK) :]:
        return "truncated PNG (no IEND chunk)"
    return None


def _check_not_truncated(data: bytes, path: str | os.PathLike) -> None:
    reason = _truncation(data[:8], data[-(12 + _JPEG_TAIL_SLACK) :])
    if reason is not None:
        raise ValueError(f"Could not decode '{path}': {reason}. Re-download or delete the file.")


def image_file_problem(path: str | os.PathLike) -> str | None:
    """A cheap structural check of an image file, without decoding it: None if it looks whole, else the reason.

    Reads the first and last bytes only: the file must exist, be non-empty and, for JPEG and PNG, end with the
    container's closing marker (JPEG end-of-image, PNG IEND). A file that passes can still fail to decode (a
    corrupt middle); one that fails would crash or silently half-decode.
    """
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with open(path, "rb") as fh:
            head = fh.read(8)
            fh.seek(max(0, size - 12 - _JPEG_TAIL_SLACK))
            tail = fh.read()
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    return _truncation(head, tail)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """Scale 16-bit or float pixel data to uint8 (full range to full range)."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return np.round(img.astype(np.float32) / 257.0).astype(np.uint8)  # 65535 / 255 = 257
    if np.issubdtype(img.dtype, np.floating):
        return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ValueError(f"Unsupported pixel type {img.dtype}; expected uint8, uint16 or float.")


# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic): they hold the size.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4 DHT, C8 reserved, CC DAC are not frames
_REDUCED_MODES = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a JPEG from its frame header, without decoding; None if not a JPEG or no header found.

    The size as stored: EXIF orientation is not applied (the decoders here ignore it too).
    """
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None  # not at a marker: a damaged header
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length field
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before the data
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF_MARKERS and i + 9 <= n:
            return int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
        i += 2 + length
    return None


def _reduction(size: tuple[int, int], max_side: int | None, min_side: int | None) -> int:
    """The largest DCT scale-down factor (8, 4, 2; 1 for none) that keeps the longer side >= ``max_side`` and the
    shorter side >= ``min_side`` (a factor f applies only to a side at least f times the bound)."""
    shorter, longer = min(size), max(size)
    for factor, _ in _REDUCED_MODES:
        if (max_side is None or longer // factor >= max_side) and (min_side is None or shorter // factor >= min_side):
            return factor
    return 1


def _decode_reduced_jpeg(data: bytes, buf: np.ndarray, max_side: int | None, min_side: int | None) -> np.ndarray | None:
    """Decode a large JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling: the full image never exists in memory).

    Returns BGR uint8 whose longer side is still >= ``max_side`` and shorter side >= ``min_side``, or None when no
    reduction applies (small image, or no frame header found).
    """
    size = jpeg_size(data)
    factor = _reduction(size, max_side, min_side) if size is not None and min(size) > 0 else 1
    if factor == 1:
        return None
    mode = dict(_REDUCED_MODES)[factor]
    return cv2.imdecode(buf, mode | cv2.IMREAD_IGNORE_ORIENTATION)  # like the full-size path (IMREAD_UNCHANGED)


def decode_image(
    data: bytes, source: str | os.PathLike = "<bytes>", max_side: int | None = None, min_side: int | None = None
) -> np.ndarray:
    """Decode encoded image bytes to uint8 RGB (H, W, 3).

    Grayscale becomes 3 identical channels, the alpha channel of RGBA is dropped (the colour is kept as stored,
    not composited), 16-bit is scaled to 8-bit.

    Args:
        data: the encoded file content (JPEG, PNG, ...).
        source: the file name shown in error messages.
        max_side: if given, a larger image is shrunk (area interpolation, aspect ratio kept) so that its longer
            side is ``max_side``, right after decoding and before any float conversion; a large JPEG is even
            decoded at a reduced scale, so that memory stays bounded for any camera resolution.
        min_side: if given, a JPEG whose shorter side is at least twice ``min_side`` is decoded at 1/2, 1/4 or
            1/8 scale (DCT-domain scaling, much faster than a full decode), the largest that keeps the shorter side
            >= ``min_side``: pass the size the next resize needs. Other images decode at full size, unchanged.
            The result is not resized further. With both bounds, ``max_side`` wins.

    Raises:
        ValueError: the bytes are not a decodable image, or a JPEG or PNG is truncated.
    """
    for name, bound in (("max_side", max_side), ("min_side", min_side)):
        if bound is not None and bound < 1:
            raise ValueError(f"{name} must be a positive number of pixels, got {bound}")
    _check_not_truncated(data, source)
    buf = np.frombuffer(data, dtype=np.uint8)
    img = None
    if (max_side is not None or min_side is not None) and data[:2] == b"\xff\xd8" and buf.size:
        img = _decode_reduced_jpeg(data, buf, max_side, min_side)
    if img is None:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is not None and max_side is not None and max(img.shape[:2]) > max_side:
        h, w = img.shape[:2]
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        logger.info("'%s' (%dx%d as decoded) shrunk to %dx%d (max_side %d)", source, w, h, *size, max_side)
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)  # still uint8/uint16: no float copy
    if img is None:
        raise ValueError(
            f"Could not decode '{source}' as an image (not an image, or a corrupt/truncated file). "
            "Delete or replace it."
        )
    img = _to_uint8(img)
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))  # (H, W, 3)
    channels = img.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))  # (H, W, 3)
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise ValueError(f"Could not decode '{source}': expected 1, 3 or 4 channels, found {channels}.")


def read_image(path: str | os.PathLike, max_side: int | None = None, min_side: int | None = None) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3).

    Args:
        path: the image file.
        max_side: shrink larger images to this longer side while decoding (see :func:`decode_image`).
        min_side: decode a large JPEG at a reduced scale that keeps its shorter side >= this (see
            :func:`decode_image`); the datasets pass the size their transform resizes the shorter side to.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ValueError: the file exists but could not be decoded (non-image, corrupt or truncated).
    """
    return decode_image(_read_bytes(path), path, max_side=max_side, min_side=min_side)


def read_gt(path: str | os.PathLike) -> np.ndarray:
    """Read a ground-truth heatmap PNG as float64 (H, W) in [0, 1].

    Decoded as 8-bit grayscale (as ``cv2.IMREAD_GRAYSCALE`` does in the published evaluation code), then / 255 in
    float64, as the published code divides it. The GT stays float64 up to the metrics (docs/protocol.md): the NSS
    fixation map thresholds min-max(G) at 0.1, and a float32 copy rounds values that are exactly 0.1 in exact
    arithmetic (say ½ · 25/255 + ½ · 26/255 after the resize) to just above it.
    """
    data = _read_bytes(path)
    buf = np.frombuffer(data, dtype=np.uint8)
    gt = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if buf.size else None
    if gt is None:
        raise ValueError(f"Could not decode ground-truth map '{path}'. Expected a grayscale PNG heatmap.")
    return gt.astype(np.float64) / 255.0


def read_mask(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """Read a binary mask PNG (0/255) as float32 (H, W) in {0, 1}, optionally resized (nearest) to size x size."""
    data = _read_bytes(path)
    buf = np.frombuffer(data, dtype=np.uint8)
    mask = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if buf.size else None
    if mask is None:
        raise ValueError(f"Could not decode mask '{path}'. Expected a 0/255 grayscale PNG.")
    if size is not None and mask.shape != (size, size):
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return (mask > 127).astype(np.float32)


def resize_gt(gt: np.ndarray, size: int) -> np.ndarray:
    """Resize a GT map in [0, 1] to size x size exactly as the published protocol does (docs/protocol.md), in float64.

    The published code divides the uint8 PNG by 255 in float64 and calls ``cv2.resize`` (bilinear) on it, and
    scores the float64 result; so do we (the clip to [0, 1] changes nothing: bilinear weights are convex).
    """
    out = cv2.resize(gt.astype(np.float64), (size, size), interpolation=cv2.INTER_LINEAR)
    return np.clip(out, 0.0, 1.0)


def _pil_resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """PIL's bilinear resize (antialiased when shrinking: the filter widens with the scale) of a uint8 array.

    torchvision's ``Resize`` hands a PIL image to ``Image.resize(size, BILINEAR)``; this is that call. An RGB image
    is resized as one RGB image; other channel counts one channel at a time ('L' images), because PIL would
    premultiply a fourth channel as alpha.
    """
    from PIL import Image  # only this backend needs PIL

    if img.dtype != np.uint8:
        raise ValueError(f"the pil resize expects uint8 pixels, got {img.dtype}")
    bilinear = Image.Resampling.BILINEAR
    if img.ndim == 3 and img.shape[2] == 3:
        return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((width, height), bilinear))
    if img.ndim == 2:
        return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((width, height), bilinear))
    channels = [_pil_resize(np.ascontiguousarray(img[..., c]), width, height) for c in range(img.shape[2])]
    return np.stack(channels, axis=2)  # (height, width, C)


def _resize(img: np.ndarray, width: int, height: int, backend: str = "opencv") -> np.ndarray:
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img
    if backend == "pil":
        return _pil_resize(img, width, height)
    if backend != "opencv":
        raise ValueError(f"resize backend {backend!r} is not one of {', '.join(RESIZE_BACKENDS)}")
    # Area averaging when shrinking avoids aliasing (PIL's bilinear filter also antialiases); bilinear when growing.
    interp = cv2.INTER_AREA if width * height < w * h else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=interp)


def resize_shorter(img: np.ndarray, size: int, backend: str = "opencv") -> np.ndarray:
    """Resize so that the shorter side is ``size``, keeping the aspect ratio (like torchvision ``Resize(int)``).

    The longer side is ``int(size * longer / shorter)``, torchvision's rounding; ``backend`` is ``opencv`` or
    ``pil`` (module docstring).
    """
    h, w = img.shape[:2]
    if h <= w:
        new_h, new_w = size, max(1, int(size * w / h))
    else:
        new_h, new_w = max(1, int(size * h / w)), size
    return _resize(img, new_w, new_h, backend)


def center_resize(img: np.ndarray, size: int | tuple[int, int], backend: str = "opencv") -> np.ndarray:
    """Resize to exactly ``size`` (an int for a square, or (height, width)), ignoring the aspect ratio."""
    height, width = (size, size) if isinstance(size, int) else size
    return _resize(img, width, height, backend)


def random_crop(img: np.ndarray, size: int, rng: np.random.Generator, backend: str = "opencv") -> np.ndarray:
    """Crop a random size x size window (the image is first grown if a side is shorter than ``size``)."""
    h, w = img.shape[:2]
    if h < size or w < size:
        img = resize_shorter(img, size, backend)
        h, w = img.shape[:2]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return img[top : top + size, left : left + size]


def random_flip(img: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Flip left-right with probability ``p``."""
    return img[:, ::-1] if rng.random() < p else img


def normalize(img: np.ndarray) -> torch.Tensor:
    """uint8 RGB (H, W, 3) -> float32 (3, H, W), ImageNet mean/std normalised."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"normalize expects a uint8 (H, W, 3) RGB array, got {img.dtype} {img.shape}.")
    x = img.astype(np.float32) / 255.0
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))  # (H, W, 3) -> (3, H, W)


def to_tensor(img: np.ndarray, size: int | tuple[int, int] | None = None, backend: str = "opencv") -> torch.Tensor:
    """Test transform: resize to ``size`` (square if an int; unchanged if None) and normalise -> (3, S, S).

    The aspect ratio is not kept, as in the published test transform ``Resize((224, 224))``.
    """
    if size is not None:
        img = center_resize(img, size, backend)
    return normalize(img)


def train_transform(
    img: np.ndarray, resize_size: int, crop_size: int, rng: np.random.Generator, backend: str = "opencv"
) -> torch.Tensor:
    """Train transform (LOCATE's): shorter side to ``resize_size``, random crop, random flip, normalise."""
    if crop_size > resize_size:
        raise ValueError(f"crop_size ({crop_size}) must not exceed resize_size ({resize_size}).")
    img = resize_shorter(img, resize_size, backend)
    img = random_crop(img, crop_size, rng, backend)
    img = random_flip(img, rng)
    return normalize(img)


def train_transform_with_mask(
    img: np.ndarray,
    mask: np.ndarray,
    resize_size: int,
    crop_size: int,
    rng: np.random.Generator,
    backend: str = "opencv",
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`train_transform` of an image and the same geometry (resize, crop, flip) applied to its mask.

    Args:
        img: uint8 RGB (H, W, 3).
        mask: uint8 (H, W) mask of the same image (0/255).
        resize_size: shorter side after resizing.
        crop_size: side of the random crop.
        rng: consumed exactly as :func:`train_transform` consumes it, so the image is the one it would give.
        backend: the resize backend (``opencv`` or ``pil``).

    Returns:
        The normalised image (3, S, S) and the mask (S, S) as float in [0, 1].
    """
    if mask.shape[:2] != img.shape[:2]:
        raise ValueError(f"mask shape {mask.shape[:2]} differs from the image's {img.shape[:2]}")
    both = np.concatenate([img, mask[..., None]], axis=2)  # (H, W, 4): one geometric transform for both
    both = random_flip(random_crop(resize_shorter(both, resize_size, backend), crop_size, rng, backend), rng)
    both = np.ascontiguousarray(both)
    return normalize(both[..., :3]), torch.from_numpy(both[..., 3].astype(np.float32) / 255.0)


def denormalize(t: torch.Tensor) -> np.ndarray:
    """Undo the ImageNet normalisation: float (3, H, W) -> uint8 RGB (H, W, 3)."""
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"denormalize expects a (3, H, W) tensor, got shape {tuple(t.shape)}.")
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)  # (3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)  # (3, 1, 1)
    x = (t.detach().float().cpu() * std + mean).clamp(0.0, 1.0)
    return (x * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
