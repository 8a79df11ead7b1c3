"""Tests of models/outputs.py: field access by name (parts included) and splitting features along the batch."""

from __future__ import annotations

import torch

from models.outputs import Features, PartSelection, Prediction


def test_features_split_into_consecutive_chunks():
    desc, attn = torch.arange(5.0).view(5, 1, 1, 1), -torch.arange(5.0).view(5, 1, 1, 1)
    first, second = Features(desc, attn).split([3, 2])
    assert first.descriptors.flatten().tolist() == [0.0, 1.0, 2.0] and second.cls_attn.flatten().tolist() == [-3, -4]


def test_grounder_output_get_looks_into_the_parts(make_grounder, make_batch):
    out = make_grounder().train()(make_batch())
    assert isinstance(out.parts, PartSelection)
    assert out.get("part_sim") is out.parts.part_sim and out.get("has_prototype") is out.parts.has_prototype
    assert out.get("saliency") is out.saliency  # its own fields first
    assert out.get("no_such_map") is None and out.get("no_such_map", 3) == 3


def test_prediction_get_returns_a_field_or_the_default():
    z = torch.zeros(1)
    pred = Prediction(z, None, None, z, z, z, z, z, z, z, None)
    assert pred.get("maps") is z and pred.get("all_maps") is None and pred.get("part_sim", "none") == "none"
