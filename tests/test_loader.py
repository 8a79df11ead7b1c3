"""Tests for datasets.loader: worker counts from the CPUs this process may use, and the loader rate."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from torch.utils.data import DataLoader

from datasets import loader
from datasets.agd20k import AGD20KTrain
from datasets.loader import available_cpus, clamp_num_workers, default_num_workers, measure_loader_rate


def _cpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)


def test_available_cpus_follows_the_affinity_mask_then_cpu_count(monkeypatch):
    _cpus(monkeypatch, 3)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert available_cpus() == 3  # the mask, not the machine's 64 CPUs
    monkeypatch.delattr(os, "sched_getaffinity")
    assert available_cpus() == 64
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert available_cpus() == 1


def test_default_num_workers_leaves_one_cpu_to_the_main_process(monkeypatch):
    for cpus, expected in ((1, 0), (2, 1), (5, 4), (64, 8)):
        _cpus(monkeypatch, cpus)
        assert default_num_workers() == expected, cpus
    assert default_num_workers(max_workers=2) == 2
    with pytest.raises(ValueError, match="max_workers"):
        default_num_workers(-1)


def test_clamp_num_workers_warns_once(monkeypatch, caplog):
    _cpus(monkeypatch, 2)
    monkeypatch.setattr(loader, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="datasets.loader"):
        assert [clamp_num_workers(8) for _ in range(3)] == [2, 2, 2]  # e.g. once per epoch
        assert clamp_num_workers(2) == 2 and clamp_num_workers(0) == 0
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "num_workers=8" in warnings[0] and "2 CPU(s)" in warnings[0]
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        clamp_num_workers(-1)


def test_measure_loader_rate_on_a_tiny_world(tiny_world):
    ds = AGD20KTrain(tiny_world, "Seen", num_exo=2, image_size=24, resize_size=28)
    ds.set_epoch(0)
    rate = measure_loader_rate(DataLoader(ds, batch_size=4, num_workers=0), max_batches=3, warmup=1)
    assert rate["batches"] == 2 and rate["samples"] == 8 and rate["images"] == 8 * 3  # 2 exo + 1 ego per sample
    assert rate["seconds"] > 0 and rate["startup_s"] > 0
    assert rate["images_per_s"] == pytest.approx(rate["images"] / rate["seconds"])
    full = measure_loader_rate(DataLoader(ds, batch_size=16), warmup=0)  # one whole pass
    assert full["samples"] == len(ds)
    tensors = [torch.zeros(5, 3)] * 2
    assert measure_loader_rate(tensors, warmup=0)["samples"] == 10  # plain tensors count their first dimension
    with pytest.raises(ValueError, match="no batch after the 2 warmup"):
        measure_loader_rate(tensors, warmup=2)
    with pytest.raises(ValueError, match="max_batches > warmup"):
        measure_loader_rate(tensors, max_batches=1, warmup=1)
