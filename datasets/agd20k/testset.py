"""The AGD20K test set: egocentric test images with their GT maps, under the published protocol (docs/protocol.md)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.agd20k.depth import check_depth_maps, depth_path, eval_depth, read_depth
from datasets.agd20k.layout import SUBSETS, _check_layout, _class_names_for, _tree
from datasets.images import RESIZE_BACKENDS, image_file_problem, read_gt, read_image, read_mask, resize_gt, to_tensor

logger = logging.getLogger(__name__)


class AGD20KTest(Dataset):
    """Egocentric test images that have a GT map (docs/protocol.md: GT PNG / 255, bilinear to ``eval_size``).

    Test images without GT are counted in ``missing_gt`` and logged, never silently dropped.

    Unreadable files never crash an evaluation. The contract:

    - At construction, a cheap structural check of every test image and GT map (the file exists, is not empty,
      and a JPEG ends with its end-of-image marker, a PNG with its IEND chunk; no decoding) leaves out the bad
      ones with ONE warning; they are listed in ``unreadable`` as ``"path: reason"``. A GT map that fails to
      decode while the GT cache is built is left out the same way.
    - A file that passes the check but still fails to decode when its item is loaded does not raise: the item
      comes back with ``readable`` False, ``problem`` saying why, a zero ``image`` (3, S, S) and zero ``gt``
      (E, E) (and zero masks), and the file is added to ``unreadable`` of the process that loaded it (a
      DataLoader worker's copy is lost, hence the flag). The evaluation loop must leave such items out of the
      metrics and list their paths. Readable items have ``readable`` True and ``problem`` "".

    Args:
        root: dataset root.
        split: "Seen" or "Unseen".
        image_size: side S of the (square) network input.
        eval_size: side E of the GT map (224 in the published protocol).
        class_names: the class list (default: ``load_class_names``).
        with_masks: also return "object_mask" and "part_mask" (E, E) in {0, 1} when the root has
            ``<split>/masks/{object,part}/<aff>/<obj>/<stem>.png`` for every test image (``has_masks``);
            otherwise a warning is logged and no mask keys are returned.
        cache_dir: if given, the resized GT maps are cached there as one ``.npy`` per split, keyed by a hash of
            the file list and ``eval_size`` (loaded memory-mapped; nothing is pickled).
        reduced_decode: decode a JPEG whose shorter side is at least twice ``image_size`` at 1/2, 1/4 or 1/8
            scale (DCT-domain scaling), keeping the shorter side >= ``image_size``, before the resize to
            ``image_size``: several times faster on full-size photos, a small resampling difference. Smaller
            images decode exactly as without it. Off: every image is decoded at full size.
        depth_root: an AGD20K-Depth root (``datasets.agd20k.depth``): every item then also carries ``depth``
            (1, S, S) in [-1, 1], resized like the image. Every test image's depth map must exist (checked here).
        resize: the resize backend of the test images, ``opencv`` or ``pil`` (see ``datasets.images``).

    The GT maps stay float64 from the PNG to the metrics (``item["gt"]`` is float64, and so is the cache), as in the
    published evaluation: a float32 copy moves NSS by up to 1e-3 on an image (docs/protocol.md).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "Seen",
        image_size: int = 224,
        eval_size: int = 224,
        class_names: Sequence[str] | None = None,
        with_masks: bool = False,
        cache_dir: str | os.PathLike | None = None,
        reduced_decode: bool = True,
        depth_root: str | os.PathLike | None = None,
        resize: str = "opencv",
    ) -> None:
        if resize not in RESIZE_BACKENDS:
            raise ValueError(f"resize={resize!r} is not one of {', '.join(RESIZE_BACKENDS)}")
        self.root = Path(root)
        self.depth_root = Path(depth_root) if depth_root else None
        self.split = split
        self.image_size = image_size
        self.eval_size = eval_size
        self.reduced_decode = reduced_decode
        self.resize = resize
        split_dir = _check_layout(self.root, split, ["test_ego", "test_gt"])
        self.class_names = _class_names_for(self.root, split, class_names, ["test_ego", "test_gt"])
        self._label = {c: i for i, c in enumerate(self.class_names)}
        gt_root = split_dir / SUBSETS["test_gt"]
        self.items: list[tuple[str, str, str, str]] = []  # (image, affordance, object, gt)
        self.missing_gt: list[str] = []
        for (aff, obj), files in _tree(split_dir / SUBSETS["test_ego"]).items():
            for path in files:
                gt = gt_root / aff / obj / f"{path.stem}.png"
                if gt.is_file():
                    self.items.append((str(path), aff, obj, str(gt)))
                else:
                    self.missing_gt.append(str(path))
        if self.missing_gt:
            logger.warning(
                "%d test images have no GT map and are left out of the evaluation, e.g. %s",
                len(self.missing_gt),
                self.missing_gt[:5],
            )
        self.unreadable: list[str] = []
        self.items = self._drop_unreadable(
            self.items, {i: _file_problem(it) for i, it in enumerate(self.items)}, "failed a structural check"
        )
        if self.depth_root is not None:
            check_depth_maps([it[0] for it in self.items], self.root, self.depth_root)
        self._gt_cache = self._load_cache(Path(cache_dir)) if cache_dir is not None else None
        if not self.items:
            raise ValueError(
                f"No test image with a GT map under '{split_dir}' that can be read ({len(self.missing_gt)} images "
                f"without GT, {len(self.unreadable)} unreadable). Expected testset/egocentric/<aff>/<obj>/<name>.jpg "
                "with testset/GT/<aff>/<obj>/<name>.png."
            )
        mask_root = split_dir / "masks"
        self._mask_paths = [
            (
                str(mask_root / "object" / a / o / f"{Path(p).stem}.png"),
                str(mask_root / "part" / a / o / f"{Path(p).stem}.png"),
            )
            for p, a, o, _ in self.items
        ]
        self.has_masks = mask_root.is_dir() and all(
            os.path.isfile(m) and os.path.isfile(n) for m, n in self._mask_paths
        )
        self.with_masks = with_masks and self.has_masks
        if with_masks and not self.has_masks:
            logger.warning(
                "with_masks=True but '%s' lacks object/part masks for some test images; none returned", mask_root
            )

    def _drop_unreadable(self, items: list, problems: dict[int, tuple[str, str] | None], how: str) -> list:
        """``items`` without those that have a (bad file, reason); those go to ``unreadable`` with ONE warning."""
        bad = [f"{p[0]}: {p[1]}" for _, p in sorted(problems.items()) if p]
        if not bad:
            return items
        self.unreadable += bad
        logger.warning(
            "%d test item(s) %s and are left out of the evaluation (listed in its report as unreadable): %s%s",
            len(bad),
            how,
            "; ".join(bad[:5]),
            f" and {len(bad) - 5} more" if len(bad) > 5 else "",
        )
        return [it for i, it in enumerate(items) if not problems.get(i)]

    def _cache_key(self) -> str:
        h = hashlib.sha256(f"agd20k-gt-v2-float64|{self.eval_size}".encode())
        for _, _, _, gt in self.items:
            h.update(f"|{os.path.relpath(gt, self.root)}:{os.path.getsize(gt)}".encode())
        return h.hexdigest()[:16]

    def _load_cache(self, cache_dir: Path) -> np.ndarray:
        path = cache_dir / f"agd20k_gt_{self.split}_{self.eval_size}_{self._cache_key()}.npy"
        shape = (len(self.items), self.eval_size, self.eval_size)
        if path.is_file():
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.shape == shape and arr.dtype == np.float64:
                logger.info("GT maps loaded from cache %s", path)
                return arr
            logger.warning(
                "Ignoring GT cache %s with shape %s and dtype %s (expected %s float64)",
                path,
                arr.shape,
                arr.dtype,
                shape,
            )
        maps, problems = [], {}
        for i, (_, _, _, gt) in enumerate(self.items):
            try:
                maps.append(resize_gt(read_gt(gt), self.eval_size))  # (E, E)
            except (ValueError, OSError) as err:
                problems[i] = (gt, str(err))
        if problems:  # the cache holds the readable items only, under the key of that list
            self.items = self._drop_unreadable(self.items, problems, "have a GT map that could not be decoded")
            path = cache_dir / f"agd20k_gt_{self.split}_{self.eval_size}_{self._cache_key()}.npy"
        if not maps:
            return np.zeros((0, self.eval_size, self.eval_size), np.float64)
        arr = np.stack(maps)  # (N, E, E)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        logger.info("GT maps cached to %s", path)
        return arr

    @classmethod
    def from_config(
        cls, cfg: Any, split: str, class_names: Sequence[str] | None = None, with_masks: bool = False
    ) -> AGD20KTest:
        """The test set of ``split`` as a :class:`utils.config.Config` describes it (``cfg.data``, GT cache too).

        ``reduced_decode``, ``depth_root`` and ``resize`` come from ``cfg.data``.
        """
        return cls(
            cfg.data.root,
            split=split,
            image_size=cfg.data.image_size,
            eval_size=cfg.data.eval_size,
            class_names=class_names,
            with_masks=with_masks,
            cache_dir=cfg.data.gt_cache or None,
            reduced_decode=cfg.data.reduced_decode,
            depth_root=cfg.data.depth_root or None,
            resize=cfg.data.resize,
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, aff, obj, _ = self.items[index]
        item = {"label": self._label[aff], "affordance": aff, "object": obj, "path": path}
        try:
            item.update(self._load(index))
            item.update(readable=True, problem="")
        except (ValueError, OSError) as err:  # decoding failed although the file passed the structural check
            e, s = self.eval_size, self.image_size
            item.update(
                image=torch.zeros(3, s, s), gt=torch.zeros(e, e, dtype=torch.float64), readable=False, problem=str(err)
            )
            if self.depth_root is not None:
                item.update(depth=torch.zeros(1, s, s))
            if self.with_masks:
                item.update(object_mask=torch.zeros(e, e), part_mask=torch.zeros(e, e))
            if path not in {u.split(": ", 1)[0] for u in self.unreadable}:
                self.unreadable.append(f"{path}: {err}")
                logger.warning("Unreadable test item left out of the evaluation: %s", err)
        return item

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        """Decode one item's image, GT map and masks (raises ValueError/OSError when a file cannot be read)."""
        path, _, _, gt_path = self.items[index]
        min_side = self.image_size if self.reduced_decode else None
        if self._gt_cache is not None:
            gt = np.array(self._gt_cache[index], dtype=np.float64)  # copy out of the memory map
        else:
            gt = resize_gt(read_gt(gt_path), self.eval_size)
        out = {
            "image": to_tensor(read_image(path, min_side=min_side), self.image_size, self.resize),  # (3, S, S)
            "gt": torch.from_numpy(gt),  # (E, E) float64
        }
        if self.depth_root is not None:
            depth = read_depth(depth_path(path, self.root, self.depth_root))
            out["depth"] = eval_depth(depth, self.image_size, self.resize)
        if self.with_masks:
            obj_mask, part_mask = self._mask_paths[index]
            out["object_mask"] = torch.from_numpy(read_mask(obj_mask, self.eval_size))  # (E, E)
            out["part_mask"] = torch.from_numpy(read_mask(part_mask, self.eval_size))  # (E, E)
        return out


def _file_problem(item: tuple[str, str, str, str]) -> tuple[str, str] | None:
    """(file, reason) when the test image or its GT map fails the structural check, else None."""
    for path in (item[0], item[3]):
        problem = image_file_problem(path)
        if problem is not None:
            return path, problem
    return None
