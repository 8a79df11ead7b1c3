"""An interactive page: pick or upload an image, choose an affordance (or type a phrase), see the heatmap.

Usage (needs the optional ``pip install -r requirements-demo.txt``)::

    python -m utils.inference.demo --checkpoint runs/<run>/Seen/last.pth          # http://127.0.0.1:7860
    python -m utils.inference.demo --checkpoint CKPT --samples /data/AGD20K --port 8080

The page shows the heatmap over the image, the top-k affordances with their probabilities and, when the image is a
training sample picked from the list (egocentric images under ``<samples>/<split>/trainset/``), the ``gt_aff_cam`` of
exocentric images of the same affordance and object: where the model sees the interaction in people's hands.

It is built with Gradio Blocks and runs offline: analytics off, no share link, no server-side rendering, system fonts
instead of web fonts. :class:`DemoBackend` holds everything but the page, so that it can be used and tested without
Gradio.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TOP_PREDICTION", "DemoBackend", "Sample", "build_app", "find_samples", "main"]

logger = logging.getLogger(__name__)

#: The affordance choice that shows the model's own most probable class.
TOP_PREDICTION = "(most probable)"


@dataclass(frozen=True)
class Sample:
    """An egocentric training image and the exocentric images of the same affordance and object."""

    key: str
    ego: Path
    affordance: str
    obj: str
    exo: tuple[Path, ...]


def find_samples(root: str | Path, split: str = "", per_folder: int = 1, limit: int = 200, num_exo: int = 3):
    """Training samples under an AGD20K-layout root: ``per_folder`` egocentric images per affordance/object folder.

    Args:
        root: the dataset root (holding ``Seen/``, ``Unseen/``).
        split: the split to read (default: the first of Seen, Unseen that exists).
        per_folder: egocentric images taken from each folder.
        limit: at most this many samples.
        num_exo: exocentric images kept per sample.

    Returns:
        A list of :class:`Sample` (empty when the root has no training images).
    """
    from datasets.images import is_image_file

    root = Path(root)
    splits = [split] if split else ["Seen", "Unseen"]
    for s in splits:
        ego_root = root / s / "trainset" / "egocentric"
        exo_root = root / s / "trainset" / "exocentric"
        if not ego_root.is_dir():
            continue
        samples = []
        for aff_dir in sorted(p for p in ego_root.iterdir() if p.is_dir()):
            for obj_dir in sorted(p for p in aff_dir.iterdir() if p.is_dir()):
                exo_dir = exo_root / aff_dir.name / obj_dir.name
                exo = (
                    tuple(sorted(p for p in exo_dir.iterdir() if is_image_file(p))[:num_exo])
                    if exo_dir.is_dir()
                    else ()
                )
                for ego in sorted(p for p in obj_dir.iterdir() if is_image_file(p))[:per_folder]:
                    key = f"{aff_dir.name} / {obj_dir.name} / {ego.name}"
                    samples.append(Sample(key, ego, aff_dir.name, obj_dir.name, exo))
                    if len(samples) >= limit:
                        return samples
        return samples
    return []


def _display(rgb: np.ndarray, long: int = 768) -> np.ndarray:
    """The image shrunk to at most ``long`` pixels on its longer side, for the page."""
    import cv2

    h, w = rgb.shape[:2]
    if max(h, w) <= long:
        return rgb
    s = long / max(h, w)
    return cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


class DemoBackend:
    """What the page calls: prediction, the top-k, a sample's exocentric maps (no Gradio needed).

    Args:
        predictor: a :class:`utils.inference.predictor.Predictor`.
        samples: training samples offered in the list (see :func:`find_samples`).
        top_k: affordances listed with their probabilities.
    """

    def __init__(self, predictor: Any, samples: Sequence[Sample] = (), top_k: int = 5) -> None:
        self.predictor = predictor
        self.samples = {s.key: s for s in samples}
        self.top_k = max(1, min(int(top_k), len(predictor.class_names)))

    @property
    def choices(self) -> list[str]:
        return [TOP_PREDICTION, *self.predictor.class_names]

    def load_sample(self, key: str | None) -> tuple[np.ndarray | None, str | None]:
        """The picked sample's egocentric image and its key (which the page remembers until an upload)."""
        if not key or key not in self.samples:
            return None, None
        return self.predictor.load_image(self.samples[key].ego), key

    def predict(
        self, image: np.ndarray | None, affordance: str | None, phrase: str = "", sample_key: str | None = None
    ) -> tuple[np.ndarray | None, dict[str, float], list[tuple[np.ndarray, str]], str]:
        """Everything the page shows for one image.

        Args:
            image: (H, W, 3) uint8 RGB, or None before an image is chosen.
            affordance: a class name, or :data:`TOP_PREDICTION`.
            phrase: a free phrase (open-vocabulary models); when given it wins over ``affordance``.
            sample_key: the training sample the image is, if it was picked from the list.

        Returns:
            The heatmap overlay, {affordance: probability} of the top-k, the exocentric (overlay, caption) pairs,
            and a status line.
        """
        from utils.inference.predictor import UnknownAffordanceError
        from utils.viz.draw import overlay

        if image is None:
            return None, {}, [], "Upload an image or pick a training sample."
        query = phrase.strip() if phrase and phrase.strip() else affordance
        if query in (None, "", TOP_PREDICTION):
            query = None
        try:
            result = self.predictor.predict(image, affordance=query, top_k=1)
        except UnknownAffordanceError as e:
            return None, {}, [], f"**{e}**"
        name = result.affordances[0][0]
        heat = result.maps[0] if query is not None else result.maps[0][0]  # (H, W)
        shown = _display(np.asarray(image))
        picture = overlay(shown, heat)
        top = dict(result.top_k(self.top_k)[0])
        exo, note = self._exo(sample_key)
        status = f"Heatmap of **{name}** ({shown.shape[1]}x{shown.shape[0]}). {note}".strip()
        return picture, top, exo, status

    def _exo(self, sample_key: str | None) -> tuple[list[tuple[np.ndarray, str]], str]:
        """The sample's exocentric images with their gt_aff_cam (the map of the sample's label)."""
        from utils.viz.draw import overlay

        sample = self.samples.get(sample_key or "")
        if sample is None or not sample.exo:
            return [], ""
        if sample.affordance not in self.predictor.class_names:
            return [], f"The sample's affordance '{sample.affordance}' is not a class of this model."
        images = [self.predictor.load_image(p) for p in sample.exo]
        maps = self.predictor.exo_maps(images, sample.affordance, ego=self.predictor.load_image(sample.ego))
        pairs = [
            (overlay(_display(im, 384), m), f"{p.name}: gt_aff_cam [{sample.affordance}]")
            for im, m, p in zip(images, maps, sample.exo)
        ]
        return pairs, f"Training sample ({sample.affordance} / {sample.obj}): exocentric gt_aff_cam below."


