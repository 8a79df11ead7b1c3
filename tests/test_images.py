"""Tests for datasets.images: robust decoding and the train/test transforms."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from datasets.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    decode_image,
    denormalize,
    image_file_problem,
    is_image_file,
    jpeg_size,
    normalize,
    random_crop,
    random_flip,
    read_gt,
    read_image,
    read_mask,
    resize_gt,
    resize_shorter,
    to_tensor,
    train_transform,
)


def test_color_image_is_rgb(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 2] = 255  # pure red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    img = read_image(tmp_path / "red.png")
    assert img.dtype == np.uint8 and img.shape == (4, 5, 3)
    assert img[0, 0].tolist() == [255, 0, 0]


def test_grayscale_becomes_three_channels(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    img = read_image(tmp_path / "g.png")
    assert img.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], gray)


def test_rgba_drops_alpha(tmp_path):
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0] = 200  # blue
    bgra[..., 1] = 10
    bgra[..., 2] = 30
    bgra[..., 3] = 0  # fully transparent: colour is kept, alpha ignored
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    img = read_image(tmp_path / "a.png")
    assert img.shape == (2, 2, 3)
    assert img[1, 1].tolist() == [30, 10, 200]


def test_16bit_png_scaled_to_uint8(tmp_path):
    deep = np.array([[0, 257 * 100], [65535, 257 * 3]], np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    img = read_image(tmp_path / "d.png")
    assert img.dtype == np.uint8
    assert img[..., 0].tolist() == [[0, 100], [255, 3]]


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "x.jpg"
    with pytest.raises(FileNotFoundError, match=r"nope/x\.jpg"):
        read_image(missing)


def test_non_image_file_is_a_value_error(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a picture")
    with pytest.raises(ValueError, match=r"Could not decode .*notes\.jpg"):
        read_image(tmp_path / "notes.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="Could not decode"):
        read_image(tmp_path / "empty.png")


def test_truncated_jpeg_is_a_value_error(tmp_path):
    yy, xx = np.mgrid[0:64, 0:64]
    img = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.uint8)
    _, buf = cv2.imencode(".jpg", img)
    data = buf.tobytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match=r"cut\.jpg"):
        read_image(tmp_path / "cut.jpg")
    assert decode_image(data).shape == (64, 64, 3)  # the whole file is fine


def test_image_file_problem_finds_cut_files_without_decoding(tmp_path):
    yy, xx = np.mgrid[0:64, 0:64]
    img = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.uint8)
    jpg, png = cv2.imencode(".jpg", img)[1].tobytes(), cv2.imencode(".png", img)[1].tobytes()
    (tmp_path / "ok.jpg").write_bytes(jpg)
    (tmp_path / "ok.png").write_bytes(png)
    (tmp_path / "padded.jpg").write_bytes(jpg + b"\x00" * 100)  # camera padding after the marker is fine
    (tmp_path / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    (tmp_path / "cut.png").write_bytes(png[: len(png) - 20])
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert image_file_problem(tmp_path / "ok.jpg") is None and image_file_problem(tmp_path / "ok.png") is None
    assert image_file_problem(tmp_path / "padded.jpg") is None
    assert image_file_problem(tmp_path / "cut.jpg") == "truncated JPEG (no end-of-image marker)"
    assert image_file_problem(tmp_path / "cut.png") == "truncated PNG (no IEND chunk)"
    assert image_file_problem(tmp_path / "empty.jpg") == "empty file"
    assert image_file_problem(tmp_path / "gone.jpg") == "missing"
    with pytest.raises(ValueError, match=r"cut\.png.*truncated PNG"):
        read_image(tmp_path / "cut.png")


def _photo_jpeg(height: int, width: int, *flags: int) -> bytes:
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3)).astype(np.uint8), (0, 0), 2)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90, *flags])[1].tobytes()


def test_jpeg_size_reads_the_frame_header():
    assert jpeg_size(_photo_jpeg(48, 80)) == (48, 80)
    assert jpeg_size(_photo_jpeg(48, 80, cv2.IMWRITE_JPEG_PROGRESSIVE, 1)) == (48, 80)
    assert jpeg_size(cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes()) is None
    assert jpeg_size(b"\xff\xd8\xff\xda\x00\x02") is None  # scan data before any frame header


def test_reduced_decode_keeps_the_shorter_side_and_stays_close():
    data = _photo_jpeg(480, 640)
    full = decode_image(data)
    assert full.shape == (480, 640, 3)
    # the largest of 1/2, 1/4, 1/8 that keeps the shorter side >= min_side; none below twice min_side
    for min_side, shape in ((50, (60, 80)), (100, (120, 160)), (224, (240, 320)), (240, (240, 320)), (241, full.shape)):
        assert decode_image(data, min_side=min_side).shape[:2] == shape[:2], min_side
    np.testing.assert_array_equal(decode_image(data, min_side=241), full)  # exactly the full decode
    reduced = decode_image(data, min_side=224)
    same_size = cv2.resize(full, (320, 240), interpolation=cv2.INTER_AREA)
    assert np.abs(reduced.astype(int) - same_size.astype(int)).mean() < 2.0
    gray = cv2.imencode(".jpg", full[..., 0])[1].tobytes()
    g = decode_image(gray, min_side=100)  # colour handling as in the full decode: three equal channels
    assert g.shape == (120, 160, 3) and (g[..., 0] == g[..., 2]).all()
    png = cv2.imencode(".png", full)[1].tobytes()
    assert decode_image(png, min_side=50).shape == (480, 640, 3)  # only JPEGs have DCT scaling
    with pytest.raises(ValueError, match="min_side must be a positive"):
        decode_image(data, min_side=0)


def test_max_side_and_min_side_together(tmp_path):
    data = _photo_jpeg(480, 640)
    assert decode_image(data, max_side=100).shape == (75, 100, 3)  # shrunk to max_side after a 1/4 decode
    assert decode_image(data, max_side=100, min_side=200).shape == (75, 100, 3)  # max_side wins
    (tmp_path / "a.jpg").write_bytes(data)
    assert read_image(tmp_path / "a.jpg", min_side=224).shape == (240, 320, 3)


def test_read_gt_and_mask(tmp_path):
    gt = np.array([[0, 51], [255, 102]], np.uint8)
    cv2.imwrite(str(tmp_path / "gt.png"), gt)
    out = read_gt(tmp_path / "gt.png")
    assert out.dtype == np.float64  # float64 up to the metrics, as the published evaluation
    np.testing.assert_array_equal(out, gt / 255.0)
    mask = np.array([[0, 255], [255, 0]], np.uint8)
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), [[0, 1], [1, 0]])
    assert read_mask(tmp_path / "m.png", size=4).shape == (4, 4)


def test_resize_gt_matches_published_protocol():
    rng = np.random.default_rng(0)
    png = rng.integers(0, 256, size=(37, 53)).astype(np.uint8)
    ours = resize_gt(png / 255.0, 224)
    reference = cv2.resize(png / 255.0, (224, 224))  # what the published evaluation code does
    assert ours.shape == (224, 224) and ours.dtype == np.float64
    np.testing.assert_array_equal(ours, reference)


def test_is_image_file():
    assert is_image_file("a/b/photo.JPG")
    assert is_image_file("x.png")
    assert not is_image_file("a/.DS_Store")
    assert not is_image_file("notes.txt")
    assert not is_image_file("._photo.jpg")  # macOS resource fork


def test_resize_shorter_keeps_aspect():
    img = np.zeros((40, 80, 3), np.uint8)
    assert resize_shorter(img, 20).shape == (20, 40, 3)
    assert resize_shorter(np.zeros((90, 30, 3), np.uint8), 60).shape == (180, 60, 3)


def test_random_crop_and_flip_follow_the_generator():
    img = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    a = random_crop(img, 6, np.random.default_rng(3))
    b = random_crop(img, 6, np.random.default_rng(3))
    assert a.shape == (6, 6, 3)
    np.testing.assert_array_equal(a, b)
    crops = {random_crop(img, 6, np.random.default_rng(s))[0, 0, 0] for s in range(20)}
    assert len(crops) > 1  # the offset really is random
    flipped = random_flip(img, np.random.default_rng(0), p=1.0)
    np.testing.assert_array_equal(flipped, img[:, ::-1])
    np.testing.assert_array_equal(random_flip(img, np.random.default_rng(0), p=0.0), img)


def test_normalize_values():
    img = np.full((2, 3, 3), 255, np.uint8)
    t = normalize(img)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    expected = [(1.0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    np.testing.assert_allclose(t[:, 0, 0].numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        normalize(img.astype(np.float32))


def test_to_tensor_and_denormalize_roundtrip():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(16, 16, 3)).astype(np.uint8)
    t = to_tensor(img, 16)
    assert t.shape == (3, 16, 16)
    back = denormalize(t)
    assert back.dtype == np.uint8 and back.shape == (16, 16, 3)
    assert np.abs(back.astype(int) - img.astype(int)).max() <= 1
    assert to_tensor(np.zeros((30, 50, 3), np.uint8), 24).shape == (3, 24, 24)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        denormalize(torch.zeros(1, 3, 4, 4))


def test_train_transform_shape_and_determinism():
    img = np.random.default_rng(0).integers(0, 256, size=(30, 45, 3)).astype(np.uint8)
    a = train_transform(img, 24, 20, np.random.default_rng(7))
    b = train_transform(img, 24, 20, np.random.default_rng(7))
    assert a.shape == (3, 20, 20)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="crop_size"):
        train_transform(img, 16, 20, np.random.default_rng(0))


def test_train_transform_with_mask_applies_one_geometry_to_both():
    from datasets.images import denormalize, train_transform, train_transform_with_mask

    rng = np.random.default_rng(0)
    mask = (rng.random((30, 50)) > 0.5).astype(np.uint8) * 255
    img = np.repeat(mask[..., None], 3, axis=2)  # the image *is* its mask: any misalignment shows
    for seed in range(6):  # crops at several places, with and without the flip
        x, m = train_transform_with_mask(img, mask, 30, 24, np.random.default_rng(seed))
        assert x.shape == (3, 24, 24) and m.shape == (24, 24)
        np.testing.assert_allclose(denormalize(x)[..., 0] / 255.0, m.numpy(), atol=1 / 255 + 1e-6)
        torch.testing.assert_close(x, train_transform(img, 30, 24, np.random.default_rng(seed)))
    with pytest.raises(ValueError, match="mask shape"):
        train_transform_with_mask(img, mask[:10], 30, 24, np.random.default_rng(0))
