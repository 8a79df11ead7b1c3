"""Tiny runs for the inference tests: a synthetic world, a config, checkpoints of random models, a LOCATE file.

Not a test module: ``tests/test_inference_*.py`` import it (pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.locate_compat import interleaved_to_head_major

TINY_CONFIG = """\
data:
  root: {root}
  splits: [Seen]
  image_size: 32
  resize_size: 32
  eval_size: 32
  num_exo: 2
  num_workers: 0
  synthetic: {{enabled: true, image_size: 40, exo_per_folder: 2, ego_per_folder: 1, test_per_folder: 1}}
model:
  backbone:
    name: vit_small_patch16_224
    kwargs: {{img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}}
  cls_heads: [0, 1]
  num_parts: 2
  kmeans_iters: 5
eval: {{batch_size: 8}}
device: cpu
output: {{dir: {run}}}
"""


def make_tiny_run(base: Path, class_names: list[str] | None = None, extra: list[str] = ()) -> dict[str, object]:
    """A generated world, its config and a checkpoint of a freshly initialised tiny model.

    Args:
        base: an empty folder.
        class_names: the model's classes (default: the world's Seen classes).
        extra: config overrides (e.g. a text encoder).

    Returns:
        ``world`` (root), ``config`` (YAML path), ``checkpoint`` (path), ``class_names``, ``cfg`` and ``model``.
    """
    from datasets.agd20k import load_class_names
    from datasets.synthetic import ensure_world
    from models.build import build_model
    from utils.config import load_config
    from utils.engine.checkpoint import save_checkpoint

    base.mkdir(parents=True, exist_ok=True)
    cfg_path = base / "tiny.yaml"
    cfg_path.write_text(TINY_CONFIG.format(root=base / "world", run=base / "run"))
    cfg = load_config(cfg_path, list(extra))
    s = cfg.data.synthetic
    ensure_world(
        cfg.data.root, s.seed, s.image_size, s.exo_per_folder, s.ego_per_folder, s.test_per_folder, progress=False
    )
    names = list(class_names) if class_names is not None else load_class_names(cfg.data.root, "Seen")
    torch.manual_seed(0)
    model = build_model(cfg, names).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that eval-mode arithmetic is exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    ckpt = save_checkpoint(
        base / "run" / "Seen" / "last.pth", model=model, cfg=cfg, class_names=names, epoch=0, step=0, split="Seen"
    )
    return {
        "world": Path(cfg.data.root),
        "config": cfg_path,
        "checkpoint": ckpt,
        "class_names": names,
        "cfg": cfg,
        "model": model,
    }


# Parameters whose dimension (the value) indexes descriptor channels, as in models/locate_compat.py.
_DESCRIPTOR_AXES = {
    "aff_proj.norm.weight": 0,
    "aff_proj.norm.bias": 0,
    "aff_proj.fc1.weight": 1,
    "aff_proj.fc2.weight": 0,
    "aff_proj.fc2.bias": 0,
    "aff_exo_proj.0.weight": 1,
    "aff_ego_proj.0.weight": 1,
}


def to_locate_state_dict(model: torch.nn.Module, with_vit: bool = True) -> dict[str, torch.Tensor]:
    """A Grounder's weights as LOCATE's code saves them: ``vit_model.*`` and channels in LOCATE's interleaved order.

    The inverse of :func:`models.locate_compat.convert_locate_state_dict`, so that loading the result must give
    back the same model.
    """
    backbone = model.backbone
    inverse = torch.argsort(interleaved_to_head_major(backbone.num_heads, backbone.head_dim))
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("backbone.vit."):
            if with_vit:
                out["vit_model." + key[len("backbone.vit.") :]] = value.clone()
            continue
        axis = _DESCRIPTOR_AXES.get(key)
        out[key] = value.index_select(axis, inverse).clone() if axis is not None else value.clone()
    return out