# ----------------------------------------------------------------------------------------------------------- page


def _offline_environment() -> None:
    """Keep Gradio from reaching the internet (telemetry, version checks) before it is imported."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("GRADIO_SSR_MODE", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _theme() -> Any:
    """Gradio's default theme with system fonts (its default loads web fonts, which an offline page cannot)."""
    import gradio as gr

    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "Consolas", "monospace"]
    )


def build_app(backend: DemoBackend, title: str = "Affordance grounding") -> Any:
    """The Gradio Blocks page for ``backend`` (not launched).

    Element ids (for tests and custom CSS): ``image``, ``affordance``, ``phrase``, ``sample``, ``run``, ``heatmap``,
    ``topk``, ``exo``, ``status``.
    """
    _offline_environment()
    import gradio as gr

    predictor = backend.predictor
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(
            f"## {title}\n{len(predictor.class_names)} affordances"
            + (f", trained on {predictor.split}" if predictor.split else "")
            + ". Upload an image or pick a training sample, choose an affordance"
            + (" or type a phrase" if predictor.open_vocabulary else "")
            + "."
        )
        sample_state = gr.State(None)
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    type="numpy", sources=["upload", "clipboard"], label="image", height=320, elem_id="image"
                )
                affordance = gr.Dropdown(
                    backend.choices, value=TOP_PREDICTION, label="affordance", elem_id="affordance"
                )
                phrase = gr.Textbox(
                    label="or a phrase (open vocabulary)",
                    placeholder="e.g. grasp the handle",
                    visible=predictor.open_vocabulary,
                    elem_id="phrase",
                )
                sample = gr.Dropdown(
                    list(backend.samples),
                    value=None,
                    label="training samples",
                    visible=bool(backend.samples),
                    elem_id="sample",
                )
                run = gr.Button("Predict", variant="primary", elem_id="run")
            with gr.Column():
                heatmap = gr.Image(type="numpy", label="heatmap", interactive=False, height=320, elem_id="heatmap")
                topk = gr.Label(num_top_classes=backend.top_k, label="top-k affordances", elem_id="topk")
                status = gr.Markdown(elem_id="status")
        exo = gr.Gallery(
            label="exocentric images: gt_aff_cam",
            columns=4,
            height=260,
            object_fit="contain",
            preview=False,
            allow_preview=False,
            elem_id="exo",
        )

        inputs = [image, affordance, phrase, sample_state]
        outputs = [heatmap, topk, exo, status]
        run.click(backend.predict, inputs, outputs)
        # an upload replaces a picked sample: forget the sample, then predict
        image.upload(lambda: None, None, sample_state).then(backend.predict, inputs, outputs)
        sample.input(backend.load_sample, [sample], [image, sample_state]).then(backend.predict, inputs, outputs)
        affordance.input(backend.predict, inputs, outputs)
        phrase.submit(backend.predict, inputs, outputs)
    return app


