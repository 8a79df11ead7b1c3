"""BiT-Align's depth prompt (models/depth.py, the backbone's token loop) and AGD20K-Depth loading."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from datasets.agd20k import AGD20KTest, AGD20KTrain
from datasets.agd20k.depth import depth_path, train_transform_with_depth
from datasets.images import train_transform
from models.backbone import ViTBackbone
from models.depth import DepthPrompt, DepthPromptBlock

TINY_VIT = {"patch_size": 8, "embed_dim": 44, "depth": 3, "num_heads": 2}


# ---------------------------------------------------------------------------------------------- the module


def test_prompt_block_matches_the_published_arithmetic_by_hand():
    # block.py MultimodalPromptGeneration: pd = down2(p), zd = down1(z), gamma = sigmoid(g) per token,
    # out = up(0.5 (pd + zd) + 0.5 (gamma pd + (1 - gamma) zd)). Hand case: D = 2, hidden 1, identity-like weights.
    blk = DepthPromptBlock(dim=2, num_tokens=2, reduction=2)
    with torch.no_grad():
        blk.down_rgb.weight.copy_(torch.tensor([[1.0, 0.0]]))
        blk.down_prompt.weight.copy_(torch.tensor([[0.0, 1.0]]))
        blk.up.weight.copy_(torch.tensor([[1.0], [2.0]]))
        for layer in (blk.down_rgb, blk.down_prompt, blk.up):
            layer.bias.zero_()
        blk.gate.copy_(torch.tensor([0.0, 100.0]))  # gamma = 0.5 for token 0, 1 for token 1
    z = torch.tensor([[[2.0, 5.0], [2.0, 5.0]]])  # zd = 2
    p = torch.tensor([[[7.0, 4.0], [7.0, 4.0]]])  # pd = 4
    out = blk(z, p)
    # token 0: 0.5 (4 + 2) + 0.5 (0.5 * 4 + 0.5 * 2) = 4.5; token 1: 3 + 0.5 * 4 = 5
    assert torch.allclose(out[0, :, 0], torch.tensor([4.5, 5.0]))
    assert torch.allclose(out[0, :, 1], torch.tensor([9.0, 10.0]))
    assert int(384 / 22) == DepthPromptBlock(384, 257).up.in_features == 17
    with pytest.raises(ValueError, match="built for 2 tokens"):
        blk(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2))


def test_backbone_mixes_the_prompt_into_every_block():
    torch.manual_seed(0)
    bb = ViTBackbone("vit_small_patch16_224", descriptor="token", img_size=32, **TINY_VIT)
    prompt = DepthPrompt(44, num_blocks=3, num_tokens=1 + 16)
    assert not any(p.requires_grad for p in prompt.parameters())
    x, depth = torch.randn(2, 3, 32, 32), torch.rand(2, 1, 32, 32) * 2 - 1
    out = bb(x, depth, prompt)
    # By hand: p_0 = the depth map through the RGB embedding; before block i, p = prompt_i(z, p); z = block_i(z + p).
    vit = bb.vit
    with torch.no_grad():
        z, p = bb.embed(x), bb.embed(depth.repeat(1, 3, 1, 1))
        for i, block in enumerate(vit.blocks):
            p = prompt(i, z, p)
            z = block(z + p)
        expected = vit.norm(z)[:, 1:].transpose(1, 2).reshape(2, 44, 4, 4)
    assert torch.allclose(out.descriptors, expected, atol=1e-5)
    assert not torch.allclose(out.descriptors, bb(x).descriptors, atol=1e-3)
    # A prompt whose output is zero changes nothing.
    for blk in prompt.blocks:
        torch.nn.init.zeros_(blk.up.weight)
    assert torch.allclose(bb(x, depth, prompt).descriptors, bb(x).descriptors, atol=1e-6)
    with pytest.raises(ValueError, match="depth maps of shape"):
        bb(x, None, prompt)


def test_grounder_without_depth_maps_fails_with_a_message():
    from models.build import build_model
    from utils.config import load_config

    cfg = load_config(
        None,
        [
            "model.backbone.name=vit_small_patch16_224",
            "model.backbone.kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
            "data.image_size=32",
            "data.resize_size=40",
            "data.depth_root=/nowhere",
            "model.cls_heads=[0, 1]",
        ],
    )
    model = build_model(cfg, ["a", "b"])
    assert model.depth_prompt is not None and len(model.depth_prompt.blocks) == 2
    with pytest.raises(ValueError, match="every image needs its depth map"):
        model.predict(torch.zeros(1, 3, 32, 32), [0])
    pred = model.predict(torch.zeros(1, 3, 32, 32), [0], depth=torch.zeros(1, 1, 32, 32))
    assert pred.maps.shape == (1, 32, 32)


# ------------------------------------------------------------------------------------------------- the data


def _world(tmp: Path, with_depth: bool = True, skip: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A one-affordance AGD20K tree with 3 exo, 2 ego and 2 test images (+ GT), and its AGD20K-Depth mirror."""
    root, depth_root = tmp / "AGD20K", tmp / "AGD20K-Depth"
    rng = np.random.default_rng(0)
    files = {
        "Seen/trainset/exocentric/hold/cup": ["e0", "e1", "e2"],
        "Seen/trainset/egocentric/hold/cup": ["g0", "g1"],
        "Seen/testset/egocentric/hold/cup": ["t0", "t1"],
    }
    for folder, stems in files.items():
        (root / folder).mkdir(parents=True)
        (depth_root / folder).mkdir(parents=True)
        for stem in stems:
            img = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            cv2.imwrite(str(root / folder / f"{stem}.jpg"), img)
            if folder.startswith("Seen/testset"):
                (root / "Seen/testset/GT/hold/cup").mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / "Seen/testset/GT/hold/cup" / f"{stem}.png"), img[..., 0])
            if with_depth and stem not in skip:
                # depth = a horizontal ramp, so that a flip is visible
                ramp = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (40, 1))
                cv2.imwrite(str(depth_root / folder / f"{stem}_depth.png"), ramp)
    return root, depth_root


