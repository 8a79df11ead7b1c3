"""Tests of utils/inference/predictor.py and loading.py: the Python API, LOCATE state dicts, and the README example."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_world import make_tiny_run, to_locate_state_dict
from PIL import Image

from datasets.agd20k import SEEN_AFFORDANCES, UNSEEN_AFFORDANCES
from datasets.images import read_image, to_tensor
from utils.engine.checkpoint import CheckpointError
from utils.inference import Predictor, UnknownAffordanceError
from utils.inference.loading import checkpoint_kind, load_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    return make_tiny_run(tmp_path_factory.mktemp("predictor"))


@pytest.fixture(scope="module")
def predictor(run) -> Predictor:
    return Predictor.from_checkpoint(run["checkpoint"], device="cpu", batch_size=3)


def _test_image(run) -> Path:
    return sorted((run["world"] / "Seen" / "testset" / "egocentric").rglob("*.jpg"))[0]


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _reference(model, rgb: np.ndarray, label: str, size: int = 32) -> np.ndarray:
    """Grounder.predict's map at the image's resolution: the one code path the Predictor must agree with."""
    x = to_tensor(rgb, size)[None]
    return model.predict(x, [label], output_size=rgb.shape[:2]).maps[0].numpy()


# ------------------------------------------------------------------------------------------------------ README
def test_readme_python_example_runs(run, capsys) -> None:
    text = (REPO / "README.md").read_text()
    marker = text.index("<!-- tested by tests/test_inference_predictor.py")
    block = re.search(r"```python\n(.*?)```", text[marker:], re.S)
    assert block is not None, "the README's Python example block is missing after its marker"
    code = block.group(1)
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 5, "the README promises a 5-line example"
    assert '"runs/<run>/Seen/last.pth"' in code and '"photo.jpg"' in code
    image = _test_image(run)
    code = code.replace('"runs/<run>/Seen/last.pth"', repr(str(run["checkpoint"]))).replace(
        '"photo.jpg"', repr(str(image))
    )
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    heatmap = scope["heatmap"]
    assert heatmap.shape == read_image(image).shape[:2] and heatmap.dtype == np.float32
    assert heatmap.min() >= 0 and heatmap.max() <= 1 + 1e-6
    printed = capsys.readouterr().out
    assert printed.startswith("[(") and printed.count("',") == 3  # three (name, probability) pairs


# ------------------------------------------------------------------------------------------------------- inputs
def test_every_input_kind_gives_maps_at_its_own_resolution(predictor, run) -> None:
    path = _test_image(run)
    gray = _rgb(20, 30)[..., 0]
    rgba = np.dstack([_rgb(21, 17, 1), np.full((21, 17), 7, np.uint8)])
    images = [
        _rgb(50, 70),  # numpy uint8 RGB
        gray,  # (H, W)
        rgba,  # alpha dropped
        _rgb(24, 24, 2).astype(np.float32) / 255.0,  # float in [0, 1]
        (_rgb(33, 44, 3).astype(np.uint16) * 257),  # 16-bit
        Image.fromarray(_rgb(40, 41, 4)),  # PIL
        str(path),  # a file
        path,  # a Path
        torch.from_numpy(_rgb(36, 28, 5)).permute(2, 0, 1),  # uint8 tensor (3, H, W)
        torch.rand(3, 32, 32),  # float tensor in [0, 1]
    ]
    result = predictor.predict(images, affordance="hold")
    expected = [(50, 70), (20, 30), (21, 17), (24, 24), (33, 44), (40, 41), *[read_image(path).shape[:2]] * 2]
    expected += [(36, 28), (32, 32)]
    assert [m.shape for m in result.maps] == expected == result.sizes
    assert all(m.dtype == np.float32 and np.isfinite(m).all() for m in result.maps)
    assert all(m.min() >= 0 and m.max() <= 1 + 1e-6 and m.max() > 0.99 for m in result.maps)
    assert result.probs.shape == (len(images), len(run["class_names"]))
    np.testing.assert_allclose(result.probs.sum(axis=1), 1.0, atol=1e-5)
    assert result.affordances == [["hold"]] * len(images)
    # the grayscale image is the same picture as its 3-channel copy; the PIL image the same as its array
    same = predictor.predict([gray, np.repeat(gray[..., None], 3, axis=2)], affordance="hold").maps
    np.testing.assert_array_equal(same[0], same[1])
    # batches: a (B, H, W, 3) array and a (B, 3, H, W) tensor
    stack = np.stack([_rgb(30, 30, 6), _rgb(30, 30, 7)])
    assert [m.shape for m in predictor.predict(stack, "hold").maps] == [(30, 30)] * 2
    assert len(predictor.predict(torch.rand(4, 3, 16, 16), "hold")) == 4


def test_maps_equal_the_models_own_prediction_batched_or_not(predictor, run) -> None:
    images = [_rgb(50, 70), _rgb(32, 32, 1), _rgb(17, 90, 2), _rgb(64, 48, 3)]
    batched = predictor.predict(images, affordance="hold")  # batch_size 3: two forward passes
    for rgb, m in zip(images, batched.maps):
        np.testing.assert_allclose(m, _reference(run["model"], rgb, "hold"), atol=2e-5)
        np.testing.assert_allclose(predictor.predict(rgb, affordance="hold").maps[0], m, atol=2e-5)
    # a tensor already at the network size and ImageNet-normalised goes in untouched
    x = to_tensor(images[1], 32)
    np.testing.assert_allclose(predictor.predict(x, "hold", normalized=True).maps[0], batched.maps[1], atol=1e-6)


def test_query_forms(predictor, run) -> None:
    names = run["class_names"]
    rgb = [_rgb(40, 50), _rgb(30, 30, 1)]
    several = predictor.predict(rgb, affordance=["hold", "Cut With"])  # names are matched loosely
    assert several.affordances == [["hold", "cut_with"]] * 2
    assert [m.shape for m in several.maps] == [(2, 40, 50), (2, 30, 30)]
    np.testing.assert_allclose(several.maps[0][0], predictor.predict(rgb[0], "hold").maps[0], atol=1e-6)
    np.testing.assert_allclose(several.maps[0][1], _reference(run["model"], rgb[0], "cut_with"), atol=2e-5)

    top = predictor.predict(rgb, affordance=None, top_k=3)
    for i in range(2):
        order = np.argsort(-top.probs[i], kind="stable")[:3]
        assert top.affordances[i] == [names[j] for j in order]
        assert [n for n, _ in top.top_k(3)[i]] == top.affordances[i]
        assert top.maps[i].shape == (3, *rgb[i].shape[:2])
        np.testing.assert_allclose(top.maps[i][0], _reference(run["model"], rgb[i], names[order[0]]), atol=2e-5)
    assert top.predicted == [a[0] for a in top.affordances]


def test_unknown_affordance_lists_the_valid_names(predictor) -> None:
    with pytest.raises(UnknownAffordanceError, match=r"unknown affordance 'hodl'\. Did you mean 'hold'\?.*cut_with"):
        predictor.predict(_rgb(20, 20), affordance="hodl")
    with pytest.raises(ValueError, match="empty list"):
        predictor.predict(_rgb(20, 20), affordance=[])


def test_unusable_inputs_say_what_is_expected(predictor, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"values in \[0, 1\], found \[0, 255\]"):
        predictor.predict(np.linspace(0, 255, 192).reshape(8, 8, 3), "hold")
    with pytest.raises(ValueError, match="normalized=True"):
        predictor.predict(to_tensor(_rgb(32, 32), 32), "hold")
    with pytest.raises(ValueError, match=r"\(3, H, W\).*got \(5, 8, 8\)"):
        predictor.predict(torch.rand(5, 8, 8), "hold")
    with pytest.raises(TypeError, match="got \\['dict'\\]"):
        predictor.predict([_rgb(8, 8), {"not": "an image"}], "hold")
    with pytest.raises(FileNotFoundError, match=r"nope\.jpg"):
        predictor.predict(tmp_path / "nope.jpg", "hold")
    (tmp_path / "notes.jpg").write_text("not a picture")
    with pytest.raises(ValueError, match="Could not decode"):
        predictor.predict(str(tmp_path / "notes.jpg"), "hold")


def test_exo_maps_are_the_forward_pass_gt_aff_cam(predictor, run) -> None:
    from utils.maps import normalize_minmax

    exo = [_rgb(32, 32, 1), _rgb(48, 40, 2)]
    maps = predictor.exo_maps(exo, "hold")
    assert [m.shape for m in maps] == [(32, 32), (48, 40)]
    batch = {
        "exo": torch.stack([to_tensor(e, 32) for e in exo])[None],
        "ego": to_tensor(exo[0], 32)[None],
        "label": torch.tensor([run["class_names"].index("hold")]),
    }
    with torch.no_grad():
        cam = normalize_minmax(run["model"](batch).gt_aff_cam[0])  # (2, 4, 4)
    up = torch.nn.functional.interpolate(cam[:1, None], size=(32, 32), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(maps[0], normalize_minmax(up)[0, 0].numpy(), atol=1e-5)
    with pytest.raises(UnknownAffordanceError):
        predictor.exo_maps(exo, "grasp")


def test_text_gated_and_open_vocabulary_models(run) -> None:
    """With text gating every query is its own conditioned pass; a CLIP text encoder answers free phrases."""
    from models.build import build_model
    from models.text import OpenClipTextEncoder
    from utils.config import load_config

    extra = ["model.text.encoder=learned", "model.saliency=bitalign", "model.text_gating=true"]
    cfg = load_config(run["config"], extra)
    torch.manual_seed(1)
    model = build_model(cfg, run["class_names"]).eval()
    model.text = OpenClipTextEncoder(run["class_names"], 32, text_cfg={"width": 32, "layers": 1, "heads": 2})
    predictor = Predictor(model, 32, "cpu", open_vocabulary=True)
    rgb = [_rgb(40, 50), _rgb(30, 30, 1)]
    result = predictor.predict(rgb, affordance=["hold", "grasp the handle"])
    assert result.affordances[0] == ["hold", "grasp the handle"]
    for i, image in enumerate(rgb):
        np.testing.assert_allclose(result.maps[i][0], _reference(model, image, "hold"), atol=2e-5)
        np.testing.assert_allclose(result.maps[i][1], _reference(model, image, "grasp the handle"), atol=2e-5)
    top = predictor.predict(rgb[0], top_k=2)
    second = top.affordances[0][1]
    np.testing.assert_allclose(top.maps[0][1], _reference(model, rgb[0], second), atol=2e-5)


# ---------------------------------------------------------------------------------------------- LOCATE files
@pytest.fixture(scope="module")
def locate(tmp_path_factory) -> dict:
    """A 36-class tiny model saved both as our checkpoint and as LOCATE's code saves its weights."""
    base = tmp_path_factory.mktemp("locate")
    tiny = make_tiny_run(base, class_names=list(SEEN_AFFORDANCES))
    path = base / "best_aff_seen.pth"
    torch.save({f"module.{k}": v for k, v in to_locate_state_dict(tiny["model"]).items()}, path)  # DataParallel
    return {**tiny, "locate": path, "base": base}


