"""utils.maps: the map normalisations shared by the model, the diagnostics and the metrics."""

from __future__ import annotations

import torch

from utils.maps import normalize_mass


def test_normalize_mass_makes_each_map_a_distribution_and_keeps_zero_maps_zero():
    x = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # (1, 2, 2, 2): one map, one empty
    out = normalize_mass(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.25, 0.75], [0.0, 0.0]]))
    assert (out[0, 1] == 0).all()  # no NaN from 0 / 0
