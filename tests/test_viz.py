"""Tests for utils.viz.draw (conversions, overlays, PNG output), utils.viz.layout (labels, grids, colour bars) and
the model panel."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from utils.viz.draw import colorize, overlay, save_png, to_uint8_image, validate_cam
from utils.viz.layout import add_label, append_colorbar, colorbar, make_grid
from utils.viz.panels import model_panel

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def _rgb(h: int = 20, w: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _blob(h: int = 8, w: int = 8) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.exp(-((yy - h / 2) ** 2 + (xx - w / 3) ** 2) / (0.1 * h * w)).astype(np.float32)
    return (m - m.min()) / (m.max() - m.min())


# ------------------------------------------------------------------------------------------------- conversions
def test_to_uint8_image_formats():
    img = _rgb()
    assert to_uint8_image(img) is img
    np.testing.assert_array_equal(to_uint8_image(img.astype(np.float32) / 255.0), img)
    # A normalised tensor, as the data loaders return it, is de-normalised back to the original pixels.
    t = (torch.from_numpy(img).permute(2, 0, 1).float() / 255.0 - MEAN) / STD  # (3, H, W)
    back = to_uint8_image(t)
    assert back.dtype == np.uint8 and back.shape == img.shape
    assert np.abs(back.astype(int) - img.astype(int)).max() <= 1
    np.testing.assert_array_equal(to_uint8_image(t[None]), back)  # a batch of one
    gray = to_uint8_image(np.full((4, 5), 0.5, np.float32))
    assert gray.shape == (4, 5, 3) and (gray == 128).all()


def test_to_uint8_image_errors():
    with pytest.raises(ValueError, match="channels-first numpy"):
        to_uint8_image(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"divide 0\.\.255"):
        to_uint8_image(np.full((4, 4, 3), 200.0))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        to_uint8_image(torch.zeros(2, 3, 8, 8))


def test_validate_cam_messages():
    np.testing.assert_array_equal(validate_cam(torch.tensor([[0.0, 1.0]])), np.array([[0.0, 1.0]], np.float32))
    validate_cam(np.array([[-1e-7, 1 + 1e-7]]))  # rounding overshoot is tolerated
    with pytest.raises(ValueError, match="2-d"):
        validate_cam(np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="NaN/inf"):
        validate_cam(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match=r"\[0, 1\].*normalize_minmax"):
        validate_cam(np.array([[0.0, 1.5]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        validate_cam(np.array([[-0.01, 0.5]]))


def test_colorize_jet_ends_and_gray():
    rgb = colorize(np.array([[0.0, 1.0]], np.float32))
    assert rgb.shape == (1, 2, 3) and rgb.dtype == np.uint8
    low, high = rgb[0, 0], rgb[0, 1]
    assert low[2] > 100 and low[0] == 0 and low[1] == 0  # jet starts dark blue (RGB order)
    assert high[0] > 100 and high[1] == 0 and high[2] == 0  # and ends dark red
    gray = colorize(np.array([[0.0, 0.5, 1.0]]), "gray")
    np.testing.assert_array_equal(gray[0, :, 0], [0, 128, 255])
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        colorize(np.zeros((2, 2)), "nope")


# ---------------------------------------------------------------------------------------------------- overlay
def test_overlay_shape_dtype_and_blend():
    img = _rgb(20, 30)
    cam = _blob(8, 8)
    out = overlay(img, cam)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay(img, cam, alpha=0.0), img)
    resized = cv2.resize(cam, (30, 20), interpolation=cv2.INTER_LINEAR)  # bilinear to the image size
    np.testing.assert_array_equal(overlay(img, cam, alpha=1.0), colorize(np.clip(resized, 0, 1)))
    # alpha 0.5 lies halfway between the image and the heat map (to rounding).
    half = overlay(img, cam, alpha=0.5).astype(int)
    expect = (img.astype(int) + colorize(np.clip(resized, 0, 1)).astype(int)) / 2
    assert np.abs(half - expect).max() <= 1


def test_overlay_accepts_torch_inputs():
    img = torch.randn(3, 16, 16)
    cam = torch.rand(4, 4, requires_grad=True)
    out = overlay(img, cam, colormap="viridis")
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, overlay(to_uint8_image(img), cam.detach().numpy(), colormap="viridis"))


def test_overlay_errors():
    img = _rgb()
    with pytest.raises(ValueError, match=r"2-d \(h, w\) map, got shape \(1, 4, 4\)"):
        overlay(img, np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="normalise it first"):
        overlay(img, np.full((4, 4), 3.0))
    with pytest.raises(ValueError, match="NaN/inf"):
        overlay(img, np.array([[np.inf, 0.0]]))
    with pytest.raises(ValueError, match="alpha must be in"):
        overlay(img, _blob(), alpha=1.5)


# ----------------------------------------------------------------------------------------------- labels, grids
def test_add_label_adds_a_bar_with_text():
    img = _rgb(40, 120)
    out = add_label(img, "hold")
    bar = out.shape[0] - 40
    assert out.shape[1] == 120 and bar > 10
    np.testing.assert_array_equal(out[bar:], img)
    assert (out[:bar] < 128).any() and (out[:bar] == 255).mean() > 0.5  # dark text on white
    tall = add_label(img, "a very long title that cannot fit on one line of a narrow picture")
    assert tall.shape[0] > out.shape[0]  # wrapped onto more lines instead of cut off


def test_make_grid_size_and_resizing():
    a, b = _rgb(10, 10), _rgb(20, 30)  # b is resized to the first tile's size
    grid = make_grid([[a, b], [a]], pad=2)
    assert grid.shape == (2 + 10 + 2 + 10 + 2, 2 + 10 + 2 + 10 + 2, 3)
    np.testing.assert_array_equal(grid[2:12, 2:12], a)
    assert (grid[14:24, 14:24] == 255).all()  # the missing tile is blank
    labelled = make_grid([[a, b], [a, a]], row_labels=["ego", "exo"], col_labels=["x", "y"], pad=2)
    assert labelled.shape[0] > grid.shape[0] and labelled.shape[1] > grid.shape[1]
    sized = make_grid([[a]], tile_size=(16, 24), pad=0)
    assert sized.shape == (16, 24, 3)


def test_make_grid_errors():
    with pytest.raises(ValueError, match="no tiles"):
        make_grid([[None]])
    with pytest.raises(ValueError, match="1 row labels for 2 rows"):
        make_grid([[_rgb()], [_rgb()]], row_labels=["a"])


def test_colorbar_high_values_on_top():
    bar = colorbar(100, "jet", labels=("0", "0.5", "1"))
    assert bar.shape[0] == 100 and bar.dtype == np.uint8
    col = bar[:, 8].astype(int)  # a column through the coloured strip
    strip = [i for i in range(100) if not (col[i] == 255).all()]
    top, bottom = col[strip[2]], col[strip[-3]]
    assert top[0] > top[2] and bottom[2] > bottom[0]  # red at the top, blue at the bottom
    assert append_colorbar(_rgb(50, 40)).shape[0] == 50
    with pytest.raises(ValueError, match="at least two labels"):
        colorbar(50, labels=("x",))


def test_save_png_roundtrip(tmp_path):
    img = _rgb()
    path = save_png(tmp_path / "a" / "b" / "x.png", img)
    assert path.is_file()
    back = cv2.imread(str(path), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(back[..., ::-1], img)  # written as BGR, so reading it back gives RGB reversed


# ------------------------------------------------------------------------------------------------ model panel
def _outputs(b: int = 2, c: int = 4, n: int = 3, heads: int = 3, k: int = 3, h: int = 6) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "ego_pred": torch.randn(b, c, h, h, generator=g),
        "gt_aff_cam": torch.rand(b, n, h, h, generator=g),
        "logits_ego": torch.randn(b, c, generator=g),
        "cls_attn": torch.rand(b, heads, h, h, generator=g),
        "head_masks": (torch.rand(b, heads, h, h, generator=g) > 0.5).float(),
        "selected_head": torch.tensor([1, -1]),
        "attnpool_mask": (torch.rand(b, h, h, generator=g) > 0.5).float(),
        "saliency": torch.rand(b, h, h, generator=g),
        "part_sim": torch.rand(b, k, h, h, generator=g),
        "part_scores": torch.rand(b, k, generator=g),
        "has_prototype": torch.tensor([True, False]),
    }


def test_model_panel_draws_every_present_map(tmp_path):
    names = ["cut_with", "hold", "pour", "sit_on"]
    image = torch.randn(3, 32, 32)
    full = model_panel(image, _outputs(), names, "hold", exo=torch.randn(3, 3, 32, 32), tile_size=(48, 48))
    assert full.dtype == np.uint8 and full.ndim == 3 and full.shape[2] == 3
    by_index = model_panel(image, _outputs(), names, 1, exo=torch.randn(3, 3, 32, 32), tile_size=(48, 48))
    assert by_index.shape == full.shape
    second = model_panel(image, _outputs(), names, 1, index=1, tile_size=(48, 48))  # no exo: bare maps
    assert second.shape[0] >= full.shape[0]  # same rows; its longer titles may wrap
    only_pred = model_panel(image, {"ego_pred": _outputs()["ego_pred"]}, names, "pour", tile_size=(48, 48))
    assert only_pred.shape[0] < full.shape[0] // 2  # one row instead of five
    save_png(tmp_path / "panel.png", full)


def test_model_panel_errors():
    names = ["cut_with", "hold"]
    with pytest.raises(ValueError, match="unknown affordance 'jump'"):
        model_panel(torch.randn(3, 16, 16), _outputs(c=2), names, "jump")
    with pytest.raises(ValueError, match=r"label index 5 outside \[0, 2\)"):
        model_panel(torch.randn(3, 16, 16), _outputs(c=2), names, 5)
    with pytest.raises(ValueError, match="2 exo images for 3 gt_aff_cam maps"):
        model_panel(torch.randn(3, 16, 16), _outputs(c=2), names, 0, exo=torch.randn(2, 3, 16, 16))
