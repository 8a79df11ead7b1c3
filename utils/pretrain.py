"""Self-supervised (DINO) pretraining of a small ViT on unlabeled synthetic images, for the offline proof.

Nothing can be downloaded here, and a frozen *random* ViT has no objectness in its CLS attention, which is what
LOCATE's part selection relies on. This script gives the small offline ViT that property the way DINO gave it to
ViT-S/16 on ImageNet: self-distillation between a student and an EMA teacher over multi-crop views, with
centring and sharpening of the teacher output (Caron et al., ICCV 2021). It uses no labels, no affordances and no
masks: the images are freshly rendered by the synthetic world's generator from their own seed stream, so they
are none of the files of any proof world (``data.synthetic.seed`` 0, 1, 2 ...). Like ImageNet for AGD20K, they
show every object category, the Unseen split's held-out objects included; they never show an affordance label.

After training it measures what was wanted, on separately rendered validation images that do carry object
masks: the IoU of each last-block CLS-attention head, binarised at its mean as LOCATE does, with the object, for
the random initialisation and for the trained teacher. It writes the teacher backbone as ``.safetensors`` (timm
names; load it with ``model.backbone.weights``) and a JSON report beside it.

    python -m utils.pretrain --out weights/synthetic_vit_dino.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from datasets.synthetic import OBJECT_SPECS, render_ego, render_exo, world_layout
from models.backbone import ViTBackbone
from utils.runtime import seed_everything, setup_logging

__all__ = ["DINOHead", "DINOLoss", "MultiCrop", "cls_attention_objectness", "main", "pretrain", "render_pool"]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Seed streams far from any world seed a user is likely to pick (worlds use seeds 0, 1, 2, ...).
_TRAIN_STREAM = 7_000_001
_VAL_STREAM = 7_000_002


# ---------------------------------------------------------------------------------------------------- images
def _render_one(job: tuple[str, str, str, int, int, int]) -> np.ndarray:
    kind, aff, obj, size, stream, index = job
    rng = np.random.default_rng([stream, index])
    if kind == "ego":
        return render_ego(obj, size, rng)[0]
    return render_exo(aff, obj, size, rng)


def _render_val(job: tuple[str, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    obj, size, stream, index = job
    image, masks = render_ego(obj, size, np.random.default_rng([stream, index]))
    union = np.zeros(image.shape[:2], np.uint8)
    for m in masks.values():
        union |= m
    return image, union


def render_pool(num: int, size: int, stream: int = _TRAIN_STREAM, workers: int = 2) -> torch.Tensor:
    """Render ``num`` unlabeled images (half egocentric, half exocentric, every (affordance, object) pair).

    Returns:
        (N, 3, size, size) uint8 RGB images.
    """
    pairs = world_layout().seen_pairs
    jobs = []
    for i in range(num):
        aff, obj = pairs[i % len(pairs)]
        jobs.append(("ego" if i % 2 == 0 else "exo", aff, obj, size, stream, i))
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        images = list(tqdm(pool.map(_render_one, jobs, chunksize=32), total=num, desc="render", leave=False))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)


# ---------------------------------------------------------------------------------------------------- views
class MultiCrop:
    """DINO's multi-crop, batched: two global and several local views of uint8 images, normalised floats.

    Each view is a random-resized crop (``roi_align`` on the whole batch at once), a horizontal flip, colour
    jitter (brightness, contrast, saturation) with probability 0.8 and grayscale with probability 0.2, all drawn
    per image from ``generator``.
    """

    def __init__(
        self,
        global_size: int,
        local_size: int,
        num_local: int,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.1, 0.4),
        generator: torch.Generator | None = None,
    ) -> None:
        self.global_size, self.local_size, self.num_local = global_size, local_size, num_local
        self.global_scale, self.local_scale = global_scale, local_scale
        self.gen = generator if generator is not None else torch.Generator().manual_seed(0)
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def _rand(self, n: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.gen)

    def view(self, images: torch.Tensor, size: int, scale: tuple[float, float]) -> torch.Tensor:
        """One augmented view of every image: (B, 3, S, S) float in [0, 1] -> (B, 3, size, size) normalised."""
        from torchvision.ops import roi_align

        b, _, hgt, wid = images.shape
        area = self._rand(b, *scale) * hgt * wid
        log_r = self._rand(b, math.log(3 / 4), math.log(4 / 3))
        cw = torch.sqrt(area * torch.exp(log_r)).clamp(4, wid)
        ch = torch.sqrt(area / torch.exp(log_r)).clamp(4, hgt)
        x0 = self._rand(b) * (wid - cw)
        y0 = self._rand(b) * (hgt - ch)
        boxes = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], 1)  # (B, 5)
        out = roi_align(images, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        flip = self._rand(b) < 0.5
        out[flip] = out[flip].flip(-1)
        jitter = (self._rand(b) < 0.8).view(b, 1, 1, 1)
        bright = self._rand(b, 0.6, 1.4).view(b, 1, 1, 1)
        contrast = self._rand(b, 0.6, 1.4).view(b, 1, 1, 1)
        sat = self._rand(b, 0.8, 1.2).view(b, 1, 1, 1)
        j = out * bright
        j = (j - j.mean(dim=(1, 2, 3), keepdim=True)) * contrast + j.mean(dim=(1, 2, 3), keepdim=True)
        jg = (j * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        j = (j - jg) * sat + jg
        out = torch.where(jitter, j, out).clamp(0, 1)
        to_gray = (self._rand(b) < 0.2).view(b, 1, 1, 1)
        gray = (out * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        out = torch.where(to_gray, gray.expand_as(out), out)
        return (out - self.mean) / self.std

    def __call__(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) uint8 -> [global (B, 3, G, G) x 2, local (B, 3, L, L) x num_local]."""
        images = batch.float() / 255.0
        views = [self.view(images, self.global_size, self.global_scale) for _ in range(2)]
        views += [self.view(images, self.local_size, self.local_scale) for _ in range(self.num_local)]
        return views


