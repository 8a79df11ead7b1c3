"""Tests of models/gating.py: BiT-Align's text gating x * sigmoid(s * cos(x, t)) + x."""

from __future__ import annotations

import math

import torch

from models.gating import TextGate


def test_text_gate_hand_values_and_gradients():
    # two positions: p0 = (2, 0) along the text feature (cos 1), p1 = (0, 3) orthogonal to it (cos 0)
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0]]).T.reshape(1, 2, 1, 2).clone().requires_grad_(True)
    text = torch.tensor([[5.0, 0.0]], requires_grad=True)  # its length does not matter, only its direction
    out = TextGate()(x, text, torch.tensor(2.0))
    g1 = 1 / (1 + math.exp(-2.0))  # sigmoid(2 * 1)
    expected = torch.tensor([[2.0 * (g1 + 1), 0.0], [0.0, 3.0 * 1.5]]).T.reshape(1, 2, 1, 2)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    # the gate trains the text side (prompts, projection) and passes gradient to the features
    assert text.grad is not None and text.grad.abs().sum() > 0
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_text_gate_conditions_each_sample_on_its_own_text():
    x = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(2, 2, 1, 1)  # the same feature twice
    out = TextGate()(x, torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.tensor(10.0))
    # aligned: x (sigmoid(10) + 1), opposed: x (sigmoid(-10) + 1)
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([1 + 1 / (1 + math.exp(-10)), 1 + 1 / (1 + math.exp(10))]))
