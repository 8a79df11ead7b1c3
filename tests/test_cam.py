"""utils.viz.cam: CAM on hand-computed values, agreement with grad-cam, the ViT path, hooks, boxes, the CLI."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import timm
import torch
import torchvision
from conftest import CLASS_NAMES, TINY_VIT, tiny_config
from torch import nn

from models.build import build_model
from models.extensions.centring import DescriptorCentring
from models.extensions.contrast import ClassPatchBank
from utils.maps import normalize_minmax
from utils.viz.cam import (
    CAM,
    AffordanceTarget,
    GrounderForCAM,
    box_iou,
    cam_to_boxes,
    capture_features,
    class_activation_map,
    explain,
    feature_heatmap,
    gap_scores,
    vit_reshape_transform,
)
from utils.viz.cam.cli import main


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


class GapNet(nn.Module):
    """conv 3x3 (stride 1, so the features keep the input size) -> GAP -> linear: the network CAM is defined for."""

    def __init__(self, k: int = 4, c: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, k, 3, padding=1), nn.Tanh())  # tanh: features of both signs
        self.fc = nn.Linear(k, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _tiny_vit(**kw) -> nn.Module:
    torch.manual_seed(0)
    args = {**TINY_VIT, "reg_tokens": 4, "dynamic_img_size": True, "num_classes": 3, **kw}
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()


# ----------------------------------------------------------------------------------------------------- CAM maths
def test_class_activation_map_worked_example():
    features = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[2.0, 3.0], [4.0, 5.0]], [[0.0, 1.0], [2.0, 3.0]]])[None]
    weight = torch.tensor([[0.5, 1.0, -0.2]])
    # By hand: 0.5*1 + 1.0*2 - 0.2*0 = 2.5;  0.5*2 + 1.0*3 - 0.2*1 = 3.8;
    #          0.5*3 + 1.0*4 - 0.2*2 = 5.1;  0.5*4 + 1.0*5 - 0.2*3 = 6.4.
    cam = class_activation_map(features, weight, torch.tensor([0]))
    torch.testing.assert_close(cam, torch.tensor([[[2.5, 3.8], [5.1, 6.4]]]))
    # The class score of GAP + linear is the spatial mean of the CAM: (2.5 + 3.8 + 5.1 + 6.4) / 4 = 4.45.
    torch.testing.assert_close(gap_scores(features, weight), torch.tensor([[4.45]]))
    torch.testing.assert_close(cam.mean(dim=(1, 2)), torch.tensor([4.45]))
    # A 1x1 conv weight gives the same; a bias shifts every location so that the mean is still the score.
    torch.testing.assert_close(class_activation_map(features, weight[:, :, None, None], torch.tensor([0])), cam)
    biased = class_activation_map(features, weight, torch.tensor([0]), bias=torch.tensor([1.0]))
    torch.testing.assert_close(biased, cam + 1.0)


def test_gap_scores_two_classes():
    # Channel means 2, 3, 1 (maps chosen non-constant: [[1, 3], [2, 2]] has mean 2, and so on).
    features = torch.tensor([[[1.0, 3.0], [2.0, 2.0]], [[3.0, 3.0], [0.0, 6.0]], [[1.0, 1.0], [1.0, 1.0]]])[None]
    weight = torch.tensor([[0.5, 1.0, -0.2], [-0.3, 0.8, 0.4]])
    # By hand: class 0: 0.5*2 + 1.0*3 - 0.2*1 = 1.0 + 3.0 - 0.2 = 3.8;
    #          class 1: -0.3*2 + 0.8*3 + 0.4*1 = -0.6 + 2.4 + 0.4 = 2.2.
    torch.testing.assert_close(gap_scores(features, weight), torch.tensor([[3.8, 2.2]]))
    torch.testing.assert_close(gap_scores(features, weight, torch.tensor([0.1, -0.2])), torch.tensor([[3.9, 2.0]]))
    both = class_activation_map(features.expand(2, -1, -1, -1), weight, torch.tensor([0, 1]))
    torch.testing.assert_close(both.mean(dim=(1, 2)), torch.tensor([3.8, 2.2]))


def test_class_activation_map_errors():
    f = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="takes 4 channels but the features have 3"):
        class_activation_map(f, torch.zeros(2, 4), torch.tensor([0]))
    with pytest.raises(ValueError, match="must be 1x1"):
        class_activation_map(f, torch.zeros(2, 3, 3, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 2\)"):
        class_activation_map(f, torch.zeros(2, 3), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"\(B, K, h, w\)"):
        class_activation_map(torch.zeros(3, 2, 2), torch.zeros(2, 3), torch.tensor([0]))


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_cam_class_on_resnet18_mean_is_the_logit(source):
    torch.manual_seed(0)
    if source == "torchvision":
        model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    else:
        model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    cam = CAM(model, target_layer="layer4", fc="fc")
    maps = cam(x, torch.tensor([1, 7]))
    assert maps.shape == (2, 2, 2)  # 64 / 32
    torch.testing.assert_close(maps.mean(dim=(1, 2)), cam.last_logits[[0, 1], [1, 7]], atol=1e-5, rtol=1e-5)
    predicted = cam(x)  # default: each image's predicted class
    torch.testing.assert_close(predicted.mean(dim=(1, 2)), cam.last_logits.max(dim=1).values, atol=1e-5, rtol=1e-5)
    assert _no_hooks(model)


def test_cam_errors():
    model = GapNet()
    with pytest.raises(ValueError, match=r"no submodule named 'fcc'.*did you mean fc"):
        CAM(model, target_layer="features", fc="fcc")
    with pytest.raises(TypeError, match=r"nn\.Linear or a 1x1 nn\.Conv2d"):
        CAM(model, target_layer="features", fc="features")


# ------------------------------------------------------------------------------------------- grad-cam agreement
def test_gradcam_equals_relu_cam_for_gap_linear():
    torch.manual_seed(3)
    model = GapNet().eval()
    x = torch.randn(2, 3, 8, 8)
    classes = torch.tensor([0, 2])
    cam = CAM(model, target_layer="features", fc="fc", use_bias=False)(x, classes)  # (2, 8, 8)
    assert (cam.amin(dim=(1, 2)) < 0).all() and (cam.amax(dim=(1, 2)) > 0).all()  # the ReLU matters
    # Grad-CAM weights are the mean gradients, w_k^c / (h w): Grad-CAM = ReLU(CAM) / (h w), a positive scale
    # that the min-max normalisation of both removes.
    grad = explain(model, x, "gradcam", ["features"], targets=classes.tolist())
    expected = normalize_minmax(cam.clamp_min(0)).numpy()
    assert grad.shape == (2, 8, 8) and grad.dtype == np.float32
    np.testing.assert_allclose(grad, expected, atol=1e-5)
    # HiResCAM (gradient times activation, summed) is the same map for this network, with AffordanceTargets.
    hires = explain(model, x, "hirescam", ["features"], targets=[AffordanceTarget(0), AffordanceTarget(2)])
    np.testing.assert_allclose(hires, expected, atol=1e-5)
    # Our "cam" method is the min-max normalised raw CAM (bias or not: a shift).
    np.testing.assert_allclose(
        explain(model, x, "cam", ["features"], targets=classes), normalize_minmax(cam), atol=1e-6
    )
    assert _no_hooks(model)


def test_explain_restores_mode_and_checks_arguments():
    model = GapNet().train()
    out = explain(model, torch.randn(1, 3, 8, 8), "gradcampp", ["features"], targets=1)
    assert model.training and _no_hooks(model)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1 and out.max() > 0.99
    with pytest.raises(ValueError, match="unknown method 'gradcam3'"):
        explain(model, torch.randn(1, 3, 8, 8), "gradcam3", ["features"])
    with pytest.raises(ValueError, match="2 targets for a batch of 1"):
        explain(model, torch.randn(1, 3, 8, 8), "gradcam", ["features"], targets=[0, 1])


@pytest.mark.parametrize("method", ["scorecam", "xgradcam", "eigencam", "layercam"])
def test_other_methods_run(method):
    torch.manual_seed(0)
    out = explain(GapNet(), torch.randn(2, 3, 8, 8), method, ["features"], targets=[0, 1])
    assert out.shape == (2, 8, 8) and np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_layercam_weights_each_channel_by_the_positive_part_of_its_classifier_weight():
    # GAP + linear: the class score's gradient at every position of channel k is w_k / (h w), so LayerCAM's
    # sum_k ReLU(gradient) * A_k is sum_k ReLU(w_k) A_k / (h w), then ReLU and min-max
    torch.manual_seed(1)
    model = GapNet().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        feats = model.features(x)  # (2, 4, 8, 8)
        w = model.fc.weight[[0, 2]].clamp_min(0)  # (2, 4): each image's class
        expected = normalize_minmax(torch.einsum("bk,bkhw->bhw", w, feats).clamp_min(0)).numpy()
    out = explain(model, x, "layercam", ["features"], targets=[0, 2])
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_affordance_target_on_all_output_forms():
    logits = torch.tensor([0.5, -1.0, 2.0])
    assert AffordanceTarget(2)(logits) == 2.0
    torch.testing.assert_close(AffordanceTarget(1)(logits.expand(2, 3)), torch.tensor([-1.0, -1.0]))
    assert AffordanceTarget(0)({"logits": logits}) == 0.5
    assert AffordanceTarget(0)({"logits_ego": logits}) == 0.5
    with pytest.raises(IndexError, match=r"class 3 outside \[0, 3\)"):
        AffordanceTarget(3)(logits)
    with pytest.raises(KeyError, match="no 'logits'"):
        AffordanceTarget(0)({"maps": logits})


# ------------------------------------------------------------------------------------------------------ ViT path
def test_vit_reshape_strips_registers_and_follows_the_input_size():
    vit = _tiny_vit()
    assert vit.num_prefix_tokens == 5  # class token + 4 registers
    for size in [(32, 32), (48, 32)]:
        x = torch.randn(2, 3, *size)
        with capture_features(vit, ["blocks.1", "patch_embed"]) as feats:
            vit(x)
        grid = (size[0] // 8, size[1] // 8)
        # timm's own prefix-free grids are the reference (never a hard-coded 14x14).
        ref = vit.forward_intermediates(x, indices=[1], output_fmt="NCHW", intermediates_only=True)[0]
        assert feats["blocks.1"].shape == (2, 32, *grid)
        torch.testing.assert_close(feats["blocks.1"], ref)
        assert feats["patch_embed"].shape == (2, 32, *grid)  # NHWC patch embedding, no prefix to strip
    assert _no_hooks(vit)


def test_vit_reshape_transform_token_order():
    vit = _tiny_vit()
    with vit_reshape_transform(vit) as transform:
        vit(torch.randn(1, 3, 48, 32))  # records the input size: a 6 x 4 grid
        tokens = torch.cat([torch.full((1, 5, 2), -1.0), torch.arange(24.0)[None, :, None].expand(1, 24, 2)], dim=1)
        grid = transform(tokens)  # (1, 2, 6, 4)
        assert grid.shape == (1, 2, 6, 4)
        torch.testing.assert_close(grid[0, 0], torch.arange(24.0).view(6, 4))  # row-major patches, prefix gone
    assert _no_hooks(vit)
    fresh = vit_reshape_transform(vit)  # nothing recorded yet: a square count is laid out square
    assert fresh(torch.zeros(1, 5 + 9, 2)).shape == (1, 2, 3, 3)
    with pytest.raises(ValueError, match="cannot lay 6 patch tokens"):
        fresh(torch.zeros(1, 5 + 6, 2))
    fresh.remove()


@pytest.mark.parametrize("size", [(32, 32), (48, 32)])
def test_gradcam_on_vit_two_sizes(size):
    vit = _tiny_vit()
    out = explain(vit, torch.randn(2, 3, *size), "gradcam", ["blocks.-1.norm1"], targets=1, reshape_transform="vit")
    assert out.shape == (2, *size) and np.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1 and (out.max(axis=(1, 2)) > 0.99).all()
    assert _no_hooks(vit)


# --------------------------------------------------------------------------------------------------- features
def test_feature_heatmap_reductions():
    f = torch.tensor([[[[3.0, 0.0, 1.0]], [[4.0, 0.0, 1.0]]]])  # (1, 2, 1, 3)
    # l2 over channels: [5, 0, sqrt(2)] -> min-max [1, 0, sqrt(2)/5]; max [4, 0, 1]; mean [3.5, 0, 1].
    torch.testing.assert_close(feature_heatmap(f), torch.tensor([[[1.0, 0.0, math.sqrt(2) / 5]]]))
    torch.testing.assert_close(feature_heatmap(f, "max"), torch.tensor([[[1.0, 0.0, 0.25]]]))
    torch.testing.assert_close(feature_heatmap(f, "mean"), torch.tensor([[[1.0, 0.0, 1 / 3.5]]]))
    with pytest.raises(ValueError, match="unknown reduction 'sum'"):
        feature_heatmap(f, "sum")
    with pytest.raises(ValueError, match="convert ViT tokens"):
        feature_heatmap(torch.zeros(1, 5, 8))


def test_capture_features_removes_hooks_on_exception():
    model = GapNet()
    with pytest.raises(RuntimeError, match="boom"), capture_features(model, ["features", "features.0"]) as feats:
        model(torch.randn(1, 3, 8, 8))
        assert feats["features"].shape == (1, 4, 8, 8) and not feats["features"].requires_grad
        raise RuntimeError("boom")
    assert not model._forward_hooks and _no_hooks(model)
    vit = _tiny_vit()
    with pytest.raises(RuntimeError), capture_features(vit, ["blocks.0"]):
        vit(torch.randn(1, 4, 32, 32))  # wrong channel count: the forward itself fails
    assert _no_hooks(vit)
    with pytest.raises(ValueError, match=r"no submodule named 'blocks\.9'"), capture_features(vit, ["blocks.9"]):
        pass
    assert _no_hooks(vit)


# ------------------------------------------------------------------------------------------------------- boxes
def test_cam_to_boxes_on_a_hand_made_map():
    cam = np.full((10, 12), 0.2, np.float32)
    cam[1:3, 1:4] = 1.0  # 2 x 3 = 6 pixels
    cam[5:9, 6:9] = 0.8  # 4 x 3 = 12 pixels: the larger one comes first
    assert cam_to_boxes(cam, threshold=0.5, max_boxes=2) == [(6, 5, 9, 9), (1, 1, 4, 3)]
    assert cam_to_boxes(cam) == [(6, 5, 9, 9)]  # max_boxes 1
    assert cam_to_boxes(cam, threshold=0.9) == [(1, 1, 4, 3)]  # 0.8 < 0.9 * 1.0
    assert cam_to_boxes(cam, threshold=0.1) == [(0, 0, 12, 10)]  # everything is above 0.1
    assert cam_to_boxes(torch.zeros(4, 4)) == []
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        cam_to_boxes(np.zeros((1, 4, 4)))


def test_box_iou():
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)  # intersection 1, union 4 + 4 - 1
    assert box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


# ------------------------------------------------------------------------------------------------ our grounder
def test_cam_on_the_grounder_is_its_ego_pred(make_grounder):
    grounder = make_grounder()
    x = torch.randn(2, 3, 32, 32)
    wrapped = GrounderForCAM(grounder)
    maps = CAM(wrapped, target_layer=None, fc="grounder.aff_fc")(x, torch.tensor([0, 2]))
    ego_pred = grounder.predict(x).ego_pred  # (2, 3, 4, 4)
    torch.testing.assert_close(maps, ego_pred[[0, 1], [0, 2]], atol=1e-5, rtol=1e-5)
    assert _no_hooks(grounder)


def test_gradient_cams_on_the_grounder(make_grounder):
    grounder = make_grounder()
    x = torch.randn(2, 3, 32, 32)
    wrapped = GrounderForCAM(grounder, labels=torch.tensor([1]))  # one label shared by the batch
    out = explain(wrapped, x, "gradcam", ["grounder.aff_ego_proj"], targets=1)
    assert out.shape == (2, 32, 32) and np.isfinite(out).all() and (out.max(axis=(1, 2)) > 0.99).all()
    out = explain(wrapped, x, "scorecam", ["grounder.aff_ego_proj"], targets=1)  # batches of masked copies
    assert out.shape == (2, 32, 32) and np.isfinite(out).all()
    # The frozen backbone runs under no_grad: a clear message instead of grad-cam's IndexError.
    with pytest.raises(RuntimeError, match="no gradient reached the target layers"):
        explain(wrapped, x, "gradcam", ["grounder.backbone.vit.blocks.-1.norm1"], targets=1, reshape_transform="vit")
    # Gradient-free methods do work on the backbone's ViT blocks, through our reshape transform.
    eig = explain(wrapped, x, "eigencam", ["grounder.backbone.vit.blocks.-1.norm1"], reshape_transform="vit")
    assert eig.shape == (2, 32, 32) and np.isfinite(eig).all()
    # With key descriptors the backbone stops inside its last block: that block's output never exists.
    with pytest.raises(RuntimeError, match=r"never ran in the forward pass.*blocks\.-1\.norm1"):
        explain(wrapped, x, "eigencam", ["grounder.backbone.vit.blocks.-1"], reshape_transform="vit")
    assert _no_hooks(grounder)
    tokens = GrounderForCAM(make_grounder({"model": {"backbone": {"descriptor": "token"}}}), labels=torch.tensor([1]))
    eig = explain(tokens, x, "eigencam", ["grounder.backbone.vit.blocks.-1"], reshape_transform="vit")
    assert eig.shape == (2, 32, 32) and np.isfinite(eig).all() and (eig.max(axis=(1, 2)) > 0.99).all()
    with pytest.raises(ValueError, match="2 labels for a batch of 3"):
        GrounderForCAM(grounder, labels=[0, 1])(torch.randn(3, 3, 32, 32))


# --------------------------------------------------------------------------------------------------------- CLI
def _write_image(path, size: int = 64) -> str:
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack([xx * 4 % 256, yy * 4 % 256, (xx + yy) * 2 % 256], axis=-1).astype(np.uint8)
    cv2.imwrite(str(path), img)
    return str(path)


def test_cli_writes_a_methods_picture(tmp_path):
    image = _write_image(tmp_path / "x.png")
    out = tmp_path / "out" / "cams.png"
    argv = ["--image", image, "--out", str(out), "--arch", "resnet18", "--num-classes", "10", "--image-size", "64"]
    assert main([*argv, "--methods", "cam,gradcam,gradcampp", "--class-index", "3"]) == 0
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[1] > 4 * 64 and picture.shape[0] > 64
    with pytest.raises(ValueError, match="unknown"):
        main([*argv, "--methods", "gradcam,nope"])


def test_cli_on_a_vit(tmp_path):
    image = _write_image(tmp_path / "x.png")
    out = tmp_path / "vit.png"
    argv = ["--image", image, "--out", str(out), "--arch", "vit_tiny_patch16_224", "--num-classes", "5"]
    assert main([*argv, "--image-size", "64", "--methods", "gradcam,eigencam"]) == 0
    assert cv2.imread(str(out)) is not None
    with pytest.raises(ValueError, match="needs a GAP"):
        main([*argv, "--image-size", "64", "--methods", "cam"])


def test_cli_grounder_panel_from_a_checkpoint(tmp_path, monkeypatch):
    from utils.engine.checkpoint import save_checkpoint

    # the offline extensions with state: the panel's forward pass must leave the bank and the running mean alone
    cfg = tiny_config({"model": {"extensions": {"class_contrast": True, "center_descriptors": True}}})
    names = CLASS_NAMES
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        tmp_path / "last.pth", model=build_model(cfg, names), cfg=cfg, class_names=names, epoch=1, step=1
    )
    stored, modes = [], []
    real_add, real_centre = ClassPatchBank.add, DescriptorCentring.forward
    monkeypatch.setattr(ClassPatchBank, "add", lambda self, *a: stored.append(1) or real_add(self, *a))
    monkeypatch.setattr(
        DescriptorCentring, "forward", lambda self, *a: modes.append(self.training) or real_centre(self, *a)
    )
    out = tmp_path / "panel.png"
    image = _write_image(tmp_path / "x.png")
    assert main(["--checkpoint", str(ckpt), "--image", image, "--affordance", "hold", "--out", str(out)]) == 0
    ego_only = cv2.imread(str(out))
    assert ego_only is not None
    with pytest.raises(ValueError, match=r"unknown affordance 'jump'\. Did you mean"):
        main(["--checkpoint", str(ckpt), "--image", image, "--affordance", "jump", "--out", str(out)])
    # With exocentric images the panel gains the exo row (their gt_aff_cam) and the part-prototype row.
    exo = [_write_image(tmp_path / f"exo{i}.png", size=48 + 16 * i) for i in range(2)]
    with_exo = tmp_path / "panel_exo.png"
    argv = ["--checkpoint", str(ckpt), "--image", image, "--affordance", "hold", "--out", str(with_exo)]
    assert main([*argv, "--exo", *exo]) == 0
    full = cv2.imread(str(with_exo))
    assert full is not None and full.shape[0] > ego_only.shape[0] + 100  # two more rows of tiles
    assert modes == [False] and stored == []  # one forward pass, in eval mode: nothing stored, no mean moved
    with pytest.raises(ValueError, match="--exo needs --checkpoint"):
        main(["--image", image, "--out", str(out), "--exo", *exo])
