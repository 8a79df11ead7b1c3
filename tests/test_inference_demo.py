"""Tests of utils/inference/demo.py: the page's backend, and the page itself in a real headless Chromium.

The browser test starts ``python -m utils.inference.demo`` on a free localhost port with a tiny random checkpoint,
loads the page in Debian's Chromium (driven by playwright, with every request outside localhost refused), uploads
an image and waits for the heatmap, then picks a training sample and waits for its exocentric gt_aff_cam. It is
skipped, saying why, where Gradio, playwright or Chromium is missing; under CI (``CI`` set), where ``.ci/run``
installs all three, a missing one fails it instead.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from inference_world import make_tiny_run

from utils.inference import Predictor
from utils.inference.demo import TOP_PREDICTION, DemoBackend, find_samples

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    return make_tiny_run(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def backend(run) -> DemoBackend:
    predictor = Predictor.from_checkpoint(run["checkpoint"], device="cpu")
    return DemoBackend(predictor, find_samples(run["world"], "Seen", num_exo=2), top_k=3)


def test_samples_pair_each_egocentric_image_with_its_exocentric_folder(run) -> None:
    samples = find_samples(run["world"], num_exo=2)
    folders = {
        (p.parent.parent.name, p.parent.name) for p in (run["world"] / "Seen/trainset/egocentric").rglob("*.jpg")
    }
    assert {(s.affordance, s.obj) for s in samples} == folders
    for s in samples:
        assert s.ego.is_file() and len(s.exo) == 2
        assert all(p.parent == run["world"] / "Seen/trainset/exocentric" / s.affordance / s.obj for p in s.exo)
    assert len(find_samples(run["world"], limit=3)) == 3 and find_samples(run["world"] / "nowhere") == []


def test_backend_predicts_lists_top_k_and_shows_a_samples_exocentric_maps(backend) -> None:
    assert backend.predict(None, "hold")[3].startswith("Upload an image")
    rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    picture, top, exo, status = backend.predict(rgb, "hold")
    assert picture.shape == (40, 56, 3) and picture.dtype == np.uint8 and exo == []
    assert list(top.values()) == sorted(top.values(), reverse=True) and len(top) == 3
    assert "Heatmap of **hold**" in status
    expected = backend.predictor.predict(rgb, top_k=1).affordances[0][0]
    assert f"Heatmap of **{expected}**" in backend.predict(rgb, TOP_PREDICTION)[3]
    assert "unknown affordance 'grasp'" in backend.predict(rgb, "hold", phrase="grasp")[3]

    key = next(iter(backend.samples))
    sample = backend.samples[key]
    image, remembered = backend.load_sample(key)
    assert remembered == key and image.shape == cv2.imread(str(sample.ego)).shape
    _, _, exo, status = backend.predict(image, sample.affordance, sample_key=key)
    assert [caption for _, caption in exo] == [f"{p.name}: gt_aff_cam [{sample.affordance}]" for p in sample.exo]
    assert all(pic.ndim == 3 and pic.dtype == np.uint8 for pic, _ in exo) and "Training sample" in status


# ------------------------------------------------------------------------------------------------------- browser
def _browser_prerequisites() -> None:
    missing = []
    if importlib.util.find_spec("gradio") is None:
        missing.append("gradio (pip install -r requirements-demo.txt)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("playwright (pip install -r requirements-ci.txt)")
    if not CHROMIUM.is_file():
        missing.append(f"no Chromium at {CHROMIUM}: apt-get install chromium chromium-driver")
    if missing:
        reason = "the demo's browser test needs " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test (.ci/run installs its prerequisites), but {reason}")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the demo exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the demo did not answer at {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def demo_url(run, tmp_path):
    _browser_prerequisites()
    port = _free_port()
    log = tmp_path / "demo.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "utils.inference.demo", "--checkpoint", str(run["checkpoint"]), "--device", "cpu"]
    with open(log, "w") as fh:
        proc = subprocess.Popen([*argv, "--port", str(port)], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_page_in_headless_chromium_shows_a_heatmap_after_an_upload(demo_url, run, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    photo = tmp_path / "photo.png"
    rgb = np.zeros((60, 90, 3), np.uint8)
    rgb[15:45, 20:70] = (200, 120, 40)  # an object on a dark background
    cv2.imwrite(str(photo), rgb)
    outside: list[str] = []

    def local_only(route) -> None:
        if route.request.url.startswith(demo_url):
            route.continue_()
        else:  # the network is closed here: the page must not need anything from outside
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.route("**/*", local_only)
            page.goto(demo_url)
            page.wait_for_selector("#image input[type=file]", state="attached", timeout=60_000)
            assert "Affordance grounding" in page.inner_text("body")

            page.set_input_files("#image input[type=file]", str(photo))
            page.wait_for_function(
                "() => { const im = document.querySelector('#heatmap img'); return im && im.naturalWidth > 0; }",
                timeout=60_000,
            )
            size = page.evaluate(
                "() => { const im = document.querySelector('#heatmap img'); "
                "return [im.naturalWidth, im.naturalHeight]; }"
            )
            assert size == [90, 60]  # the overlay has the uploaded image's size
            shot = cv2.imdecode(np.frombuffer(page.locator("#heatmap img").screenshot(), np.uint8), cv2.IMREAD_COLOR)
            assert shot is not None and shot.std() > 10, "the heatmap element shows a blank picture"
            page.wait_for_function("() => document.querySelector('#topk').innerText.includes('%')", timeout=30_000)
            top = page.inner_text("#topk")
            assert any(name in top for name in run["class_names"]), top

            page.click("#sample input")  # pick a training sample: its exocentric gt_aff_cam appear
            page.locator("ul[role=listbox] li").first.click()
            page.wait_for_function("() => document.querySelectorAll('#exo img').length >= 1", timeout=60_000)
            page.wait_for_function(
                "() => document.querySelector('#status').innerText.includes('Training sample')", timeout=30_000
            )
        finally:
            browser.close()
    assert outside == [], f"the page asked for resources outside localhost: {outside[:5]}"
