"""The tiny setups every test module builds on, defined once.

- Models: a 2-block, 32-wide, 2-head random ViT with 8-pixel patches on 32x32 inputs (a 4x4 patch grid), and the
  grounder ``models.build.build_model`` makes of it for a configuration (:func:`tiny_config`, ``make_grounder``).
- Data: one tiny synthetic world (40-pixel images; Seen: 28 training folders of 2 exocentric images, 28 test images),
  generated once per session; tests that change files copy it first.
- Runs: the overrides of a two-step-per-epoch training run on that world (``tiny_run_args``), one finished run with
  every output switched on, and one freshly initialised checkpoint, each made once per session.

The factories and the session-wide results are fixtures; the constants and plain helpers are imported by the test
modules (``from conftest import tiny_config``).
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# The tiny models work on tensors of a few kilobytes, where an OpenMP thread team costs more than it saves, and on a
# shared 2-core machine a busy second core makes every operation wait for it (measured: a training step 30 times
# slower than with one thread). Subprocesses started by the tests set OMP_NUM_THREADS=1 for the same reason.
torch.set_num_threads(1)

#: timm keyword arguments of the tiny ViT (img_size 32 stores the position embedding for a 4x4 grid).
TINY_VIT: dict[str, int] = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
#: The class names of the hand-made batches.
CLASS_NAMES: list[str] = ["cut_with", "hold", "pour"]
#: A one-layer open_clip text tower of the same width.
TINY_TEXT: dict[str, int] = {"width": 32, "layers": 1, "heads": 2, "context_length": 16}
#: The session's synthetic world.
WORLD: dict[str, int] = {"seed": 0, "image_size": 40, "exo_per_folder": 2, "ego_per_folder": 1, "test_per_folder": 1}
#: The ``model`` section of the tiny grounder: the tiny ViT (random weights), its two CLS heads, 10 k-means iterations.
TINY_MODEL: dict[str, Any] = {"backbone": {"kwargs": dict(TINY_VIT)}, "cls_heads": [0, 1], "kmeans_iters": 10}
#: The same as command-line overrides.
TINY_MODEL_ARGS: list[str] = [
    "model.backbone.kwargs={" + ", ".join(f"{k}: {v}" for k, v in TINY_VIT.items()) + "}",
    "model.cls_heads=[0,1]",
    "model.kmeans_iters=10",
]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, nested mappings merged key by key."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tiny_config(overrides: dict[str, Any] | None = None) -> Any:
    """The resolved :class:`utils.config.Config` of the tiny grounder (LOCATE's recipe, :data:`TINY_MODEL`) on 32x32
    inputs, with ``overrides`` merged in."""
    from utils.config import config_from_dict

    base = {"data": {"image_size": 32, "resize_size": 36, "eval_size": 32}, "model": TINY_MODEL}
    return config_from_dict(_merge(base, overrides or {}))


def tiny_config_file(
    path: Path, world: Path, splits: tuple[str, ...] = ("Seen",), overrides: dict[str, Any] | None = None
) -> Path:
    """Write a YAML configuration of the tiny grounder on ``world`` (the session's world: ``data.synthetic`` holds its
    parameters, so that the scripts reuse it), with ``overrides`` merged in; returns ``path``."""
    import yaml

    data = {"root": str(world), "splits": list(splits), "image_size": 32, "resize_size": 36, "eval_size": 32}
    data.update(num_workers=0, synthetic={"enabled": True, **WORLD})
    cfg = _merge({"data": data, "model": TINY_MODEL, "device": "cpu"}, overrides or {})
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def tiny_run_args(world: Path, out: Path, *extra: str) -> list[str]:
    """``train.py`` overrides for a run of the tiny ViT on ``world``: one epoch of two steps of two samples, two
    exocentric images each, evaluated at the end, no pictures, fp32 on the CPU."""
    return [
        f"data.root={world}",
        "data.synthetic.enabled=true",
        *(f"data.synthetic.{k}={v}" for k, v in WORLD.items()),
        "data.splits=[Seen]",
        "data.image_size=32",
        "data.resize_size=36",
        "data.eval_size=32",
        "data.num_exo=2",
        "data.num_workers=0",
        *TINY_MODEL_ARGS,
        "train.batch_size=2",
        "train.max_steps_per_epoch=2",
        "train.epochs=1",
        "train.log_every=1",
        "train.amp=off",
        "eval.batch_size=16",
        "eval.baselines=[]",
        "eval.viz=0",
        "viz.every=0",
        "output.tensorboard=false",
        "device=cpu",
        f"output.dir={out}",
        *extra,
    ]


# ------------------------------------------------------------------------------------------------- models


@pytest.fixture
def make_backbone() -> Callable[..., Any]:
    """``make_backbone(descriptor="key", name=..., seed=0, **timm_kwargs)``: a tiny random ViTBackbone."""
    from models.backbone import ViTBackbone

    def make(descriptor: str = "key", name: str = "vit_small_patch16_224", seed: int = 0, **kw: Any) -> ViTBackbone:
        torch.manual_seed(seed)
        return ViTBackbone(name, descriptor=descriptor, **{**TINY_VIT, **kw})

    return make


@pytest.fixture
def make_grounder() -> Callable[..., Any]:
    """``make_grounder(overrides=None, names=CLASS_NAMES, seed=0)``: ``build_model`` of :func:`tiny_config`."""
    from models.build import build_model

    def make(overrides: dict[str, Any] | None = None, names: list[str] | None = None, seed: int = 0) -> Any:
        torch.manual_seed(seed)
        return build_model(tiny_config(overrides), list(names or CLASS_NAMES))

    return make


@pytest.fixture
def make_batch() -> Callable[..., dict[str, torch.Tensor]]:
    """``make_batch(b=2, n=3, size=32, labels=None, seed=1)``: random exo/ego images and labels (default 0, 2, 1, 0,
    ...)."""

    def make(
        b: int = 2, n: int = 3, size: int = 32, labels: list[int] | None = None, seed: int = 1
    ) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        default = [(0, 2, 1)[i % 3] for i in range(b)]
        return {
            "exo": torch.randn(b, n, 3, size, size, generator=g),
            "ego": torch.randn(b, 3, size, size, generator=g),
            "label": torch.tensor(labels if labels is not None else default),
        }

    return make


# ------------------------------------------------------------------------------------------- data and runs


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's synthetic world (Seen and Unseen, :data:`WORLD`); copy it before changing it."""
    from datasets.synthetic import ensure_world

    return ensure_world(tmp_path_factory.mktemp("world") / "w", progress=False, **WORLD)


@pytest.fixture(scope="session")
def finished_run(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch, two-step run with every output switched on; copy it before resuming it."""
    import train

    out = tmp_path_factory.mktemp("run") / "full"
    args = tiny_run_args(tiny_world, out, "viz.every=2", "viz.num=1", "eval.viz=2", "eval.baselines=[center,object]")
    assert train.main([*args, "output.tensorboard=true"]) == 0
    return out


@pytest.fixture(scope="session")
def fresh_checkpoint(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised tiny grounder for the tiny world's Seen classes, saved as a Seen checkpoint."""
    from datasets.agd20k import load_class_names
    from models.build import build_model
    from utils.config import load_config
    from utils.engine.checkpoint import save_checkpoint

    base = tmp_path_factory.mktemp("fresh")
    cfg = load_config(None, tiny_run_args(tiny_world, base / "unused"))
    names = load_class_names(tiny_world, "Seen")
    torch.manual_seed(0)
    path = base / "run" / "Seen" / "last.pth"
    return save_checkpoint(
        path, model=build_model(cfg, names), cfg=cfg, class_names=names, epoch=0, step=0, split="Seen"
    )


@pytest.fixture(scope="session")
def script() -> ModuleType:
    """The repository's test.py, loaded from its file: `import test` could find the standard library's package."""
    spec = importlib.util.spec_from_file_location("wsag_test_script", REPO / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
