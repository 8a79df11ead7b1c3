"""``python -m utils.viz.cam``: CAM methods side by side for one image, or every internal map of our grounder."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.viz.cam.methods import explain
from utils.viz.cam.targets import logits_of

__all__ = [
    "main",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------- CLI
_TV_ARCHS = ("resnet18", "resnet34", "resnet50")


def _build_classifier(arch: str, weights: str | None, num_classes: int, image_size: int) -> nn.Module:
    """A torchvision ResNet or any timm model, with random weights unless a state-dict file is given."""
    if arch in _TV_ARCHS:
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    else:
        import timm

        kwargs: dict[str, Any] = {"num_classes": num_classes}
        if "vit" in arch or "deit" in arch:
            kwargs.update(img_size=image_size, dynamic_img_size=True)
        model = timm.create_model(arch, pretrained=False, **kwargs)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"--weights: no such file {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
            state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            logger.warning("weights %s: %d missing, %d unexpected keys", path, len(missing), len(unexpected))
    return model.eval()


def _default_layer(model: nn.Module) -> str:
    if hasattr(model, "layer4"):
        return "layer4"
    if hasattr(model, "blocks"):
        return "blocks.-1.norm1"
    raise ValueError("no default target layer for this model: pass --layer NAME")


def _read_image(path: str | Path, size: int) -> tuple[np.ndarray, torch.Tensor]:
    """Read an image as (uint8 RGB at size x size, (1, 3, size, size) ImageNet-normalised tensor)."""
    from datasets.images import denormalize, read_image, to_tensor

    tensor = to_tensor(read_image(path), size)  # (3, S, S)
    return denormalize(tensor), tensor[None]


_METHOD_TITLES = {
    "cam": "CAM",
    "gradcam": "Grad-CAM",
    "gradcampp": "Grad-CAM++",
    "scorecam": "Score-CAM",
    "xgradcam": "XGrad-CAM",
    "layercam": "Layer-CAM",
    "eigencam": "Eigen-CAM",
    "hirescam": "HiResCAM",
    "eigengradcam": "EigenGrad-CAM",
}


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m utils.viz.cam",
        description="Write a side-by-side picture of CAM methods for one image, for a torchvision/timm classifier "
        "or (with --checkpoint) a panel of every internal map of our grounder.",
    )
    p.add_argument("--image", required=True, help="image file to explain")
    p.add_argument("--out", required=True, help="PNG to write (folders are created)")
    p.add_argument(
        "--arch",
        default="resnet18",
        help="resnet18|resnet34|resnet50 (torchvision) or any timm name, e.g. vit_small_patch16_224 (default resnet18)",
    )
    p.add_argument("--weights", default=None, help="state-dict file (.pth/.safetensors); random weights without it")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier width (1000 for ImageNet weights)")
    p.add_argument(
        "--methods",
        default="cam,gradcam,gradcampp,scorecam",
        help=f"comma-separated, from {','.join(_METHOD_TITLES)} (default cam,gradcam,gradcampp,scorecam)",
    )
    p.add_argument("--layer", default=None, help="target layer name (default layer4 for ResNets, blocks.-1.norm1)")
    p.add_argument("--class-index", type=int, default=None, help="class to explain (default: the predicted one)")
    p.add_argument("--image-size", type=int, default=224, help="input side length (default 224)")
    p.add_argument("--colormap", default="jet", help="colour map name (default jet)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--checkpoint", default=None, help="our grounder's checkpoint: draw its panel instead")
    p.add_argument("--affordance", default=None, help="with --checkpoint: the affordance name to ground")
    p.add_argument(
        "--exo",
        nargs="+",
        default=None,
        metavar="IMAGE",
        help="with --checkpoint: exocentric images of the affordance (people using the object); the panel then also "
        "shows their gt_aff_cam and the part-prototype similarity maps with their scores",
    )
    return p


def _methods_picture(args: argparse.Namespace) -> np.ndarray:
    from utils.viz.draw import overlay
    from utils.viz.layout import add_label, append_colorbar, make_grid

    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in _METHOD_TITLES]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; choose from {sorted(_METHOD_TITLES)}")
    device = torch.device(args.device)
    model = _build_classifier(args.arch, args.weights, args.num_classes, args.image_size).to(device)
    rgb, x = _read_image(args.image, args.image_size)
    x = x.to(device)
    layer = args.layer or _default_layer(model)
    is_vit = hasattr(model, "patch_embed")
    with torch.no_grad():
        probs = torch.softmax(logits_of(model(x)).float(), dim=-1)[0]
    cls = int(probs.argmax()) if args.class_index is None else args.class_index
    if not 0 <= cls < probs.numel():
        raise ValueError(f"--class-index {cls} outside [0, {probs.numel()})")

    tiles = [rgb]
    titles = ["input"]
    for method in methods:
        if method == "cam" and is_vit:
            raise ValueError("--methods cam needs a GAP + linear head on a feature grid (a CNN); drop it for a ViT")
        cam = explain(
            model,
            x,
            method,
            [layer] if method != "cam" else [args.layer or _default_layer(model)],
            targets=cls,
            reshape_transform="vit" if is_vit else None,
        )[0]
        tiles.append(overlay(rgb, cam, args.colormap))
        titles.append(_METHOD_TITLES[method])
    grid = make_grid([tiles], col_labels=titles)
    weights = f"weights {Path(args.weights).name}" if args.weights else "RANDOM weights (no --weights)"
    title = f"{args.arch} @ {layer}, class {cls} (p={float(probs[cls]):.2f}), {weights}"
    return add_label(append_colorbar(grid, args.colormap), title)


def _grounder_panel(args: argparse.Namespace) -> np.ndarray:
    from models.affordances import class_index, unknown_affordance_message
    from utils.engine.checkpoint import build_model_from_checkpoint
    from utils.viz.panels import model_panel

    if not args.affordance:
        raise ValueError("--checkpoint needs --affordance NAME (one of the model's class names)")
    model, cfg, class_names = build_model_from_checkpoint(args.checkpoint, device=args.device)
    index = class_index(args.affordance, class_names)
    if index is None:
        raise ValueError(f"--affordance: {unknown_affordance_message(args.affordance, class_names)}")
    _, x = _read_image(args.image, cfg.data.image_size)
    x = x.to(args.device)
    if not args.exo:
        out = model.predict(x, labels=[index])
        return model_panel(x[0], out, class_names, index, colormap=args.colormap)
    # With exocentric images, one forward pass as in training: the exo CAMs and the part prototypes join the panel.
    exo = torch.cat([_read_image(path, cfg.data.image_size)[1] for path in args.exo])  # (n, 3, S, S)
    label = torch.tensor([index], device=x.device)
    model.eval()
    with torch.no_grad():
        out = model({"exo": exo[None].to(x.device), "ego": x, "label": label})  # exo (1, n, 3, S, S)
    return model_panel(x[0], out, class_names, index, exo=exo, colormap=args.colormap)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m utils.viz.cam --image X --out out.png [--arch ...] [--methods ...]``."""
    args = _build_parser().parse_args(argv)
    if args.exo and not args.checkpoint:
        raise ValueError("--exo needs --checkpoint (exocentric images only enter our grounder's panel)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from utils.viz.draw import save_png

    picture = _grounder_panel(args) if args.checkpoint else _methods_picture(args)
    path = save_png(args.out, picture)
    print(f"wrote {path} ({picture.shape[1]}x{picture.shape[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
