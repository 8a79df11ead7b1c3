"""Tests of models/grounder.py: the grounder composed of its parts, on a tiny random ViT (CPU only)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import CLASS_NAMES, TINY_TEXT

from models.criterion import LOSS_TERMS, build_criterion
from models.grounder import Grounder
from models.heads import GlobalAveragePool
from models.outputs import Features, GrounderOutput, Prediction
from models.saliency import LocateSaliency, TextGuidedSaliency, binarize_at_mean
from models.text import OpenClipTextEncoder
from utils.config import LossConfig
from utils.maps import normalize_minmax

BITALIGN = {"model": {"saliency": "bitalign", "text": {"encoder": "learned"}, "text_gating": True}}
OFFLINE = {
    "model": {
        "extensions": {"appearance": 2.0, "center_descriptors": True, "class_contrast": True, "object_prior": 0.3}
    }
}
CRITERION = build_criterion(LossConfig())


def parts_of(model: Grounder) -> dict:
    """The constructor arguments ``model`` was made of, but its class names."""
    names = ("backbone", "aff_proj", "aff_exo_proj", "aff_ego_proj", "aff_fc", "saliency", "parts", "text")
    names += ("attn_pool", "logit_scale", "gate", "pool", "descriptor_extra", "proto_space", "postprocess")
    return {n: getattr(model, n) for n in names}


def with_parts(model: Grounder, **parts) -> Grounder:
    """A grounder made of ``model``'s parts, some of them replaced."""
    return Grounder(model.class_names, **{**parts_of(model), **parts})


def clip_grounder(make_grounder, prompt_tokens: int = 0) -> Grounder:
    """BiT-Align with a one-layer random open_clip text tower (build_model would load a full-size one)."""
    model = make_grounder(BITALIGN)
    torch.manual_seed(0)
    return with_parts(model, text=OpenClipTextEncoder(CLASS_NAMES, 32, text_cfg=TINY_TEXT, prompt_tokens=prompt_tokens))


def _tensors(out: GrounderOutput) -> dict[str, torch.Tensor]:
    """Every tensor of an output, the part selection's included."""
    fields = {k: v for k, v in vars(out).items() if isinstance(v, torch.Tensor)}
    fields.update({f"parts.{k}": v for k, v in vars(out.parts).items()})
    return fields


def test_forward_outputs_match_the_interface(make_grounder, make_batch):
    model = make_grounder().train()
    out = model(make_batch())
    assert isinstance(out, GrounderOutput)
    shapes = {
        "aff_cam": (6, 3, 4, 4),
        "gt_aff_cam": (2, 3, 4, 4),
        "ego_pred": (2, 3, 4, 4),
        "gt_ego_cam": (2, 4, 4),
        "logits_exo": (2, 3, 3),
        "logits_ego": (2, 3),
        "cls_attn": (2, 2, 4, 4),
        "head_masks": (2, 2, 4, 4),
        "selected_head": (2,),
        "saliency": (2, 4, 4),
        "ego_proto_desc": (2, 32, 4, 4),
        "part_sim": (2, 3, 4, 4),
        "part_scores": (2, 3),
        "prototypes": (2, 32),
        "has_prototype": (2,),
        "centroids": (2, 3, 32),
        "best": (2,),
    }
    for key, shape in shapes.items():
        assert tuple(out.get(key).shape) == shape, key
    assert out.attnpool_mask is None and out.image_feature is None and out.text_features is None
    assert out.selected_head.tolist() == [-1, -1]
    assert out.gt_ego_cam.min() >= 0 and out.gt_ego_cam.max() <= 1
    assert set(out.head_masks.unique().tolist()) <= {0.0, 1.0}
    losses = CRITERION(out, epoch=1)
    assert tuple(losses) == LOSS_TERMS
    assert losses["sep"].item() == 0.0  # off in the published recipe
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    expected = losses["ce_ego"] + losses["ce_exo"] + losses["proto"] + 0.07 * losses["conc"]
    torch.testing.assert_close(losses["total"], expected)


