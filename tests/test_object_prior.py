"""Tests of models/extensions/object_prior.py: the model's own object map mixed into every predicted heatmap."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from models.extensions.object_prior import ObjectPrior
from utils.config import ConfigError
from utils.maps import normalize_minmax

PRIOR = {"model": {"extensions": {"object_prior": 0.25}}}


def test_object_prior_hand_values():
    # the mixture of the two unit-mass maps, each min-max normalised first
    maps = torch.tensor([[[[0.0, 2.0], [0.0, 0.0]]]])  # (1, 1, 2, 2): all on one cell
    ego_pred = torch.log(torch.tensor([[[[1.0, 1.0], [3.0, 1.0]]]]))  # (1, C=1, 2, 2): object map 0, 0 / 1, 0
    mixed = ObjectPrior(0.25)(maps, ego_pred)
    torch.testing.assert_close(mixed, torch.tensor([[[[0.0, 0.75], [0.25, 0.0]]]]))
    # the object map is the log-sum-exp over the classes: two classes lit in two places make one object
    two = torch.log(torch.tensor([[[[3.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 3.0]]]]))  # (1, 2, 2, 2)
    obj = ObjectPrior(0.5)(torch.zeros(1, 2, 2, 2), two)  # an all-zero map has no mass: only the object's half
    torch.testing.assert_close(obj[0, 0], torch.tensor([[0.25, 0.0], [0.0, 0.25]]))
    for share in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match=r"share must be in \(0, 1\)"):
            ObjectPrior(share)


def test_predict_mixes_the_prior_into_label_and_label_free_maps(make_grounder):
    model = make_grounder(PRIOR).eval()
    assert model.postprocess.share == 0.25
    images = torch.randn(2, 3, 32, 32)
    out = model.predict(images, torch.tensor([1, 2]), output_size=(20, 24))
    label_map = out.ego_pred[[0, 1], [1, 2]].unsqueeze(1)  # computed on the patch grid, then resized
    want = F.interpolate(ObjectPrior(0.25)(label_map, out.ego_pred), size=(20, 24), mode="bilinear")
    torch.testing.assert_close(out.maps, normalize_minmax(want.squeeze(1)))
    plain = F.interpolate(label_map, size=(20, 24), mode="bilinear")
    assert not torch.allclose(out.maps, normalize_minmax(plain.squeeze(1)))
    free = model.predict(images, output_size=(20, 24))
    want = F.interpolate(ObjectPrior(0.25)(free.ego_pred, free.ego_pred), size=(20, 24), mode="bilinear")
    torch.testing.assert_close(free.all_maps, normalize_minmax(want))
    # off (the default), predict returns the label's own map
    off = make_grounder().eval()
    off.load_state_dict(model.state_dict())
    torch.testing.assert_close(
        off.predict(images, [1, 2], output_size=(20, 24)).maps, normalize_minmax(plain.squeeze(1))
    )


def test_training_is_untouched(make_grounder, make_batch):
    with_prior, without = make_grounder(PRIOR).train(), make_grounder().train()
    a, b = with_prior(make_batch()), without(make_batch())
    for name in ("aff_cam", "ego_pred", "logits_ego", "saliency"):
        assert torch.equal(a.get(name), b.get(name)), name
    assert with_prior.state_dict().keys() == without.state_dict().keys()  # nothing to save in checkpoints
    with pytest.raises(ConfigError, match=r"model\.extensions\.object_prior=1\.0 is invalid: expected a share in"):
        tiny_config({"model": {"extensions": {"object_prior": 1.0}}})
