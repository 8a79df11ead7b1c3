"""Tests of models/extensions/oracle.py: the true part prototypes from part masks (a diagnostic, training only)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.criterion import Criterion
from models.extensions.oracle import OracleSelector, mask_prototypes
from models.parts import PartIoUSelector


def test_mask_prototypes_average_the_descriptors_inside_the_mask():
    desc = torch.zeros(2, 2, 2, 2)
    desc[:, 0, 0, 0], desc[:, 1, 0, 1], desc[:, 0, 1, :] = 3.0, 1.0, -5.0  # (3, 0), (0, 1), then (-5, 0) twice
    mask = torch.zeros(2, 4, 4)
    mask[0, :2, :] = 1.0  # image resolution 4x4: the top row of the 2x2 grid, both patches
    mask[1, :2, :2] = 0.5  # a soft half-weight on the top-left patch only
    protos, weights = mask_prototypes(desc, mask)
    torch.testing.assert_close(weights, torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.5, 0.0], [0.0, 0.0]]]))
    torch.testing.assert_close(protos, F.normalize(torch.tensor([[1.5, 0.5], [3.0, 0.0]]), dim=-1))
    empty, w = mask_prototypes(desc, torch.zeros(2, 4, 4))
    assert (empty == 0).all() and (w == 0).all()


def test_oracle_prototypes_come_from_the_part_mask_and_need_it(make_grounder, make_batch):
    model = make_grounder({"model": {"extensions": {"oracle_prototypes": True}}}).train()
    assert isinstance(model.parts, OracleSelector) and isinstance(model.parts.base, PartIoUSelector)
    b = make_batch()
    with pytest.raises(ValueError, match=r"ego_part_mask.*with_part_masks=True.*oracle_prototypes off"):
        model(b)
    mask = torch.zeros(2, 32, 32)
    mask[0, :8, :16] = 1.0  # the top-left two patches of a 4x4 grid
    b["ego_part_mask"] = mask  # sample 1 has an empty mask: no prototype
    out = model(b)
    desc = model.backbone(b["ego"]).descriptors  # (2, 32, 4, 4)
    expected = F.normalize(desc[0, :, 0, :2].mean(dim=-1), dim=0)
    torch.testing.assert_close(out.parts.prototypes[0], expected, rtol=1e-5, atol=1e-5)
    assert out.parts.has_prototype.tolist() == [True, False]
    assert Criterion()(out, epoch=1)["proto"].item() > 0
    # the clusters stay the base selector's: only the prototypes are replaced
    assert out.parts.centroids.shape == (2, 3, 32)
    # in eval mode (a test pass) the diagnostic is inert: the ordinary selection runs, no mask needed
    plain = make_grounder().eval()
    plain.load_state_dict(model.state_dict())  # the same weights and BatchNorm statistics
    del b["ego_part_mask"]
    inert, ordinary = model.eval()(b).parts, plain(b).parts
    for name in ("prototypes", "has_prototype", "part_scores", "best", "centroids"):
        assert torch.equal(getattr(inert, name), getattr(ordinary, name)), name