def test_gathers_and_locate_saliency_are_right(make_grounder, make_batch):
    model = make_grounder().train()
    data = make_batch()
    out = model(data)
    cams = out.aff_cam.view(2, 3, 3, 4, 4)  # (b, n, C, h, w)
    for i, lab in enumerate(data["label"].tolist()):
        torch.testing.assert_close(out.gt_aff_cam[i], cams[i, :, lab])
        torch.testing.assert_close(out.gt_ego_cam[i], normalize_minmax(out.ego_pred[i, lab]))
    torch.testing.assert_close(out.logits_exo, cams.mean(dim=(-2, -1)))
    torch.testing.assert_close(out.logits_ego, out.ego_pred.mean(dim=(-2, -1)))
    masks = binarize_at_mean(out.cls_attn)
    torch.testing.assert_close(out.head_masks, masks)
    torch.testing.assert_close(out.saliency, normalize_minmax(masks[:, [0, 1]].mean(1)))
    assert CRITERION(out, epoch=0)["proto"].item() == 0.0  # epoch 0 < proto_warmup_epochs


@pytest.mark.parametrize("overrides", [{}, BITALIGN, OFFLINE], ids=["locate", "bitalign", "offline"])
def test_forward_on_precomputed_features_equals_forward_on_images(make_grounder, make_batch, overrides):
    model = make_grounder(overrides).train()
    twin = copy.deepcopy(model)  # training-mode state (BatchNorm, centring, bank) moves: each pass gets its own
    batch = make_batch(b=3)
    with torch.no_grad():
        exo = model.encode(batch["exo"].flatten(0, 1))  # (b n, ...) as the forward pass flattens them
        ego = model.encode(batch["ego"])
    assert isinstance(exo, Features) and exo.descriptors.shape[0] == 9
    on_images = model(batch)
    on_features = twin({"exo_features": exo, "ego_features": ego, "label": batch["label"]})  # no images at all
    a, b = _tensors(on_images), _tensors(on_features)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    for p, q in zip(model.state_dict().values(), twin.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)  # the same state updates (BatchNorm, bank, mean)


