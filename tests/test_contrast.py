"""Tests of models/extensions/contrast.py: the class-patch bank (a ring buffer in registered buffers: chronological,
saved and restored, updated only in training) and the class-contrast choice of the part prototype."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import CLASS_NAMES, tiny_config

from models.extensions.contrast import ClassContrastSelector, ClassPatchBank, contrast_selection
from models.outputs import PartSelection
from models.parts import PartIoUSelector
from utils.engine.checkpoint import build_model_from_checkpoint, save_checkpoint

CONTRAST = {"model": {"extensions": {"class_contrast": True, "contrast_bank": 2}}}


class ListBank:
    """The bank's contract written plainly: per class, a Python list of the normalised images, oldest first."""

    def __init__(self, num_classes: int, size: int) -> None:
        self.size = size
        self.items: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]

    def add(self, desc: torch.Tensor, labels: torch.Tensor) -> None:
        for image, c in zip(desc, labels.tolist()):
            self.items[c].append(F.normalize(image.flatten(1).float(), dim=0))  # (D, hw), unit patches
            if len(self.items[c]) > self.size:
                self.items[c].pop(0)

    def presence(self, protos: torch.Tensor, topk: int) -> torch.Tensor:
        out = torch.zeros(protos.shape[0], len(self.items), protos.shape[1])
        for c, images in enumerate(self.items):
            for i in range(protos.shape[0]):
                for k in range(protos.shape[1]):
                    per_image = [(protos[i, k] @ img).topk(topk).values.mean() for img in images]
                    out[i, c, k] = torch.stack(per_image).mean() if per_image else 0.0
        return out


def _one_hot_images(patches: list[list[int]], dim: int = 4) -> torch.Tensor:
    """Egocentric descriptors (B, dim, 1, n) whose patch j is the unit vector e_{patches[b][j]}."""
    return torch.stack([F.one_hot(torch.tensor(p), dim).float().T.unsqueeze(1) for p in patches])


def test_bank_keeps_chronological_order_across_wrap_around_like_a_list() -> None:
    g = torch.Generator().manual_seed(0)
    bank, ref = ClassPatchBank(num_classes=3, size=3, dim=5, num_patches=4), ListBank(3, 3)
    # 12 batches of 1 to 4 images; class 0 comes often, so its ring wraps around several times, class 2 never comes
    for step in range(12):
        b = 1 + step % 4
        labels = torch.randint(0, 2, (b,), generator=g)
        desc = torch.randn(b, 5, 2, 2, generator=g) * 3
        bank.add(desc, labels)
        ref.add(desc, labels)
        assert bank.filled.tolist() == [len(v) for v in ref.items], step
        assert len(bank) == sum(len(v) for v in ref.items)
        for c in range(3):
            want = torch.stack(ref.items[c]) if ref.items[c] else torch.zeros(0, 5, 4)
            torch.testing.assert_close(bank.stored(c), want, rtol=0, atol=1e-6)
    assert bank.head.tolist()[2] == 0 and int(bank.filled[0]) == 3  # class 0 full and wrapped
    protos = F.normalize(torch.randn(2, 3, 5, generator=g), dim=-1)
    presence, known = bank.presence(protos, topk=2)
    assert known.tolist() == [True, True, False]
    torch.testing.assert_close(presence, ref.presence(protos, topk=2), rtol=0, atol=1e-6)


