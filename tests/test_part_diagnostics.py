"""utils/tools/part_diagnostics.py: exact numbers on stand-in models, and the command end to end on a tiny world."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_config_file
from torch import nn

from models.outputs import PartSelection
from utils.tools import part_diagnostics as pd


class _SelectionModel(nn.Module):
    """Two samples, a 2x2 grid, K = 3: the true part of sample 0 is its top-left patch, of sample 1 its bottom row."""

    def __init__(self) -> None:
        super().__init__()
        self.class_names = ["a", "b"]
        self.w = nn.Parameter(torch.zeros(()))
        e = torch.eye(4)
        desc = torch.zeros(2, 4, 2, 2)
        desc[0, :, 0, 0], desc[0, :, 0, 1], desc[0, :, 1, 0], desc[0, :, 1, 1] = e[0], e[1], e[1], e[1]
        desc[1, :, 0, 0], desc[1, :, 0, 1], desc[1, :, 1, 0], desc[1, :, 1, 1] = e[2], e[2], e[3], e[3]
        self.desc = desc  # the descriptors in the prototype space (``ego_proto_desc``)
        # Sample 0: cluster 0 is the true part (e0) and is chosen. Sample 1: the true part is e3, cluster 2 is it,
        # but cluster 1 (e2, cosine 0) is chosen.
        self.centroids = torch.stack([torch.stack([e[0], e[1], -e[0]]), torch.stack([-e[3], e[2], 2 * e[3]])])
        self.best = torch.tensor([0, 1])
        self.modes: list[bool] = []

    def forward(self, batch: dict) -> SimpleNamespace:
        self.modes.append(self.training)
        parts = PartSelection(
            prototypes=torch.zeros(2, 4),
            has_prototype=torch.tensor([True, False]),
            part_scores=torch.zeros(2, 3),
            part_sim=torch.zeros(2, 3, 2, 2),
            best=self.best,
            centroids=self.centroids,
        )
        return SimpleNamespace(ego_proto_desc=self.desc, parts=parts)


def test_prototype_selection_scores_the_chosen_cluster_against_the_true_part() -> None:
    model = _SelectionModel()
    mask = torch.zeros(2, 4, 4)
    mask[0, :2, :2] = 1  # top-left patch of the 2x2 grid
    mask[1, 2:, :] = 1  # bottom row
    batch = {"ego": torch.zeros(2, 3, 4, 4), "ego_part_mask": mask, "label": torch.tensor([0, 1])}
    model.train()
    stats = pd.prototype_selection(model, [batch, batch], max_batches=1)
    assert model.modes == [False] and model.training  # run once, in eval mode; the mode is restored
    a, b = stats["per_affordance"]["a"], stats["per_affordance"]["b"]
    assert a["count"] == 1 and b["count"] == 1  # one batch only
    assert a["chosen_is_nearest"] == 1.0 and a["chosen_cos"] == pytest.approx(1.0) and a["best_cos"] == 1.0
    assert a["random_cos"] == pytest.approx(0.0)  # cosines 1, 0, -1
    assert b["chosen_is_nearest"] == 0.0 and b["chosen_cos"] == pytest.approx(0.0)
    assert b["best_cos"] == pytest.approx(1.0) and b["random_cos"] == pytest.approx(0.0)
    assert a["has_prototype"] == 1.0 and b["has_prototype"] == 0.0
    assert stats["overall"]["chosen_is_nearest"] == 0.5 and stats["overall"]["count"] == 2


class _MapModel(nn.Module):
    """predict() returns fixed maps per image, whatever the input: the label map, the saliency, two class maps."""

    def __init__(self, maps: torch.Tensor, saliency: torch.Tensor, ego_pred: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.maps, self.saliency, self.ego_pred = maps, saliency, ego_pred

    def predict(self, images: torch.Tensor, labels: torch.Tensor, output_size: tuple[int, int]) -> SimpleNamespace:
        b = images.shape[0]
        return SimpleNamespace(maps=self.maps[:b], saliency=self.saliency[:b], ego_pred=self.ego_pred[:b])


def test_object_auc_counts_ties_half_and_skips_degenerate_masks() -> None:
    mask = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]]).repeat(4, 1, 1)
    scores = torch.stack(
        [
            torch.tensor([[2.0, 3.0], [0.0, 1.0]]),  # every object pixel above every background pixel
            torch.tensor([[0.0, 1.0], [2.0, 3.0]]),  # every one below
            torch.ones(2, 2),  # all tied
            torch.tensor([[1.0, 3.0], [2.0, 0.0]]),  # pairs (1,2) (1,0) (3,2) (3,0): 3 of 4 right
        ]
    )
    auc = pd.object_auc(scores, mask)
    assert auc.tolist() == pytest.approx([1.0, 0.0, 0.5, 0.75])
    assert torch.isnan(pd.object_auc(torch.rand(1, 2, 2), torch.zeros(1, 2, 2))).all()


def test_map_placement_splits_the_mass_into_part_rest_and_background() -> None:
    obj = torch.zeros(2, 4, 4)
    obj[:, :2, :] = 1  # top half is the object
    part = torch.zeros(2, 4, 4)
    part[:, 0, :] = 1  # top row is the part
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0] = 1.0  # all on the part
    maps[1, 0, 0], maps[1, 1, 0], maps[1, 3, 3], maps[1, 3, 2] = 1.0, 1.0, 1.0, 1.0  # 1/4 part, 1/4 rest, 1/2 bg
    items = [
        {"image": torch.zeros(3, 4, 4), "label": 0, "affordance": aff, "part_mask": part[i], "object_mask": obj[i]}
        for i, aff in enumerate(["x", "y"])
    ]
    # On a 2x2 grid, upsampled to 4x4: the saliency is the object (top row of the grid) for image 0 and its inverse
    # for image 1; the class maps' log-sum-exp is the object for both.
    saliency = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]])
    ego_pred = torch.stack([saliency[0], saliency[0] - 1.0]).unsqueeze(0).repeat(2, 1, 1, 1)  # (2, C=2, 2, 2)
    stats = pd.map_placement(_MapModel(maps, saliency, ego_pred), items, batch_size=2)
    x, y = stats["per_affordance"]["x"], stats["per_affordance"]["y"]
    assert (x["part"], x["object_rest"], x["background"]) == pytest.approx((1.0, 0.0, 0.0))
    assert (y["part"], y["object_rest"], y["background"]) == pytest.approx((0.25, 0.25, 0.5))
    assert stats["overall"]["part"] == pytest.approx(0.625)
    assert (x["saliency_auc"], y["saliency_auc"], stats["overall"]["saliency_auc"]) == pytest.approx((1.0, 0.0, 0.5))
    assert x["objectness_auc"] == pytest.approx(1.0) and y["objectness_auc"] == pytest.approx(1.0)


def test_prototype_selection_leaves_the_models_state_alone(make_grounder, make_batch) -> None:
    # BatchNorm statistics, the running mean descriptor and the class-contrast bank stay as the checkpoint holds them
    model = make_grounder({"model": {"extensions": {"center_descriptors": True, "class_contrast": True}}}).train()
    model(make_batch(b=4))  # a training step: the bank and the mean now hold something
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = {**make_batch(b=4, seed=3), "ego_part_mask": torch.ones(4, 32, 32)}
    stats = pd.prototype_selection(model, [batch], max_batches=1)
    assert model.training and stats["num_parts"] == 3
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def checkpoint(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny grounder with the stateful offline extensions on the session's world, its running mean non-zero."""
    from datasets.agd20k import load_class_names
    from models.build import build_model
    from utils.config import load_config
    from utils.engine.checkpoint import save_checkpoint

    base = tmp_path_factory.mktemp("diag")
    extensions = {"center_descriptors": True, "class_contrast": True}
    cfg = load_config(tiny_config_file(base / "tiny.yaml", tiny_world, overrides={"model": {"extensions": extensions}}))
    torch.manual_seed(0)
    names = load_class_names(cfg.data.root, "Seen")
    model = build_model(cfg, names)
    model.proto_space.desc_mean.normal_()  # a non-zero running mean, as after training
    return save_checkpoint(
        base / "run" / "Seen" / "last.pth", model=model, cfg=cfg, class_names=names, epoch=1, step=2, split="Seen"
    )