def test_missing_depth_maps_fail_before_training_with_the_expected_paths(tmp_path):
    root, depth_root = _world(tmp_path, skip=("e1", "g0", "t1"))
    with pytest.raises(FileNotFoundError) as err:
        AGD20KTrain(root, "Seen", num_exo=2, image_size=32, resize_size=36, depth_root=depth_root)
    msg = str(err.value)
    assert "2 of 5 images have no depth map" in msg
    assert str(depth_root / "Seen/trainset/exocentric/hold/cup/e1_depth.png") in msg
    assert str(depth_root / "Seen/trainset/egocentric/hold/cup/g0_depth.png") in msg
    with pytest.raises(FileNotFoundError, match=r"(?s)1 of 2 images have no depth map.*t1_depth\.png"):
        AGD20KTest(root, "Seen", image_size=32, depth_root=depth_root)


def test_items_carry_depth_under_the_images_geometry(tmp_path):
    root, depth_root = _world(tmp_path)
    train = AGD20KTrain(root, "Seen", num_exo=2, image_size=32, resize_size=36, depth_root=depth_root)
    item = train[0]
    assert item["exo_depth"].shape == (2, 1, 32, 32) and item["ego_depth"].shape == (1, 32, 32)
    assert item["exo_depth"].min() >= -1 and item["exo_depth"].max() <= 1
    plain = AGD20KTrain(root, "Seen", num_exo=2, image_size=32, resize_size=36)[0]
    assert torch.equal(item["exo"], plain["exo"]) and torch.equal(item["ego"], plain["ego"])  # same crops and flips
    test = AGD20KTest(root, "Seen", image_size=32, depth_root=depth_root)[0]
    assert test["depth"].shape == (1, 32, 32)
    assert depth_path(root / "Seen/x/a.jpg", root, depth_root) == depth_root / "Seen/x/a_depth.png"


def test_depth_follows_the_crop_and_flip():
    img = np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    depth = img[..., 1].copy()  # the depth map is the green channel: it must come out where green does
    for seed in range(4):
        image_t, depth_t = train_transform_with_depth(img, depth, 36, 32, np.random.default_rng(seed))
        assert torch.equal(image_t, train_transform(img, 36, 32, np.random.default_rng(seed)))
        green = image_t[1] * 0.224 + 0.456  # undo the ImageNet normalisation of the green channel
        assert torch.allclose((depth_t[0] + 1) / 2, green, atol=1e-5)