def test_locate_state_dict_is_recognised_and_reproduces_the_model(locate) -> None:
    assert checkpoint_kind(locate["locate"]) == "locate" and checkpoint_kind(locate["checkpoint"]) == "wsag"
    ours = Predictor.from_checkpoint(locate["checkpoint"], device="cpu")
    theirs = Predictor.from_checkpoint(locate["locate"], device="cpu", config=locate["config"])
    assert theirs.class_names == list(SEEN_AFFORDANCES) and theirs.split == "Seen"
    images = [_rgb(40, 50), _rgb(30, 30, 1)]
    a, b = ours.predict(images, ["hold", "pour"]), theirs.predict(images, ["hold", "pour"])
    for x, y in zip(a.maps, b.maps):
        np.testing.assert_allclose(x, y, atol=1e-5)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)


def test_locate_files_with_other_class_counts_or_without_dino(locate, tmp_path) -> None:
    state = to_locate_state_dict(locate["model"])
    unseen = {**state, "aff_fc.weight": state["aff_fc.weight"][:25], "aff_fc.bias": state["aff_fc.bias"][:25]}
    torch.save(unseen, tmp_path / "unseen.pth")
    loaded = load_model(tmp_path / "unseen.pth", config=locate["config"])
    assert loaded.split == "Unseen" and loaded.class_names == list(UNSEEN_AFFORDANCES) and loaded.kind == "locate"

    odd = {**state, "aff_fc.weight": state["aff_fc.weight"][:30], "aff_fc.bias": state["aff_fc.bias"][:30]}
    torch.save(odd, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"30 outputs; the known class counts are 36 \(Seen\), 25 \(Unseen\)"):
        load_model(tmp_path / "odd.pth", config=locate["config"])

    torch.save(to_locate_state_dict(locate["model"], with_vit=False), tmp_path / "no_vit.pth")
    with pytest.raises(CheckpointError, match=r"without the DINO weights.*backbone_weights="):
        load_model(tmp_path / "no_vit.pth", config=locate["config"])
    vit = tmp_path / "dino.pth"
    torch.save(locate["model"].backbone.vit.state_dict(), vit)
    p = Predictor.from_checkpoint(tmp_path / "no_vit.pth", "cpu", backbone_weights=str(vit), config=locate["config"])
    ref = Predictor.from_checkpoint(locate["checkpoint"], "cpu")
    np.testing.assert_allclose(p.predict(_rgb(20, 20), "hold").maps[0], ref.predict(_rgb(20, 20), "hold").maps[0])

    torch.save({"foo": torch.zeros(2)}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match=r"neither a checkpoint of this repository.*nor a LOCATE state dict"):
        load_model(tmp_path / "foreign.pth")


def test_test_py_evaluates_a_locate_state_dict_in_one_command(script, locate, capsys) -> None:
    common = ["--config", str(locate["config"]), "--no-progress", f"data.root={locate['world']}"]
    assert script.main(["--checkpoint", str(locate["locate"]), "--out", str(locate["base"] / "a"), *common]) == 0
    assert script.main(["--checkpoint", str(locate["checkpoint"]), "--out", str(locate["base"] / "b"), *common]) == 0
    a = json.loads((locate["base"] / "a" / "metrics.json").read_text())
    b = json.loads((locate["base"] / "b" / "metrics.json").read_text())
    assert a["checkpoint_kind"] == "locate" and b["checkpoint_kind"] == "wsag"
    assert list(a["results"]) == ["Seen"]  # the split from the class count
    for metric in ("KLD", "SIM", "NSS"):
        assert a["results"]["Seen"][metric] == pytest.approx(b["results"]["Seen"][metric], abs=1e-5)
    assert "best_aff_seen.pth (Seen model)" in capsys.readouterr().out
