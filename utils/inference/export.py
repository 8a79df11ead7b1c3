"""Export the inference graph (frozen ViT + heads) to ONNX, check it against PyTorch, and time both on the CPU.

Usage::

    python -m utils.inference.export --checkpoint CKPT --out model.onnx                       # all classes
    python -m utils.inference.export --checkpoint CKPT --out hold.onnx --affordance hold      # one class
    python -m utils.inference.export --checkpoint CKPT --out model.onnx --benchmark 20        # + images/s

The graph takes ``images`` (b, 3, S, S), ImageNet-normalised, S = the config's ``data.image_size``, b free. Outputs:

- all classes: ``cams`` (b, C, h, w), the class maps on the patch grid (after the prediction post-process, before
  min-max), and ``logits`` (b, C); with ``--maps`` also ``maps`` (b, C, S, S) in [0, 1];
- one class (``--affordance``): ``heatmap`` (b, S, S) in [0, 1], its raw ``cam`` (b, h, w), and ``logits`` (b, C).
  With text gating the egocentric features depend on the class: its text feature (or a free phrase's, with its class
  mixture weights) is computed once here and baked into the graph, so the text tower is not part of it.

Label-free graphs of text-gated models follow :meth:`models.grounder.Grounder.predict`: the gate is conditioned on
the class an ungated pass predicts. A ``<out>.json`` sidecar holds the class names, the input size and the
normalisation; :mod:`utils.inference.onnx_runner` runs the pair with ONNX Runtime and numpy only.

The check feeds the same random inputs to PyTorch and to ONNX Runtime (CPU) and reports the largest absolute
difference of every output; the command fails (exit 1) when one exceeds ``--tolerance`` (1e-4).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import einsum
from torch import nn

from datasets.images import IMAGENET_MEAN, IMAGENET_STD
from models.text import phrase_key
from utils.maps import normalize_minmax

__all__ = ["InferenceGraph", "benchmark", "check_onnx", "export_onnx", "main"]

logger = logging.getLogger(__name__)

SIDECAR_FORMAT = "wsag-onnx-v1"
EXPORTERS = ("torchscript", "dynamo")


class InferenceGraph(nn.Module):
    """The prediction path of a :class:`models.grounder.Grounder` as one traceable module.

    Args:
        model: the grounder (eval mode).
        image_size: the input side S.
        query: None for every class, or one class name / phrase (a phrase needs a text encoder).
        with_maps: with ``query=None``, also output every class's map at the input size, in [0, 1].
    """

    def __init__(self, model: nn.Module, image_size: int, query: str | None = None, with_maps: bool = False):
        super().__init__()
        self.model = model
        self.size = (int(image_size), int(image_size))
        self.query = query
        self.with_maps = with_maps
        self.gated = getattr(model, "gate", None) is not None
        self.index: int | None = None
        self.register_buffer("text", None)
        self.register_buffer("cond", None)
        self.register_buffer("weights", None)
        with torch.no_grad():
            if query is None:
                if self.gated:  # every class's text feature, indexed by the ungated prediction in the graph
                    self.text = model.text.class_features().detach().clone()  # (C, D)
            else:
                idx, weights, cond = model.resolve_labels([query], 1, next(model.parameters()).device)
                if weights is None:
                    self.index = int(idx[0])
                else:  # a free phrase: the mixture of the class maps its text is closest to
                    self.weights = weights[0].detach().clone()  # (C,)
                if cond is not None:
                    self.cond = cond[0].detach().clone()  # (D,)
        self.eval()

    def train(self, mode: bool = True) -> InferenceGraph:
        """Always eval mode: the exporter's restore of the caller's mode must not switch BatchNorm to batch stats."""
        return super().train(False)

    @property
    def output_names(self) -> list[str]:
        if self.query is not None:
            return ["heatmap", "cam", "logits"]
        return ["cams", "logits", "maps"] if self.with_maps else ["cams", "logits"]

    def _postprocess(self, maps: torch.Tensor, ego_pred: torch.Tensor) -> torch.Tensor:
        post = self.model.postprocess  # the grounder's prediction post-process (e.g. the object prior), if any
        return post(maps, ego_pred) if post is not None else maps

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        feats = m.encode(images)
        desc, cls_attn = feats.descriptors, feats.cls_attn
        b = images.shape[0]
        cond = None
        if self.cond is not None:
            cond = self.cond.unsqueeze(0).expand(b, -1)  # (b, D)
        elif self.text is not None:
            ungated = m.aff_fc(m.aff_ego_proj(m.aff_proj.forward_grid(desc)))  # (b, C, h, w)
            cond = self.text[m.pool(ungated).argmax(dim=1)]  # (b, D)
        ego = m.ego_branch(desc, cls_attn, cond)
        ego_pred = ego.ego_pred.float()  # (b, C, h, w)
        if self.query is None:
            cams = self._postprocess(ego_pred, ego.ego_pred)
            if not self.with_maps:
                return cams, ego.logits
            maps = normalize_minmax(F.interpolate(cams, size=self.size, mode="bilinear", align_corners=False))
            return cams, ego.logits, maps
        if self.weights is None:
            cam = ego_pred[:, self.index]  # (b, h, w)
        else:
            cam = einsum(self.weights.to(ego_pred.dtype), ego_pred, "c, b c h w -> b h w")
        cam = self._postprocess(cam.unsqueeze(1), ego.ego_pred)  # (b, 1, h, w)
        up = F.interpolate(cam, size=self.size, mode="bilinear", align_corners=False)
        return normalize_minmax(up.squeeze(1)), cam.squeeze(1), ego.logits


def export_onnx(
    graph: InferenceGraph,
    path: str | Path,
    batch: int = 2,
    opset: int = 17,
    exporter: str = "torchscript",
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``graph`` to ``path`` (batch axis dynamic) and its sidecar ``<path>.json``.

    Args:
        graph: the :class:`InferenceGraph`.
        path: the ``.onnx`` file.
        batch: the batch size of the example input that is traced.
        opset: the ONNX opset (torchscript exporter; the dynamo exporter picks its own, at least 18).
        exporter: ``torchscript`` (torch.onnx's tracing exporter, fast) or ``dynamo`` (torch.export + onnxscript).
        metadata: more entries for the sidecar.

    Returns:
        The path of the graph.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(graph.parameters()).device
    x = torch.randn(batch, 3, *graph.size, device=device)
    names = graph.output_names
    t0 = time.perf_counter()
    with torch.no_grad():
        if exporter == "torchscript":
            import warnings

            axes = {"images": {0: "batch"}, **{n: {0: "batch"} for n in names}}
            with warnings.catch_warnings():  # the tracer's notes on Python ints taken from shapes (fixed S is meant)
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    graph,
                    (x,),
                    str(path),
                    input_names=["images"],
                    output_names=names,
                    dynamic_axes=axes,
                    opset_version=opset,
                    dynamo=False,
                )
        else:
            dim = torch.export.Dim("batch", min=1, max=4096)
            program = torch.onnx.export(
                graph,
                (x,),
                input_names=["images"],
                output_names=names,
                dynamic_shapes={"images": {0: dim}},
                dynamo=True,
                verbose=False,
            )
            program.save(str(path))
    logger.info("exported %s with the %s exporter in %.1f s", path, exporter, time.perf_counter() - t0)
    model = graph.model
    meta = {
        "format": SIDECAR_FORMAT,
        "class_names": list(model.class_names),
        "image_size": graph.size[0],
        "grid": list(model.backbone.grid_size(*graph.size)),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "affordance": graph.query,
        "inputs": {"images": ["batch", 3, *graph.size]},
        "outputs": names,
        "exporter": exporter,
        "opset": opset if exporter == "torchscript" else None,
        "torch_version": str(torch.__version__),
        **(metadata or {}),
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_onnx(
    graph: InferenceGraph, path: str | Path, batches: Sequence[int] = (1, 3), seed: int = 0
) -> dict[str, float]:
    """The largest absolute difference between PyTorch and ONNX Runtime (CPU) on the same random inputs.

    Inputs are random normal images (the range of normalised pixels), one batch of each size in ``batches`` (sizes
    other than the traced one check the dynamic batch axis).

    Returns:
        ``{output name: max |onnx - torch|}`` over all batches.
    """
    session = _session(Path(path), threads=None)
    g = torch.Generator().manual_seed(seed)
    worst = dict.fromkeys(graph.output_names, 0.0)
    device = next(graph.parameters()).device
    for b in batches:
        x = torch.randn(b, 3, *graph.size, generator=g)
        with torch.no_grad():
            ref = graph(x.to(device))
        got = session.run(graph.output_names, {"images": x.numpy()})
        for name, r, o in zip(graph.output_names, ref, got):
            if o.shape != tuple(r.shape):
                raise AssertionError(f"ONNX output {name} has shape {o.shape}, PyTorch {tuple(r.shape)}")
            worst[name] = max(worst[name], float(np.abs(o - r.float().cpu().numpy()).max()))
    return worst


def benchmark(graph: InferenceGraph, path: str | Path, batch: int = 8, iters: int = 10, warmup: int = 2) -> dict:
    """Images/s of the graph in PyTorch (CPU, fp32, no-grad) and in ONNX Runtime (CPU), same threads and inputs."""
    threads = torch.get_num_threads()
    session = _session(Path(path), threads=threads)
    cpu_graph = graph.to("cpu")
    x = torch.randn(batch, 3, *graph.size, generator=torch.Generator().manual_seed(0))
    xn = x.numpy()

    def rate(fn: Any) -> float:
        for _ in range(warmup):
            fn()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return batch * iters / (time.perf_counter() - t0)

    with torch.no_grad():
        torch_rate = rate(lambda: cpu_graph(x))
    onnx_rate = rate(lambda: session.run(None, {"images": xn}))
    return {
        "batch": batch,
        "iters": iters,
        "threads": threads,
        "torch_images_per_s": round(torch_rate, 2),
        "onnxruntime_images_per_s": round(onnx_rate, 2),
        "speedup": round(onnx_rate / torch_rate, 3),
    }


# --------------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m utils.inference.export",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="A checkpoint of train.py, or a LOCATE state dict.")
    p.add_argument("--out", required=True, help="The .onnx file to write (its .json sidecar goes beside it).")
    p.add_argument(
        "--affordance",
        default=None,
        metavar="NAME",
        help="Export the graph of one class (a class name; any phrase with a CLIP text encoder). Default: all classes.",
    )
    p.add_argument("--maps", action="store_true", help="All classes: also output the (b, C, S, S) maps in [0, 1].")
    p.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="torchscript",
        help="torch.onnx's tracing exporter (default: fast, needs only onnx) or the dynamo one (needs onnxscript).",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset for the torchscript exporter (17).")
    p.add_argument("--tolerance", type=float, default=1e-4, help="Largest allowed |ONNX - PyTorch| (1e-4, fp32).")
    p.add_argument("--no-check", action="store_true", help="Skip the ONNX Runtime check.")
    p.add_argument(
        "--benchmark", type=int, default=0, metavar="N", help="Time N batches in PyTorch and ONNX Runtime (CPU)."
    )
    p.add_argument("--batch-size", type=int, default=8, help="Batch size of the benchmark (8).")
    p.add_argument("--config", default=None, help="For a LOCATE state dict: the config of its architecture.")
    p.add_argument("--backbone-weights", default=None, help="A local ViT weight file, when the model file lacks it.")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="Config overrides.")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Export, check and optionally time; returns 0, 1 (the check failed) or 2 (a bad model file or option)."""
    args = parse_args(argv)
    from utils.config import ConfigError
    from utils.engine.checkpoint import CheckpointError, CheckpointMismatchError
    from utils.engine.runtime import setup_logging
    from utils.inference.loading import load_model
    from utils.inference.predictor import Predictor, UnknownAffordanceError

    setup_logging(None)
    try:
        loaded = load_model(args.checkpoint, "cpu", args.config, args.overrides, args.backbone_weights)
        query = None
        if args.affordance is not None:
            query = Predictor.from_loaded(loaded).resolve_affordance(args.affordance)
        graph = InferenceGraph(loaded.model, loaded.cfg.data.image_size, query, with_maps=args.maps)
        if query is not None and phrase_key(query) not in {phrase_key(c) for c in loaded.class_names}:
            logger.info("'%s' is baked in as a phrase: its map mixes the class maps by text similarity", query)
    except (ConfigError, CheckpointError, CheckpointMismatchError, FileNotFoundError, UnknownAffordanceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        import onnx  # noqa: F401  (the exporters need it)
    except ImportError:
        print("error: ONNX export needs the onnx package: pip install -r requirements-export.txt", file=sys.stderr)
        return 2
    meta = {"checkpoint": str(args.checkpoint), "split": loaded.split, "checkpoint_kind": loaded.kind}
    path = export_onnx(graph, args.out, opset=args.opset, exporter=args.exporter, metadata=meta)
    report: dict[str, Any] = {"onnx": str(path), "outputs": graph.output_names}
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) and {path.with_suffix('.json')}")
    status = 0
    if not args.no_check:
        diffs = check_onnx(graph, path)
        report["max_abs_diff"] = diffs
        worst = max(diffs.values())
        ok = worst <= args.tolerance
        print(
            "ONNX Runtime vs PyTorch, max |difference|: "
            + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
            + (f"  (within {args.tolerance:g})" if ok else f"  EXCEEDS {args.tolerance:g}")
        )
        status = 0 if ok else 1
    if args.benchmark > 0:
        rates = benchmark(graph, path, batch=args.batch_size, iters=args.benchmark)
        report["benchmark"] = rates
        print(
            f"images/s on the CPU ({rates['threads']} threads, batch {rates['batch']}): PyTorch "
            f"{rates['torch_images_per_s']}, ONNX Runtime {rates['onnxruntime_images_per_s']} "
            f"(x{rates['speedup']})"
        )
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "export_report": report}, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
