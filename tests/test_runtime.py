"""Device selection, seeding, logging and the mixed-precision policy."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

from utils.engine.runtime import (
    amp_context,
    environment_info,
    resolve_amp_dtype,
    seed_everything,
    select_device,
    setup_logging,
)


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    with pytest.raises(ValueError, match="not one of auto, cpu, cuda, cuda:N"):
        select_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_request_without_cuda_says_what_to_do():
    with pytest.raises(ValueError, match="use device=cpu or device=auto"):
        select_device("cuda:0")


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    seed_everything(3)
    a = draw()
    seed_everything(3)
    assert draw() == a
    seed_everything(4)
    assert draw() != a


def test_amp_policy(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_amp_dtype("off", cpu) is None
    assert resolve_amp_dtype("bf16", cpu) is torch.bfloat16
    monkeypatch.setenv("WSAG_CPU_BF16", "0")
    assert resolve_amp_dtype("auto", cpu) is None  # emulated bf16 is slower than fp32: stay in fp32
    monkeypatch.setenv("WSAG_CPU_BF16", "1")
    assert resolve_amp_dtype("auto", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match=r"train\.amp='fp8'"):
        resolve_amp_dtype("fp8", cpu)


def test_environment_info_names_precision_kernels_and_versions():
    import cv2
    import timm

    cpu = torch.device("cpu")
    info = environment_info(cpu, None)
    assert info["precision"] == "fp32" and environment_info(cpu, torch.bfloat16)["precision"] == "bf16"
    assert info["device"] == "cpu" and info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["torch"] == torch.__version__ and info["timm"] == timm.__version__
    assert info["torch_threads"] == torch.get_num_threads() and info["device_name"]
    assert info["numpy"] == np.__version__ and info["opencv"] == cv2.__version__


def test_amp_context_casts_matmuls_only_when_asked():
    a = torch.randn(4, 4)
    with amp_context(torch.device("cpu"), None):
        assert (a @ a).dtype == torch.float32
    with amp_context(torch.device("cpu"), torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16


def test_setup_logging_writes_a_file_and_does_not_duplicate_handlers(tmp_path):
    setup_logging(tmp_path)
    setup_logging(tmp_path)
    logging.getLogger("wsag.test").info("hello file")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_wsag", False)]
    assert len(ours) == 2  # console + file, not four
    for h in ours:
        h.flush()
    assert "hello file" in (tmp_path / "train.log").read_text()
    setup_logging(None)


def test_compile_parts_compiles_the_fixed_shape_parts_and_keeps_the_state_dict(make_grounder) -> None:
    from utils.engine.runtime import COMPILED_PARTS, compile_parts

    model = make_grounder()
    keys = list(model.state_dict())
    assert compile_parts(model) is model
    assert list(model.state_dict()) == keys  # checkpoints written from a compiled run load anywhere
    for name in COMPILED_PARTS:
        assert getattr(model, name)._compiled_call_impl is not None, name
    assert model.parts._compiled_call_impl is None  # the k-means stays eager
