"""Tests for datasets.decode_benchmark: photo-like JPEGs and the full vs reduced decoding report."""

from __future__ import annotations

import json

import cv2
import numpy as np

from datasets.decode_benchmark import main, make_photo


def test_make_photo_is_textured_not_flat():
    img = make_photo(60, 80, np.random.default_rng(0))
    assert img.shape == (60, 80, 3) and img.dtype == np.uint8
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 1000  # no solid colours
    assert cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var() > 50  # edges and texture


def test_report_compares_full_and_reduced_decoding(capsys):
    args = ["--sizes", "96x64", "--images", "2", "--repeats", "1", "--resize-size", "24", "--crop", "20"]
    assert main([*args, "--image-size", "20"]) == 0
    result = json.loads(capsys.readouterr().out)["results"]["96x64"]
    for name in ("train", "test"):
        r = result[name]
        assert r["full_ms"] > 0 and r["reduced_ms"] > 0
        assert 0 < r["mean_abs_diff"] < 10 and r["max_abs_diff"] <= 255  # 64 >= 2 x 24: reduced, a little different
    assert main([*args, "--image-size", "40"]) == 0  # 64 < 2 x 40: the test images decode at full size
    assert json.loads(capsys.readouterr().out)["results"]["96x64"]["test"]["max_abs_diff"] == 0