def test_bank_keeps_the_newest_images_and_measures_presence() -> None:
    bank = ClassPatchBank(num_classes=3, size=2, dim=4, num_patches=2)
    bank.add(_one_hot_images([[0, 1], [0, 2], [0, 3]]), torch.tensor([0, 0, 0]))
    assert bank.filled.tolist() == [2, 0, 0]  # the oldest image (with e1) was dropped
    torch.testing.assert_close(bank.stored(0), _one_hot_images([[0, 2], [0, 3]]).flatten(2))
    bank.add(_one_hot_images([[0, 0]]), torch.tensor([1]))
    protos = torch.eye(4)[:3].unsqueeze(0)  # (1, K=3, D=4): e0, e1, e2
    presence, known = bank.presence(protos, topk=1)
    assert known.tolist() == [True, True, False]
    # class 0 holds [e0, e2] and [e0, e3]: e0 is in both, e1 in none, e2 in one of two
    torch.testing.assert_close(presence[0, 0], torch.tensor([1.0, 0.0, 0.5]))
    torch.testing.assert_close(presence[0, 1], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(presence[0, 2], torch.zeros(3))
    bank.clear()
    assert len(bank) == 0 and bank.head.sum() == 0 and bank.patches.abs().sum() == 0
    with pytest.raises(ValueError, match=r"positive sizes.*size=0"):
        ClassPatchBank(3, 0, 4, 2)


def test_bank_state_is_in_the_state_dict_and_comes_back() -> None:
    g = torch.Generator().manual_seed(1)
    bank = ClassPatchBank(num_classes=2, size=3, dim=4, num_patches=3)
    for _ in range(5):
        bank.add(torch.randn(2, 4, 1, 3, generator=g), torch.tensor([0, 1]))
    state = bank.state_dict()
    assert set(state) == {"patches", "filled", "head"}
    fresh = ClassPatchBank(num_classes=2, size=3, dim=4, num_patches=3)
    assert len(fresh) == 0
    fresh.load_state_dict(state)
    for c in range(2):
        assert torch.equal(fresh.stored(c), bank.stored(c))
    # the restored ring goes on exactly as the original: the same next slot is overwritten
    more = torch.randn(1, 4, 1, 3, generator=g)
    bank.add(more, torch.tensor([0]))
    fresh.add(more, torch.tensor([0]))
    assert all(torch.equal(a, b) for a, b in zip(bank.state_dict().values(), fresh.state_dict().values()))


def test_bank_refuses_descriptors_of_another_grid() -> None:
    bank = ClassPatchBank(num_classes=2, size=2, dim=4, num_patches=16)
    with pytest.raises(ValueError, match=r"\(D, h\*w\) = \(4, 9\) do not fit the bank's \(4, 16\).*resume with"):
        bank.add(torch.randn(1, 4, 3, 3), torch.tensor([0]))


def _selection(centroids: torch.Tensor, best: list[int], has: list[bool]) -> PartSelection:
    b, k, _ = centroids.shape
    return PartSelection(
        prototypes=torch.zeros(b, centroids.shape[-1]),
        has_prototype=torch.tensor(has),
        part_scores=torch.full((b, k), 0.7),
        part_sim=torch.zeros(b, k, 1, 2),
        best=torch.tensor(best),
        centroids=centroids,
    )


def test_contrast_selection_prefers_what_only_the_own_class_shows_over_the_background() -> None:
    # e0 is "background" (in every class's images), e1 is class 0's part, e2 is in nobody's images ("the person").
    bank = ClassPatchBank(num_classes=3, size=4, dim=4, num_patches=2)
    bank.add(_one_hot_images([[0, 1], [0, 1], [0, 3], [0, 3], [0, 3]]), torch.tensor([0, 0, 1, 1, 2]))
    centroids = torch.eye(4)[:3].unsqueeze(0).repeat(3, 1, 1) * 2.0  # raw (unnormalised) centroids e0, e1, e2
    centroids[2] = 0  # the third sample has no clusters
    parts = _selection(centroids, best=[0, 0, 0], has=[True, True, False])
    presence, known = bank.presence(F.normalize(centroids, dim=-1), topk=1)
    out = contrast_selection(parts, presence, known, torch.tensor([0, 1, 0]), weight=0.5)
    # Sample 0 (class 0): background 1 - 0.5 * 1 = 0.5, part 1 - 0.5 * 0 = 1, person 0 -> the part.
    # Presence alone would tie background and part; PartIoU had picked the background.
    assert out.best.tolist()[0] == 1 and bool(out.has_prototype[0])
    torch.testing.assert_close(out.part_scores[0], torch.tensor([0.5, 1.0, 0.0]))
    torch.testing.assert_close(out.prototypes[0], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    # Sample 1 (class 1 sees only the background): background 0.5, class 0's part 0 - 0.5 = -0.5 -> background.
    assert out.best.tolist()[1] == 0
    # Sample 2 has no clusters: PartIoU's choice and scores are kept, and it has no prototype.
    assert out.best.tolist()[2] == 0 and not bool(out.has_prototype[2])
    torch.testing.assert_close(out.part_scores[2], torch.full((3,), 0.7))
    assert (out.prototypes[2] == 0).all()


def test_contrast_selection_keeps_partiou_for_classes_the_bank_has_not_seen_and_needs_a_positive_score() -> None:
    bank = ClassPatchBank(num_classes=2, size=4, dim=4, num_patches=2)
    bank.add(_one_hot_images([[0, 0]]), torch.tensor([0]))  # class 0: only background
    centroids = torch.eye(4)[:2].unsqueeze(0).repeat(2, 1, 1)
    parts = _selection(centroids, best=[1, 1], has=[True, True])
    presence, known = bank.presence(centroids, topk=1)
    out = contrast_selection(parts, presence, known, torch.tensor([0, 1]), weight=1.0)
    # Class 0, no other class known: background scores 1, kept with a prototype.
    assert out.best.tolist()[0] == 0 and bool(out.has_prototype[0])
    # Class 1 has no images in the bank: PartIoU's choice stands.
    assert out.best.tolist()[1] == 1 and bool(out.has_prototype[1])
    torch.testing.assert_close(out.prototypes[1], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    # With weight 1 and class 1 seeing the same background, the best score is 0: no prototype.
    bank.add(_one_hot_images([[0, 0]]), torch.tensor([1]))
    presence, known = bank.presence(centroids, topk=1)
    out = contrast_selection(parts, presence, known, torch.tensor([0, 1]), weight=1.0)
    assert not bool(out.has_prototype[0]) and (out.prototypes[0] == 0).all()


def _selector_inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 2, 4, 3, 3, generator=g),  # exo_desc (b, n, D, h, w)
        torch.randn(2, 2, 3, 3, generator=g),  # exo_cam
        torch.randn(2, 4, 3, 3, generator=g),  # ego_desc
        torch.rand(2, 3, 3, generator=g),  # ego_saliency
        torch.tensor([0, 1]),
    )


def test_selector_adds_the_batch_after_choosing_and_only_in_training() -> None:
    base = PartIoUSelector(cam_thd=0.0, iou_thd=0.0, num_parts=2, kmeans_iters=5)
    selector = ClassContrastSelector(base, ClassPatchBank(2, 3, 4, 9), weight=0.5)
    inputs = _selector_inputs()
    selector.eval()
    first = selector(*inputs, {})
    assert len(selector.bank) == 0  # evaluation (validation, the CAM tool) leaves the bank alone
    # an empty bank knows no class: the base rule's choice stands
    plain = base(*inputs, {})
    assert torch.equal(first.best, plain.best) and torch.equal(first.prototypes, plain.prototypes)
    selector.train()
    selector(*inputs, {})
    assert selector.bank.filled.tolist() == [1, 1]
    torch.testing.assert_close(selector.bank.stored(1)[0], F.normalize(inputs[2][1].flatten(1), dim=0))
    with pytest.raises(ValueError, match="weight >= 0"):
        ClassContrastSelector(base, ClassPatchBank(2, 3, 4, 9), weight=-0.1)


def test_the_grounders_bank_follows_training_mode_and_travels_in_checkpoints(make_grounder, make_batch, tmp_path):
    model = make_grounder(CONTRAST)
    bank = model.parts.bank
    assert isinstance(model.parts, ClassContrastSelector) and bank.size == 2
    assert {"parts.bank.patches", "parts.bank.filled", "parts.bank.head"} <= set(model.state_dict())
    batch = make_batch(b=4)  # labels 0, 2, 1, 0
    model.eval()
    model(batch)
    model.predict(batch["ego"], batch["label"])
    assert len(bank) == 0  # a validation pass or a prediction stores nothing
    model.train()
    model(batch)
    assert bank.filled.tolist() == [2, 1, 1]
    model(make_batch(b=4, seed=2))
    assert bank.filled.tolist() == [2, 2, 2] and bank.head.tolist() == [0, 0, 0]  # two per class: the newest stay

    path = save_checkpoint(
        tmp_path / "last.pth", model=model, cfg=tiny_config(CONTRAST), class_names=CLASS_NAMES, epoch=1, step=2
    )
    again, _, _ = build_model_from_checkpoint(path, "cpu")
    for c in range(3):
        assert torch.equal(again.parts.bank.stored(c), bank.stored(c))
    assert again.parts.bank.filled.tolist() == [2, 2, 2]