def test_command_writes_both_tables(checkpoint: Path, tiny_world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pd.main(["--checkpoint", str(checkpoint), "--batches", "2", "--batch-size", "4", "--no-progress"]) == 0
    report = json.loads((checkpoint.parent / "part_diagnostics.json").read_text())
    assert report["split"] == "Seen"
    sel, place = report["prototype_selection"], report["map_placement"]
    assert 0 < sel["overall"]["count"] <= 8
    for d in sel["per_affordance"].values():
        assert 0 <= d["chosen_is_nearest"] <= 1 and -1 <= d["random_cos"] <= d["best_cos"] <= 1 + 1e-6
        assert d["chosen_cos"] <= d["best_cos"] + 1e-6
    for d in place["per_affordance"].values():
        assert d["part"] + d["object_rest"] + d["background"] == pytest.approx(1.0, abs=1e-4)
        assert 0 <= d["saliency_auc"] <= 1 and 0 <= d["objectness_auc"] <= 1
    gt_dir = tiny_world / "Seen" / "testset" / "GT"
    assert place["overall"]["count"] == len(list(gt_dir.rglob("*.png")))
    printed = capsys.readouterr().out
    assert "Prototype selection" in printed and "Where the label map's mass lies" in printed


def test_command_errors_are_clear(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pd.main(["--checkpoint", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pd.parse_args(["--checkpoint", str(checkpoint), "--batches", "0"])
