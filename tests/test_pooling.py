"""Tests of models/extensions/pooling.py: top-k pooling of the class maps, alone and as the grounder's pooling."""

from __future__ import annotations

import pytest
import torch

from models.extensions.pooling import TopKPool
from models.heads import GlobalAveragePool


def test_topk_pool_hand_values_and_at_least_one_position():
    cam = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[0.0, 0.0], [0.0, -4.0]]]])  # (1, 2, 2, 2)
    torch.testing.assert_close(TopKPool(0.5)(cam), torch.tensor([[4.5, 0.0]]))  # (6 + 3) / 2, (0 + 0) / 2
    torch.testing.assert_close(TopKPool(0.1)(cam), torch.tensor([[6.0, 0.0]]))  # 0.4 positions round to 1
    torch.testing.assert_close(TopKPool(1.0)(cam), GlobalAveragePool()(cam))  # every position: the average
    assert "top=0.5" in repr(TopKPool(0.5))


def test_topk_pool_ignores_the_area_of_the_background():
    # the same peak on a larger background: GAP changes with the background's area, top-k does not
    small, large = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 8, 8)
    small[..., 0, 0] = large[..., 0, 0] = 5.0
    assert GlobalAveragePool()(small) != GlobalAveragePool()(large)
    torch.testing.assert_close(TopKPool(1 / 16)(small), TopKPool(1 / 64)(large))


@pytest.mark.parametrize("top", [0.0, -0.2, 1.5])
def test_topk_pool_needs_a_fraction(top):
    with pytest.raises(ValueError, match=r"top must be a fraction in \(0, 1\]"):
        TopKPool(top)


def test_topk_pooling_gives_the_logits_of_both_views_and_of_predict(make_grounder, make_batch):
    model = make_grounder({"model": {"extensions": {"topk_pool": 0.25}}})
    assert isinstance(model.pool, TopKPool) and model.pool.top == 0.25
    batch = make_batch()
    out = model.train()(batch)
    torch.testing.assert_close(out.logits_ego, TopKPool(0.25)(out.ego_pred))
    exo_maps = out.aff_cam.view(2, 3, 3, 4, 4)  # (b, n, C, h, w)
    torch.testing.assert_close(out.logits_exo, TopKPool(0.25)(exo_maps))
    assert not torch.allclose(out.logits_ego, GlobalAveragePool()(out.ego_pred))  # not the GAP logits
    pred = model.predict(batch["ego"])
    torch.testing.assert_close(pred.logits, TopKPool(0.25)(pred.ego_pred))
    torch.testing.assert_close(pred.pred_label, pred.logits.argmax(1))
    # off (0, the default) the grounder pools with LOCATE's average
    assert isinstance(make_grounder().pool, GlobalAveragePool)
