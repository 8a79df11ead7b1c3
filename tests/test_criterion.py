"""Tests of models/criterion.py on hand-made GrounderOutputs: the weight of each term, the prototype warm-up, the
contrastive term only with text features, and the total as the weighted sum."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config

from models.criterion import LOSS_TERMS, Criterion, build_criterion
from models.losses import border_loss, concentration_loss, separation_loss
from models.outputs import GrounderOutput, PartSelection


def hand_made(text: bool = False) -> GrounderOutput:
    """Two samples of labels 0 and 1, two classes, one exocentric image each, a 3x3 grid, D = 2.

    - every logit is 0: both cross-entropies are ln 2;
    - the prototype space holds (1, 0) everywhere and the label maps are flat, so each sample's embedding is (1, 0);
      sample 0's prototype is (1, 0) (cosine 1), sample 1's is (0, 1) (cosine 0): hinge 0 and 1 - margin;
    - the class maps differ between the classes, so the concentration, separation and border terms are non-zero;
    - with ``text``: image features (2, 0), (0, 3) and text features (1, 0), (0, 5), logit scale 1.
    """
    g = torch.Generator().manual_seed(0)
    b, c, h, w, d = 2, 2, 3, 3, 2
    ego_pred = torch.rand(b, c, h, w, generator=g)
    ego_pred[:, 0, 0, 0] += 3.0  # class 0 peaks in a corner, on the border
    ego_pred[:, 1, 1, 1] += 3.0  # class 1 in the centre
    parts = PartSelection(
        prototypes=torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        has_prototype=torch.tensor([True, True]),
        part_scores=torch.zeros(b, 3),
        part_sim=torch.zeros(b, 3, h, w),
        best=torch.zeros(b, dtype=torch.long),
        centroids=torch.zeros(b, 3, d),
    )
    desc = torch.zeros(b, d, h, w)
    desc[:, 0] = 1.0
    return GrounderOutput(
        label=torch.tensor([0, 1]),
        aff_cam=torch.zeros(b, c, h, w),
        gt_aff_cam=torch.zeros(b, 1, h, w),
        logits_exo=torch.zeros(b, 1, c),
        ego_pred=ego_pred,
        gt_ego_cam=torch.ones(b, h, w),
        logits_ego=torch.zeros(b, c),
        cls_attn=torch.zeros(b, 2, h, w),
        saliency=torch.zeros(b, h, w),
        head_masks=torch.zeros(b, 2, h, w),
        selected_head=torch.full((b,), -1),
        attnpool_mask=None,
        parts=parts,
        ego_proto_desc=desc,
        image_feature=torch.tensor([[2.0, 0.0], [0.0, 3.0]]) if text else None,
        text_features=torch.tensor([[1.0, 0.0], [0.0, 5.0]]) if text else None,
        logit_scale=torch.tensor(1.0) if text else None,
    )


def test_every_term_on_a_hand_made_output() -> None:
    out = hand_made(text=True)
    crit = Criterion(proto=2.0, conc=0.5, contra=3.0, sep=0.25, border=4.0, proto_warmup_epochs=1, proto_margin=0.5)
    terms = crit(out, epoch=1)
    assert tuple(terms) == LOSS_TERMS
    assert all(v.dim() == 0 and v.dtype == torch.float32 for v in terms.values())
    assert terms["ce_ego"].item() == pytest.approx(math.log(2)) and terms["ce_exo"].item() == pytest.approx(math.log(2))
    assert terms["proto"].item() == pytest.approx((0.0 + 0.5) / 2)  # hinge max(0, 1 - cos - 0.5): 0 and 0.5
    # cosines form the identity; logits = 1 * I / 0.5: CE = log(1 + e^-2) for both samples
    assert terms["contra"].item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    torch.testing.assert_close(terms["conc"], concentration_loss(out.ego_pred))
    torch.testing.assert_close(terms["sep"], separation_loss(out.ego_pred, out.logits_ego))
    torch.testing.assert_close(terms["border"], border_loss(out.ego_pred, out.label))
    assert min(terms[k].item() for k in ("conc", "sep", "border")) > 0
    expected = (
        terms["ce_ego"]
        + terms["ce_exo"]
        + 2.0 * terms["proto"]
        + 0.5 * terms["conc"]
        + 3.0 * terms["contra"]
        + 0.25 * terms["sep"]
        + 4.0 * terms["border"]
    )
    torch.testing.assert_close(terms["total"], expected)


@pytest.mark.parametrize("term", ["proto", "conc", "contra", "sep", "border"])
def test_each_weight_scales_its_own_term_only(term: str) -> None:
    out = hand_made(text=True)
    base = dict(proto=1.0, conc=1.0, contra=1.0, sep=1.0, border=1.0, proto_warmup_epochs=0)
    one = Criterion(**base)(out)
    three = Criterion(**{**base, term: 3.0})(out)
    assert one[term].item() > 0
    for k in LOSS_TERMS[:-1]:
        torch.testing.assert_close(three[k], one[k])  # the terms themselves do not depend on the weights
    torch.testing.assert_close(three["total"] - one["total"], 2.0 * one[term])
    # weight 0 removes the term from the total (the ours-only terms are not even computed then)
    zero = Criterion(**{**base, term: 0.0})(out)
    torch.testing.assert_close(zero["total"], one["total"] - one[term])
    if term in ("proto", "sep", "border", "contra"):
        assert zero[term].item() == 0.0


def test_prototype_term_waits_for_its_warm_up() -> None:
    out = hand_made()
    crit = Criterion(proto=1.0, proto_warmup_epochs=2, proto_margin=0.25)
    for epoch in (0, 1):
        terms = crit(out, epoch)
        assert terms["proto"].item() == 0.0
        torch.testing.assert_close(terms["total"], terms["ce_ego"] + terms["ce_exo"] + 0.07 * terms["conc"])
    terms = crit(out, 2)
    assert terms["proto"].item() == pytest.approx((0.0 + 0.75) / 2)  # margin 0.25: hinges 0 and 0.75
    torch.testing.assert_close(
        terms["total"], terms["ce_ego"] + terms["ce_exo"] + terms["proto"] + 0.07 * terms["conc"]
    )
    # samples without a prototype do not count; none at all gives 0, not NaN
    out.parts.has_prototype = torch.tensor([True, False])
    assert crit(out, 5)["proto"].item() == 0.0
    out.parts.has_prototype = torch.tensor([False, False])
    assert crit(out, 5)["proto"].item() == 0.0


def test_contrastive_term_needs_text_features() -> None:
    crit = Criterion(contra=1.0)
    without = crit(hand_made(text=False))
    assert without["contra"].item() == 0.0
    with_text = crit(hand_made(text=True))
    assert with_text["contra"].item() > 0
    torch.testing.assert_close(with_text["total"] - without["total"], with_text["contra"])
    # the temperature divides the scaled cosines: 0.25 doubles the logits to 4 I
    sharper = Criterion(contra=1.0, contra_temperature=0.25)(hand_made(text=True))
    assert sharper["contra"].item() == pytest.approx(math.log(1 + math.exp(-4)), rel=1e-5)


def test_the_published_recipe_is_the_default_and_build_criterion_reads_the_config() -> None:
    assert Criterion() == Criterion(proto=1.0, conc=0.07, contra=1.0, sep=0.0, border=0.0, proto_warmup_epochs=1)
    assert build_criterion(tiny_config().loss) == Criterion()
    loss = {"proto": 3.0, "conc": 0.5, "contra": 0.0, "sep": 1.0, "border": 2.0, "proto_warmup_epochs": 4}
    crit = build_criterion(tiny_config({"loss": {**loss, "proto_margin": 0.0}}).loss)
    assert crit == Criterion(**loss, proto_margin=0.0)


def test_gradients_reach_the_outputs_each_term_reads() -> None:
    out = hand_made(text=True)
    leaves = {
        "logits_ego": out.logits_ego,
        "logits_exo": out.logits_exo,
        "ego_pred": out.ego_pred,
        "ego_proto_desc": out.ego_proto_desc,
        "image_feature": out.image_feature,
        "text_features": out.text_features,
    }
    for t in leaves.values():
        t.requires_grad_(True)
    Criterion(sep=1.0, border=1.0, proto_warmup_epochs=0)(out)["total"].backward()
    missing = [k for k, t in leaves.items() if t.grad is None or t.grad.abs().sum() == 0]
    assert not missing, missing
