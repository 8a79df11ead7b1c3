"""Tests of models/extensions/centring.py: the running mean descriptor, its buffers (updated only in training, saved
in checkpoints) and the centred descriptors feeding the part prototypes and their loss."""

from __future__ import annotations

import torch
from einops import rearrange

from models.criterion import Criterion
from models.extensions.centring import DescriptorCentring
from models.losses import prototype_loss
from models.parts import select_part_prototypes

CENTRED = {"model": {"extensions": {"center_descriptors": True}}}


def test_the_mean_is_a_plain_average_first_then_an_exponential_one():
    centring = DescriptorCentring(2, min_rate=0.25).train()
    views = []
    for step in range(6):
        exo, ego = torch.full((3, 2, 1, 1), float(step)), torch.full((1, 2, 1, 1), float(10 * step))
        views.append(0.5 * (step + 10 * step))  # both views weigh the same, whatever their batch sizes
        centred_exo, centred_ego = centring(exo, ego)
        assert int(centring.desc_mean_count) == step + 1
        # updated first, from this batch, then subtracted
        torch.testing.assert_close(centred_exo, exo - centring.desc_mean.view(1, 2, 1, 1))
        torch.testing.assert_close(centred_ego, ego - centring.desc_mean.view(1, 2, 1, 1))
        if step < 4:  # rate 1 / steps >= 0.25: the plain mean of the batches so far
            torch.testing.assert_close(centring.desc_mean, torch.full((2,), sum(views) / len(views)))
    # steps 5 and 6 at the floor rate 0.25: m5 = 0.75 m4 + 0.25 v5, m6 = 0.75 m5 + 0.25 v6
    m4 = sum(views[:4]) / 4
    m6 = 0.75 * (0.75 * m4 + 0.25 * views[4]) + 0.25 * views[5]
    torch.testing.assert_close(centring.desc_mean, torch.full((2,), m6))


def test_evaluation_subtracts_the_mean_without_moving_it_and_the_state_comes_back():
    centring = DescriptorCentring(3).train()
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        centring(torch.randn(4, 3, 2, 2, generator=g), torch.randn(2, 3, 2, 2, generator=g))
    state = {k: v.clone() for k, v in centring.state_dict().items()}
    assert set(state) == {"desc_mean", "desc_mean_count"} and int(state["desc_mean_count"]) == 3
    centring.eval()
    x = torch.randn(2, 3, 2, 2, generator=g)
    out, _ = centring(x, x)
    torch.testing.assert_close(out, x - state["desc_mean"].view(1, 3, 1, 1))
    assert all(torch.equal(v, state[k]) for k, v in centring.state_dict().items())  # eval moves nothing
    fresh = DescriptorCentring(3)
    fresh.load_state_dict(state)
    # a restored mean goes on exactly as the original: same count, same rate, same next value
    more = torch.randn(4, 3, 2, 2, generator=g), torch.randn(2, 3, 2, 2, generator=g)
    centring.train()(*more)
    fresh.train()(*more)
    assert all(torch.equal(a, b) for a, b in zip(centring.state_dict().values(), fresh.state_dict().values()))


def test_centred_descriptors_feed_the_prototypes_and_their_loss(make_grounder, make_batch):
    """The part prototypes and the prototype loss see the descriptors minus their running mean (after one training
    step, that batch's mean, both views weighted equally), so a vector shared by every descriptor no longer dominates
    their cosines; evaluation does not move the mean; off, there is no such state."""
    model = make_grounder(CENTRED).train()
    b = make_batch()
    out = model(b)
    with torch.no_grad():
        exo = model.backbone(b["exo"].flatten(0, 1)).descriptors  # (6, 32, 4, 4)
        ego = model.backbone(b["ego"]).descriptors  # (2, 32, 4, 4)
    mean = 0.5 * (exo.mean(dim=(0, 2, 3)) + ego.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(model.proto_space.desc_mean, mean, rtol=1e-5, atol=1e-5)
    assert int(model.proto_space.desc_mean_count) == 1

    def select(exo_desc: torch.Tensor, ego_desc: torch.Tensor):
        return select_part_prototypes(
            rearrange(exo_desc, "(b n) d h w -> b n d h w", b=2), out.gt_aff_cam, ego_desc, out.saliency, iters=10
        )

    mu = mean.view(1, -1, 1, 1)
    centred = select(exo - mu, ego - mu)
    torch.testing.assert_close(out.parts.part_scores, centred.part_scores)
    torch.testing.assert_close(out.parts.prototypes, centred.prototypes)
    torch.testing.assert_close(out.ego_proto_desc, ego - mu)
    expected = prototype_loss(ego - mu, out.gt_ego_cam, centred.prototypes, centred.has_prototype, margin=0.5)
    torch.testing.assert_close(Criterion()(out, epoch=1)["proto"], expected)
    raw = select(exo, ego)  # what the published recipe compares: a different geometry
    assert not torch.allclose(raw.part_sim, centred.part_sim, atol=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("proto_space.")}
    model.eval()(b)  # a validation pass does not move the mean
    model.predict(b["ego"], b["label"])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert set(before) == {"proto_space.desc_mean", "proto_space.desc_mean_count"}
    # off (the default), there is no buffer: checkpoints of models without it keep loading
    assert not any(k.startswith("proto_space.") for k in make_grounder().state_dict())