# ---------------------------------------------------------------------------------------------------- model
class DINOHead(nn.Module):
    """Projection head: 3-layer MLP, L2-normalised bottleneck, then a prototype layer with unit-norm weights."""

    def __init__(self, in_dim: int, out_dim: int = 1024, hidden: int = 512, bottleneck: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        self.prototypes = nn.Parameter(torch.randn(out_dim, bottleneck) * 0.02)  # (K, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim) cosine scores in [-1, 1] (DINO's weight-normalised last layer, g = 1)."""
        z = F.normalize(self.mlp(x), dim=-1)  # (B, d)
        return F.linear(z, F.normalize(self.prototypes, dim=-1))


class _Net(nn.Module):
    def __init__(self, vit: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.vit, self.head = vit, head

    def forward(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """Views grouped by resolution through the ViT (CLS output) and the head; (V * B, out_dim)."""
        outs = []
        i = 0
        while i < len(views):  # consecutive views of the same size go through the ViT together
            j = i
            while j < len(views) and views[j].shape[-1] == views[i].shape[-1]:
                j += 1
            outs.append(self.vit(torch.cat(list(views[i:j]))))  # (n * B, E): the CLS token (num_classes=0)
            i = j
        return self.head(torch.cat(outs))


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student, over all cross-view pairs."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, teacher_temp: float = 0.04, momentum: float = 0.9):
        super().__init__()
        self.student_temp, self.teacher_temp, self.momentum = student_temp, teacher_temp, momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, num_views: int) -> torch.Tensor:
        """student (V * B, K) for all V views, teacher (2 * B, K) for the two global views; scalar loss."""
        s = (student / self.student_temp).chunk(num_views)
        t = F.softmax((teacher - self.center) / self.teacher_temp, dim=-1).detach().chunk(2)
        total, n = student.new_zeros(()), 0
        for it, tq in enumerate(t):
            for iv, sv in enumerate(s):
                if iv == it:
                    continue  # a view never predicts itself
                total = total + torch.sum(-tq * F.log_softmax(sv, dim=-1), dim=-1).mean()
                n += 1
        with torch.no_grad():
            self.center.mul_(self.momentum).add_(teacher.mean(0, keepdim=True), alpha=1 - self.momentum)
        return total / n


# ---------------------------------------------------------------------------------------------------- measure
@torch.no_grad()
def cls_attention_objectness(backbone: ViTBackbone, images: torch.Tensor, masks: torch.Tensor) -> list[float]:
    """Mean IoU, per head, of the last block's CLS attention binarised at its mean with the object mask.

    Args:
        backbone: the frozen ViT wrapper the grounder uses, so the CLS attention is computed by the model's own code.
        images: (N, 3, S, S) normalised images, S a multiple of the patch.
        masks: (N, S, S) bool object masks.

    Returns:
        One mean IoU per head of the last block.
    """
    ious = []
    for start in range(0, len(images), 64):
        attn = backbone(images[start : start + 64])["cls_attn"]  # (b, heads, h, w)
        up = F.interpolate(attn, size=masks.shape[-2:], mode="bilinear", align_corners=False)  # (b, heads, S, S)
        binar = up > up.mean(dim=(-2, -1), keepdim=True)
        m = masks[start : start + 64, None]  # (b, 1, S, S)
        inter = (binar & m).sum(dim=(-2, -1)).float()
        union = (binar | m).sum(dim=(-2, -1)).float().clamp_min(1)
        ious.append(inter / union)  # (b, heads)
    return torch.cat(ious).mean(0).tolist()


def _validation_set(num: int, size: int, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    objs = sorted(OBJECT_SPECS)
    jobs = [(objs[i % len(objs)], size, _VAL_STREAM, i) for i in range(num)]
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        out = list(pool.map(_render_val, jobs, chunksize=16))
    images = torch.from_numpy(np.stack([o[0] for o in out])).permute(0, 3, 1, 2)  # (N, 3, S, S) uint8
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    masks = torch.from_numpy(np.stack([o[1] for o in out]) > 127)  # (N, S, S)
    return (images.float() / 255.0 - mean) / std, masks


# ---------------------------------------------------------------------------------------------------- train
def _cosine(step: int, total: int, start: float, end: float, warmup: int = 0) -> float:
    """Cosine from ``start`` (at ``warmup``) to ``end`` (at ``total``)."""
    t = min(1.0, max(0, step - warmup) / max(1, total - warmup))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))


def pretrain(args: argparse.Namespace) -> dict[str, Any]:
    """Train the student/teacher pair, measure objectness before and after, write weights and report."""
    seed_everything(args.seed)
    torch.set_num_threads(max(1, args.threads))
    kwargs = json.loads(args.kwargs)
    student_vit = ViTBackbone(args.arch, descriptor="token", trainable=True, img_size=args.global_size, **kwargs).vit
    # the teacher is frozen (EMA updates only): the grounder's wrapper, which also measures its CLS attention
    teacher_bb = ViTBackbone(args.arch, descriptor="token", trainable=False, img_size=args.global_size, **kwargs)
    dim = student_vit.embed_dim
    student = _Net(student_vit, DINOHead(dim, args.out_dim))
    teacher = _Net(teacher_bb.vit, DINOHead(dim, args.out_dim))
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    teacher.eval()

    t0 = time.perf_counter()
    val_images, val_masks = _validation_set(args.val_images, args.global_size, args.workers)
    iou_random = cls_attention_objectness(teacher_bb, val_images, val_masks)
    logger.info("CLS-attention objectness of the random init (IoU per head): %s", _fmt(iou_random))
    pool = render_pool(args.images, args.render_size, workers=args.workers)
    logger.info("rendered %d unlabeled images in %.0f s", len(pool), time.perf_counter() - t0)

    crops = MultiCrop(
        args.global_size, args.local_size, args.num_local, generator=torch.Generator().manual_seed(args.seed)
    )
    criterion = DINOLoss(args.out_dim, teacher_temp=args.teacher_temp)
    decay = [p for n, p in student.named_parameters() if p.ndim > 1 and "pos_embed" not in n and "token" not in n]
    no_decay = [
        p for n, p in student.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n and "token" not in n)
    ]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    warmup = max(1, args.steps // 10)
    history = []
    bar = tqdm(range(args.steps), desc="dino", dynamic_ncols=True, disable=args.no_progress)
    t_train = time.perf_counter()
    for step in bar:
        lr = args.lr * (step + 1) / warmup if step < warmup else _cosine(step, args.steps, args.lr, 1e-6, warmup)
        wd = _cosine(step, args.steps, args.weight_decay, args.weight_decay_end)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.param_groups[0]["weight_decay"] = wd
        idx = torch.randint(len(pool), (args.batch_size,), generator=gen)
        views = crops(pool[idx])
        with torch.no_grad():
            t_out = teacher(views[:2])  # (2B, K)
        s_out = student(views)  # (V * B, K)
        loss = criterion(s_out, t_out, len(views))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"DINO loss is {loss.item()} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        opt.step()
        m = 1 - (1 - args.momentum) * (math.cos(math.pi * step / args.steps) + 1) / 2  # -> 1 at the end
        with torch.no_grad():
            for ps, pt in zip(student.parameters(), teacher.parameters(), strict=True):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)
            probs = F.softmax((t_out - criterion.center) / args.teacher_temp, dim=-1)
            entropy = float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean())
        history.append({"step": step, "loss": loss.item(), "teacher_entropy": entropy, "lr": lr})
        bar.set_postfix(loss=f"{loss.item():.3f}", H=f"{entropy:.2f}")
        if args.no_progress and (step % 50 == 0 or step == args.steps - 1):
            logger.info("step %d/%d loss %.4f teacher entropy %.3f", step, args.steps, loss.item(), entropy)
    train_s = time.perf_counter() - t_train

    iou_trained = cls_attention_objectness(teacher_bb, val_images, val_masks)
    logger.info("CLS-attention objectness after DINO (IoU per head): %s", _fmt(iou_trained))
    order = sorted(range(len(iou_trained)), key=lambda h: -iou_trained[h])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in teacher.vit.state_dict().items()}
    tmp = out.with_name(out.name + ".tmp")
    save_file(state, str(tmp), metadata={"arch": args.arch, "kwargs": args.kwargs, "img_size": str(args.global_size)})
    tmp.replace(out)
    report = {
        "weights": str(out),
        "arch": args.arch,
        "kwargs": kwargs,
        "img_size": args.global_size,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "images": args.images,
        "train_seconds": round(train_s, 1),
        "objectness_iou_random_init": iou_random,
        "objectness_iou_trained": iou_trained,
        "heads_by_objectness": order,
        "final_loss": history[-1]["loss"],
        "final_teacher_entropy": history[-1]["teacher_entropy"],
        "command": " ".join(sys.argv),
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote %s (%.1f MB) and %s", out, out.stat().st_size / 2**20, out.with_suffix(".json"))
    return report


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + f"] mean {float(np.mean(values)):.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (``python -m utils.pretrain --help``)."""
    p = argparse.ArgumentParser(
        prog="python -m utils.pretrain",
        description="DINO self-supervised pretraining of a small ViT on unlabeled synthetic images (offline proof).",
    )
    p.add_argument("--out", required=True, help="output .safetensors (a JSON report is written beside it)")
    p.add_argument("--arch", default="vit_small_patch16_224", help="timm architecture (kwargs make it small)")
    p.add_argument(
        "--kwargs",
        default='{"patch_size": 8, "embed_dim": 128, "depth": 3, "num_heads": 4}',
        help="timm.create_model kwargs as JSON; must match model.backbone.kwargs of the config that loads it",
    )
    p.add_argument("--global-size", type=int, default=96, help="global crop side (= data.image_size)")
    p.add_argument("--local-size", type=int, default=48, help="local crop side")
    p.add_argument("--num-local", type=int, default=4, help="local crops per image")
    p.add_argument("--render-size", type=int, default=128, help="side of the rendered images")
    p.add_argument("--images", type=int, default=4096, help="unlabeled images to render")
    p.add_argument("--val-images", type=int, default=256, help="masked validation images for the objectness IoU")
    p.add_argument("--steps", type=int, default=1500, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.04)
    p.add_argument("--weight-decay-end", type=float, default=0.2)
    p.add_argument("--momentum", type=float, default=0.99, help="teacher EMA momentum at the start (cosine to 1)")
    p.add_argument("--teacher-temp", type=float, default=0.04)
    p.add_argument("--out-dim", type=int, default=1024, help="prototypes of the DINO head")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="processes for rendering")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    args = p.parse_args(argv)
    setup_logging()
    pretrain(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