# ----------------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m utils.inference.demo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="A checkpoint of train.py, or a LOCATE state dict.")
    p.add_argument(
        "--samples",
        default=None,
        metavar="ROOT",
        help="Dataset root whose training samples the page lists (default: the config's data.root when it exists).",
    )
    p.add_argument("--host", default="127.0.0.1", help="Address to serve on (127.0.0.1: this machine only).")
    p.add_argument("--port", type=int, default=7860, help="Port (7860).")
    p.add_argument("--top-k", type=int, default=5, help="Affordances listed with their probabilities (5).")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N.")
    p.add_argument("--config", default=None, help="For a LOCATE state dict: the config of its architecture.")
    p.add_argument("--backbone-weights", default=None, help="A local ViT weight file, when the model file lacks it.")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="Config overrides.")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the page until interrupted; returns 2 for a bad model file or a missing Gradio."""
    args = parse_args(argv)
    _offline_environment()
    from utils.config import ConfigError
    from utils.engine.checkpoint import CheckpointError, CheckpointMismatchError
    from utils.engine.runtime import setup_logging
    from utils.inference.predictor import Predictor

    setup_logging(None)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the demo needs Gradio: pip install -r requirements-demo.txt", file=sys.stderr)
        return 2
    try:
        predictor = Predictor.from_checkpoint(
            args.checkpoint, args.device, args.backbone_weights, args.config, args.overrides
        )
    except (ConfigError, CheckpointError, CheckpointMismatchError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    root = args.samples or (predictor.cfg.data.root if predictor.cfg is not None else None)
    samples = find_samples(root, predictor.split) if root and Path(root).is_dir() else []
    logger.info("%d training samples listed from %s", len(samples), root)
    app = build_app(DemoBackend(predictor, samples, args.top_k))
    app.queue().launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        ssr_mode=False,
        theme=_theme(),
        footer_links=[],
        quiet=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
