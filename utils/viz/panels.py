"""Pictures of the model's internal maps: the per-sample panel and the training-batch picture."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from models.affordances import class_index, unknown_affordance_message
from utils.maps import normalize_minmax
from utils.viz.draw import colorize, overlay, resize_image, to_uint8_image
from utils.viz.layout import add_label, append_colorbar, make_grid

__all__ = [
    "model_panel",
    "training_panel",
]

logger = logging.getLogger(__name__)


def training_panel(
    outputs: Mapping[str, Any], batch: Mapping[str, Any], class_names: Sequence[str], num: int
) -> np.ndarray:
    """One picture of the first ``num`` samples of a training batch: for each, :func:`model_panel`.

    Shows the egocentric prediction beside its pseudo-GT, the exocentric images with their ``gt_aff_cam``, the
    saliency and selected head, and the part similarity maps with their scores.
    """
    labels = batch["label"].tolist()
    panels = [
        [model_panel(batch["ego"][i], outputs, class_names, int(labels[i]), exo=batch["exo"][i], index=i)]
        for i in range(min(num, len(labels)))
    ]
    return make_grid(panels)


# ------------------------------------------------------------------------------------------------- model panel
def _sample(outputs: Mapping[str, Any], key: str, index: int) -> torch.Tensor | None:
    value = outputs.get(key)
    if value is None:
        return None
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    return t[index].detach().cpu()


def _norm(m: torch.Tensor) -> torch.Tensor:
    return normalize_minmax(m.float(), dims=2)


def model_panel(
    image: np.ndarray | torch.Tensor,
    outputs: Mapping[str, Any],
    class_names: Sequence[str],
    label: int | str,
    exo: Sequence[np.ndarray | torch.Tensor] | torch.Tensor | None = None,
    index: int = 0,
    colormap: str | int = "jet",
    tile_size: tuple[int, int] = (160, 160),
    alpha: float = 0.5,
) -> np.ndarray:
    """Draw, for one sample, every internal map of the grounder that ``outputs`` holds, each labelled.

    Rows (each only when its keys are present; the keys of ``Grounder.forward`` and ``Grounder.predict``):
        - ego: the image, ``ego_pred`` (label channel; else ``maps``, predict's upsampled map), ``saliency``,
          ``attnpool_mask``;
        - exo: each exocentric image with its ``gt_aff_cam`` (the bare map when ``exo`` is not given);
        - CLS attention: every head of ``cls_attn``, the ``selected_head`` marked;
        - head masks: every head of ``head_masks``;
        - parts: every ``part_sim`` map with its ``part_scores``, the best part marked (and whether it became
          the prototype, from ``has_prototype``).

    Every map is min-max normalised per map (:func:`utils.maps.normalize_minmax`) before colouring, so colours
    compare within a map, not across maps; the colour bar on the right gives the scale.

    Args:
        image: the egocentric image (any format of :func:`to_uint8_image`); a batch is not accepted.
        outputs: ``Grounder.forward`` or ``Grounder.predict`` output (batched tensors).
        class_names: the class names of the model (for the title).
        label: the affordance to show, an index into ``class_names`` or a name.
        exo: the sample's exocentric images, (n, 3, H, W) normalised tensor or a list of images.
        index: which sample of the batch ``outputs`` describes.
        colormap: colour map name.
        tile_size: (H, W) of every tile.
        alpha: heatmap weight in the overlays.

    Returns:
        ``uint8`` RGB picture.
    """
    if isinstance(label, str):
        found = class_index(label, class_names)
        if found is None:
            raise ValueError(f"model_panel: {unknown_affordance_message(label, class_names)}")
        label_idx, label_name = found, class_names[found]
    else:
        label_idx = int(label)
        if not 0 <= label_idx < len(class_names):
            raise ValueError(f"model_panel: label index {label_idx} outside [0, {len(class_names)})")
        label_name = class_names[label_idx]
    rgb = resize_image(to_uint8_image(image), tile_size)

    def ov(m: torch.Tensor, base: np.ndarray = rgb) -> np.ndarray:
        return overlay(base, _norm(m).numpy(), colormap, alpha)

    def tile(img: np.ndarray, text: str) -> np.ndarray:
        # Resize before labelling so that every title is drawn at the same font size.
        return add_label(resize_image(img, tile_size), text)

    rows: list[list[np.ndarray]] = []
    row_labels: list[str] = []

    # ---- ego row
    ego_row = [tile(rgb, label_name)]
    ego_pred = _sample(outputs, "ego_pred", index)  # (C, h, w)
    if ego_pred is not None:
        ego_row.append(tile(ov(ego_pred[label_idx]), f"ego_pred [{label_name}]"))
    maps = _sample(outputs, "maps", index)  # (H', W')
    if maps is not None and maps.dim() == 2 and ego_pred is None:  # predict's maps are ego_pred[label], upsampled
        ego_row.append(tile(ov(maps), "prediction"))
    saliency = _sample(outputs, "saliency", index)
    if saliency is not None:
        ego_row.append(tile(ov(saliency), "saliency"))
    pool = _sample(outputs, "attnpool_mask", index)
    if pool is not None:
        ego_row.append(tile(ov(pool), "attnpool mask"))
    rows.append(ego_row)
    row_labels.append("ego")

    # ---- exo row
    gt_aff = _sample(outputs, "gt_aff_cam", index)  # (n, h, w)
    if gt_aff is not None:
        if exo is not None and len(exo) != gt_aff.shape[0]:
            raise ValueError(f"model_panel: {len(exo)} exo images for {gt_aff.shape[0]} gt_aff_cam maps")
        exo_row = []
        for j in range(gt_aff.shape[0]):
            if exo is not None:
                img = ov(gt_aff[j], base=resize_image(to_uint8_image(exo[j]), tile_size))
            else:
                img = colorize(_norm(gt_aff[j]).numpy(), colormap)
            exo_row.append(tile(img, f"exo {j}: gt_aff_cam"))
        rows.append(exo_row)
        row_labels.append("exo")

    # ---- CLS attention heads
    selected = _sample(outputs, "selected_head", index)
    sel = int(selected) if selected is not None else None
    attn = _sample(outputs, "cls_attn", index)  # (heads, h, w)
    if attn is not None:
        tiles = []
        for k in range(attn.shape[0]):
            tiles.append(tile(ov(attn[k]), f"head {k}" + (" (selected)" if sel == k else "")))
        rows.append(tiles)
        row_labels.append("CLS attn" + ("\n(fixed heads)" if sel == -1 else ""))
    masks = _sample(outputs, "head_masks", index)  # (heads, h, w)
    if masks is not None:
        rows.append([tile(ov(masks[k]), f"mask {k}") for k in range(masks.shape[0])])
        row_labels.append("head masks")

    # ---- parts
    part_sim = _sample(outputs, "part_sim", index)  # (K, h, w)
    if part_sim is not None:
        scores = _sample(outputs, "part_scores", index)  # (K,)
        has_proto = _sample(outputs, "has_prototype", index)
        best = int(scores.argmax()) if scores is not None and scores.numel() else None
        tiles = []
        for k in range(part_sim.shape[0]):
            text = f"part {k}"
            if scores is not None:
                text += f" p={float(scores[k]):.2f}"
            if best == k:
                text += " (proto)" if has_proto is None or bool(has_proto) else " (best, no proto)"
            tiles.append(tile(ov(part_sim[k]), text))
        rows.append(tiles)
        row_labels.append("parts")

    # Titles may wrap to different heights: pad every tile at the bottom to the tallest.
    tile_h = max(t.shape[0] for row in rows for t in row)
    rows = [[np.pad(t, ((0, tile_h - t.shape[0]), (0, 0), (0, 0)), constant_values=255) for t in row] for row in rows]
    grid = make_grid(rows, row_labels=row_labels, pad=4)

    title = f"affordance: {label_name}"
    logits = _sample(outputs, "logits_ego", index)
    if logits is None:
        logits = _sample(outputs, "logits", index)
    if logits is not None and logits.numel() == len(class_names):
        probs = torch.softmax(logits.float(), dim=0)
        top = int(probs.argmax())
        title += (
            f"   predicted: {class_names[top]} ({float(probs[top]):.2f}), p[{label_name}]={float(probs[label_idx]):.2f}"
        )
    return add_label(append_colorbar(grid, colormap, labels=("0", "0.5", "1")), title, font_scale=0.6)
