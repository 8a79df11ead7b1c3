"""The outputs of folder and video inference: overlay PNGs, raw maps, an overlay video, and the manifest.

:class:`OutputWriter` writes each (image, affordance) overlay and map on worker threads while the model runs (maps
as one ``.npy`` each, or gathered into one ``maps.npz`` when it closes) and an overlay video frame by frame on the
calling thread. :func:`input_record` and :func:`prediction_record` give the manifest entry of an unreadable or a
predicted input, :func:`build_manifest` the whole manifest with counts and timings, and :func:`write_manifest`
writes it as ``manifest.json`` and ``manifest.csv`` (one row per input and affordance).
"""

from __future__ import annotations

import csv
import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from utils.inference.sources import Item, safe_name

__all__ = ["OutputWriter", "build_manifest", "input_record", "prediction_record", "write_manifest"]

_CSV_FIELDS = (
    "file",
    "frame",
    "status",
    "affordance",
    "rank",
    "probability",
    "predicted",
    "predicted_probability",
    "overlay",
    "map",
    "height",
    "width",
    "error",
)


class OutputWriter:
    """Writes overlays and maps on worker threads; an overlay video on the calling thread (frames are ordered)."""

    def __init__(self, out: Path, pool: ThreadPoolExecutor, maps: str, dtype: str, overlays: bool) -> None:
        self.out, self.pool, self.maps, self.dtype, self.overlays = out, pool, maps, np.dtype(dtype), overlays
        self.pending: list[Future] = []
        self.npz: dict[str, np.ndarray] = {}
        self.video: cv2.VideoWriter | None = None
        self.video_path: Path | None = None

    def write(self, name: str, affordance: str, rgb: np.ndarray, heat: np.ndarray) -> tuple[str | None, str | None]:
        """Queue the overlay and map of one (image, affordance); returns their file names (relative to out)."""
        tag = f"{name}_{safe_name(affordance)}"
        overlay_name = f"{tag}.png" if self.overlays else None
        map_name = {"npy": f"{tag}.npy", "npz": f"maps.npz:{tag}", "none": None}[self.maps]
        stored = heat.astype(self.dtype)
        if self.maps == "npz":
            self.npz[tag] = stored
        self.pending.append(self.pool.submit(self._write, tag, rgb, heat, stored))
        if len(self.pending) > 64:  # bound the memory held by queued pictures
            self._drain(32)
        return overlay_name, map_name

    def _write(self, tag: str, rgb: np.ndarray, heat: np.ndarray, stored: np.ndarray) -> None:
        from utils.viz.draw import overlay, save_png

        if self.overlays:
            save_png(self.out / f"{tag}.png", overlay(rgb, heat))
        if self.maps == "npy":
            np.save(self.out / f"{tag}.npy", stored)

    def video_frame(self, path: Path, fps: float, rgb: np.ndarray, heat: np.ndarray) -> None:
        from utils.viz.draw import overlay

        frame = cv2.cvtColor(overlay(rgb, heat), cv2.COLOR_RGB2BGR)
        if self.video is None:
            h, w = frame.shape[:2]
            self.video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not self.video.isOpened():  # an OpenCV build without an MPEG-4 encoder: Motion-JPEG always works
                path = path.with_suffix(".avi")
                self.video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
            self.video_path = path
            self.video_size = (w, h)
        if frame.shape[1::-1] != self.video_size:
            frame = cv2.resize(frame, self.video_size, interpolation=cv2.INTER_AREA)
        self.video.write(frame)

    def _drain(self, keep: int = 0) -> None:
        while len(self.pending) > keep:
            self.pending.pop(0).result()  # re-raises a failed write (a full disk must not pass silently)

    def close(self) -> None:
        self._drain()
        if self.maps == "npz":
            np.savez_compressed(self.out / "maps.npz", **self.npz)
        if self.video is not None:
            self.video.release()


def input_record(item: Item, status: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"file": item.source, "status": status}
    if item.frame is not None:
        rec["frame"] = item.frame
    if item.error is not None:
        rec["error"] = item.error
    return rec


def prediction_record(
    item: Item, result: Any, i: int, queries: list[str] | None, writer: OutputWriter
) -> dict[str, Any]:
    """The manifest record of one predicted image, its outputs queued for writing."""
    probs = result.probs[i]
    names = result.class_names
    top = int(probs.argmax())
    rec = input_record(item, "ok")
    rec.update(
        height=int(item.rgb.shape[0]),
        width=int(item.rgb.shape[1]),
        predicted=names[top],
        predicted_probability=round(float(probs[top]), 6),
        predictions=[],
    )
    index = {n: j for j, n in enumerate(names)}
    for rank, (affordance, heat) in enumerate(zip(result.affordances[i], result.maps[i]), start=1):
        overlay_name, map_name = writer.write(item.name, affordance, item.rgb, heat)
        j = index.get(affordance)
        rec["predictions"].append(
            {
                "affordance": affordance,
                "rank": None if queries else rank,
                "probability": round(float(probs[j]), 6) if j is not None else None,  # None: a free phrase
                "overlay": overlay_name,
                "map": map_name,
            }
        )
    return rec


def build_manifest(
    predictor: Any,
    input_path: Path,
    out: Path,
    queries: list[str] | None,
    top_k: int,
    records: list[dict[str, Any]],
    ignored: list[str],
    seconds: float,
    model_seconds: float,
) -> dict[str, Any]:
    ok = sum(r["status"] == "ok" for r in records)
    unreadable = [f"{r['file']}: {r['error']}" for r in records if r["status"] == "unreadable"]
    return {
        "input": str(input_path),
        "kind": "video" if input_path.is_file() else "folder",
        "mode": "affordance" if queries else f"top-{top_k}",
        "affordances": queries,
        "top_k": None if queries else top_k,
        "class_names": list(predictor.class_names),
        "image_size": predictor.image_size,
        "counts": {"inputs": len(records), "predicted": ok, "unreadable": len(unreadable), "ignored": len(ignored)},
        "unreadable": unreadable,
        "ignored": ignored,
        "timing": {
            "seconds": round(seconds, 3),
            "images_per_s": round(ok / seconds, 3) if seconds > 0 else None,
            "model_seconds": round(model_seconds, 3),
            "model_images_per_s": round(ok / model_seconds, 3) if model_seconds > 0 else None,
        },
        "images": records,
    }


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=_CSV_FIELDS)
        w.writeheader()
        for rec in manifest["images"]:
            base = {k: rec.get(k) for k in ("file", "frame", "status", "height", "width", "error")}
            base.update(predicted=rec.get("predicted"), predicted_probability=rec.get("predicted_probability"))
            for p in rec.get("predictions") or [{}]:
                w.writerow({**base, **{k: p.get(k) for k in ("affordance", "rank", "probability", "overlay", "map")}})