def test_eval_forward_does_not_depend_on_the_other_samples_of_the_batch(make_grounder, make_batch):
    model = make_grounder({"model": {"aff_cam_thd": 0.3, "part_iou_thd": 0.0}}).eval()
    batch = make_batch(b=3)
    together = _tensors(model(batch))
    for i in range(3):
        alone = _tensors(model({k: v[i : i + 1] for k, v in batch.items()}))
        for key, value in alone.items():
            if value.dim() == 0:
                continue
            rows = value.shape[0]  # aff_cam has b * n rows
            torch.testing.assert_close(value, together[key][i * rows : (i + 1) * rows], rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.parametrize("overrides", [{}, OFFLINE], ids=["locate", "offline"])
def test_every_trainable_parameter_gets_a_gradient_and_the_backbone_none(make_grounder, make_batch, overrides):
    # cluster every patch and accept every cluster so that prototypes exist on random weights
    model = make_grounder({"model": {"aff_cam_thd": 0.0, "part_iou_thd": 0.0, **overrides.get("model", {})}}).train()
    out = model(make_batch())
    losses = CRITERION(out, epoch=5)
    assert bool(out.parts.has_prototype.all()) and losses["proto"].item() > 0
    losses["total"].backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(not n.startswith("backbone.") for n, _ in trainable)
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, missing
    assert all(p.grad is None for p in model.backbone.parameters())
    assert not model.backbone.vit.training
    assert model.frozen_prefixes() == ("backbone.",)


def test_bitalign_with_learned_text_trains_text_pool_and_scale(make_grounder, make_batch):
    model = make_grounder(BITALIGN).train()
    assert isinstance(model.saliency, TextGuidedSaliency) and model.gate is not None
    out = model(make_batch())
    assert out.attnpool_mask.shape == (2, 4, 4)
    assert out.selected_head.min() >= 0 and out.selected_head.max() < 2
    chosen = out.head_masks[torch.arange(2), out.selected_head]
    torch.testing.assert_close(out.saliency, normalize_minmax(0.5 * out.attnpool_mask + 0.5 * chosen))
    torch.testing.assert_close(out.text_features, model.text.class_features())
    torch.testing.assert_close(out.logit_scale, model.logit_scale.exp())
    losses = CRITERION(out, epoch=0)
    assert losses["contra"].item() > 0
    losses["total"].backward()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert not missing, missing
    assert model.text.embedding.weight.grad.abs().sum() > 0 and model.logit_scale.grad.abs() > 0


def test_learnable_prompts_of_the_clip_encoder_get_gradients(make_grounder, make_batch):
    model = clip_grounder(make_grounder, prompt_tokens=2).train()
    CRITERION(model(make_batch()), epoch=0)["total"].backward()
    assert model.text.prompt.grad is not None and model.text.prompt.grad.abs().sum() > 0
    assert model.text.proj.weight.grad is not None
    assert all(p.grad is None for p in model.text.tower.parameters())
    assert model.frozen_prefixes() == ("backbone.", "text.tower.")


def test_forward_is_float32_where_it_matters_under_autocast(make_grounder, make_batch):
    model = make_grounder().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(make_batch())
        losses = CRITERION(out, epoch=2)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert out.parts.part_scores.dtype == torch.float32 and out.gt_ego_cam.dtype == torch.float32


def test_predict_maps_by_index_and_by_name_agree(make_grounder):
    model = make_grounder().train()
    images = torch.randn(2, 3, 32, 32)
    by_idx = model.predict(images, torch.tensor([1, 2]), output_size=(20, 24), return_features=True)
    by_name = model.predict(images, ["hold", "Pour"], output_size=(20, 24))
    by_list = model.predict(images, [1, 2], output_size=(20, 24))
    assert model.training  # the previous mode is restored
    assert isinstance(by_idx, Prediction) and by_idx.maps.shape == (2, 20, 24) and by_idx.all_maps is None
    torch.testing.assert_close(by_idx.maps, by_name.maps)
    torch.testing.assert_close(by_idx.maps, by_list.maps)
    assert by_idx.maps.min() >= 0 and by_idx.maps.max() <= 1
    up = F.interpolate(by_idx.ego_pred[[0, 1], [1, 2]].unsqueeze(1), size=(20, 24), mode="bilinear")
    torch.testing.assert_close(by_idx.maps, normalize_minmax(up.squeeze(1)))
    torch.testing.assert_close(by_idx.probs, by_idx.logits.softmax(1))
    feats = by_idx.features
    torch.testing.assert_close(feats["descriptors"], model.backbone(images).descriptors)
    assert feats["adapter"].shape == feats["projection"].shape == (2, 32, 4, 4)
    torch.testing.assert_close(feats["cam"], by_idx.ego_pred)
    assert by_name.features is None


def test_predict_label_free_and_other_input_size(make_grounder):
    model = make_grounder().eval()
    out = model.predict(torch.randn(3, 3, 48, 32))
    assert out.maps is None and out.all_maps.shape == (3, 3, 48, 32)
    assert out.ego_pred.shape == (3, 3, 6, 4)
    torch.testing.assert_close(out.pred_label, out.logits.argmax(1))
    assert out.all_maps.amax(dim=(-2, -1)).allclose(torch.ones(3, 3))
    want = normalize_minmax(F.interpolate(out.ego_pred, size=(48, 32), mode="bilinear"))
    torch.testing.assert_close(out.all_maps, want)


def test_predict_label_free_with_gating_conditions_on_ungated_prediction(make_grounder):
    model = make_grounder(BITALIGN).eval()
    images = torch.randn(2, 3, 32, 32)
    out = model.predict(images)
    desc = model.backbone(images).descriptors
    with torch.no_grad():
        ungated = model.aff_fc(model.aff_ego_proj(model.aff_proj.forward_grid(desc))).mean((-2, -1))
    torch.testing.assert_close(out.pred_label, ungated.argmax(1))
    conditioned = model.predict(images, out.pred_label)
    torch.testing.assert_close(out.logits, conditioned.logits)


def test_unknown_affordance_without_text_encoder_lists_class_names(make_grounder):
    model = make_grounder()
    with pytest.raises(ValueError, match=r"unknown affordance.*'grasp'.*cut_with.*hold.*pour"):
        model.predict(torch.randn(1, 3, 32, 32), ["grasp"])
    with pytest.raises(ValueError, match=r"label indices must be in \[0, 3\)"):
        model.predict(torch.randn(1, 3, 32, 32), torch.tensor([3]))
    with pytest.raises(ValueError, match="expected 2 labels"):
        model.predict(torch.randn(2, 3, 32, 32), ["hold"])
    with pytest.raises(TypeError, match="not a single string"):
        model.predict(torch.randn(1, 3, 32, 32), "hold")
    with pytest.raises(ValueError, match=r"expected images \(b, 3, H, W\)"):
        model.predict(torch.randn(3, 32, 32), ["hold"])


def test_open_vocabulary_phrase_with_clip_encoder(make_grounder):
    model = clip_grounder(make_grounder).eval()
    images = torch.randn(2, 3, 32, 32)
    out = model.predict(images, ["something to grasp firmly", "hold"])
    assert out.maps.shape == (2, 32, 32) and torch.isfinite(out.maps).all()
    # A class name inside a mixed query still gives exactly its own channel.
    alone = model.predict(images[1:], ["hold"])
    torch.testing.assert_close(out.maps[1:], alone.maps, atol=1e-5, rtol=1e-5)


def test_forward_checks_the_batch(make_grounder, make_batch):
    model = make_grounder()
    batch = make_batch()
    with pytest.raises(ValueError, match=r"expected exo \(b, n, 3, H, W\) and ego \(b, 3, H, W\) with the same b"):
        model({**batch, "ego": batch["ego"][:1]})
    with pytest.raises(ValueError, match=r"expected 2 labels in \[0, 3\), got \[0, 3\]"):
        model({**batch, "label": torch.tensor([0, 3])})


def test_constructor_validation(make_grounder):
    model = make_grounder(BITALIGN)
    with pytest.raises(ValueError, match=r"cls_heads \[0, 1, 3\].*\[0, 2\)"):
        make_grounder({"model": {"cls_heads": [0, 1, 3]}})
    with pytest.raises(ValueError, match="need a text encoder"):
        with_parts(model, text=None)
    with pytest.raises(ValueError, match="need a text encoder"):
        with_parts(model, saliency=LocateSaliency([0, 1]), text=None)  # the gate alone needs it too
    with pytest.raises(ValueError, match="AttentionPool2d and a logit scale"):
        with_parts(model, attn_pool=None)
    with pytest.raises(ValueError, match="aff_fc has 3 outputs for 4 classes"):
        Grounder([*CLASS_NAMES, "sip"], **parts_of(model))
    for names in ([], "hold"):
        with pytest.raises(ValueError, match="non-empty list of class names"):
            Grounder(names, **parts_of(model))
    assert isinstance(with_parts(make_grounder()).pool, GlobalAveragePool)


def test_no_cuda_calls_anywhere_in_the_repository():
    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"\." + "cuda" + r"\(")
    # the fake LOCATE tree that test_locate_timing.py writes calls cuda() as LOCATE's code does, on purpose
    allowed = {"tests/test_locate_timing.py"}
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if ".venv" not in p.parts
        and str(p.relative_to(root)) not in allowed
        and pattern.search(p.read_text(encoding="utf-8", errors="ignore"))
    ]
    assert not offenders, f"hard-coded CUDA moves in {offenders}; take a device argument instead"
