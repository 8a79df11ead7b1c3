"""DINO pretraining script: views, loss, objectness measure, and a tiny end-to-end run whose weights load."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from models.backbone import ViTBackbone
from utils.pretrain import DINOHead, DINOLoss, MultiCrop, cls_attention_objectness, main

TINY = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def test_multicrop_shapes_normalisation_and_determinism() -> None:
    images = (torch.rand(5, 3, 40, 40) * 255).to(torch.uint8)
    a = MultiCrop(32, 16, 3, generator=torch.Generator().manual_seed(1))(images)
    b = MultiCrop(32, 16, 3, generator=torch.Generator().manual_seed(1))(images)
    c = MultiCrop(32, 16, 3, generator=torch.Generator().manual_seed(2))(images)
    assert [tuple(v.shape) for v in a] == [(5, 3, 32, 32)] * 2 + [(5, 3, 16, 16)] * 3
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    # values are ImageNet-normalised [0, 1] pixels
    lo = (0 - 0.485) / 0.229
    hi = (1 - 0.406) / 0.225
    assert all(float(v.min()) >= lo - 1e-5 and float(v.max()) <= hi + 1e-5 for v in a)


def test_multicrop_full_crop_of_constant_image_keeps_colour_up_to_jitter() -> None:
    grey = torch.full((4, 3, 24, 24), 128, dtype=torch.uint8)
    views = MultiCrop(16, 8, 1, global_scale=(1.0, 1.0))(grey)
    # a constant image stays constant inside each view whatever the crop, flip and jitter
    for v in views:
        assert torch.allclose(v, v[..., :1, :1].expand_as(v), atol=1e-5)


def test_dino_loss_is_cross_entropy_over_other_views_and_updates_centre() -> None:
    torch.manual_seed(0)
    k, b = 6, 3
    student = torch.randn(4 * b, k)
    teacher = torch.randn(2 * b, k)
    loss_fn = DINOLoss(k, student_temp=0.1, teacher_temp=0.04, momentum=0.9)
    loss = loss_fn(student, teacher, num_views=4)
    s = student.chunk(4)
    t = teacher.chunk(2)
    terms = []
    for it in range(2):
        p = F.softmax(t[it] / 0.04, -1)  # centre is zero before the first update
        for iv in range(4):
            if iv != it:
                terms.append(-(p * F.log_softmax(s[iv] / 0.1, -1)).sum(-1).mean())
    assert torch.isclose(loss, torch.stack(terms).mean(), atol=1e-6)
    assert torch.allclose(loss_fn.center, 0.1 * teacher.mean(0, keepdim=True), atol=1e-6)


def test_dino_head_scores_are_cosines() -> None:
    head = DINOHead(16, out_dim=10, hidden=8, bottleneck=4)
    with torch.no_grad():
        out = head(torch.randn(7, 16))
    assert out.shape == (7, 10)
    assert float(out.abs().max()) <= 1 + 1e-5


def test_objectness_matches_hand_computed_iou() -> None:
    torch.manual_seed(0)
    bb = ViTBackbone("vit_small_patch16_224", descriptor="token", img_size=32, **TINY)
    images = torch.randn(3, 3, 32, 32)
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 4:20] = True
    ious = cls_attention_objectness(bb, images, masks)
    attn = bb(images)["cls_attn"]  # (3, 2, 4, 4)
    up = F.interpolate(attn, size=(32, 32), mode="bilinear", align_corners=False)
    binar = up > up.mean(dim=(-2, -1), keepdim=True)
    m = masks[:, None]
    expected = ((binar & m).sum((-2, -1)).float() / (binar | m).sum((-2, -1)).float()).mean(0)
    assert len(ious) == 2
    assert ious == pytest.approx(expected.tolist(), abs=1e-6)


def test_tiny_pretraining_run_writes_loadable_weights_and_report(tmp_path) -> None:
    out = tmp_path / "w.safetensors"
    rc = main(
        [
            "--out", str(out), "--kwargs", json.dumps(TINY), "--global-size", "32", "--local-size", "16",
            "--num-local", "2", "--render-size", "40", "--images", "24", "--val-images", "8", "--steps", "4",
            "--batch-size", "4", "--out-dim", "32", "--workers", "1", "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["steps"] == 4
    assert len(report["objectness_iou_trained"]) == 2
    assert sorted(report["heads_by_objectness"]) == [0, 1]
    assert all(0 <= v <= 1 for v in report["objectness_iou_random_init"] + report["objectness_iou_trained"])
    assert math.isfinite(report["final_loss"])
    # the model loads the file through the normal backbone path, at another input size
    bb = ViTBackbone("vit_small_patch16_224", weights=out, descriptor="token", img_size=48, **TINY)
    assert bb(torch.randn(1, 3, 48, 48))["cls_attn"].shape == (1, 2, 6, 6)
