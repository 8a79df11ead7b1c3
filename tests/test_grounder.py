"""Tests of models/grounder.py on a tiny random ViT (32x32 inputs, 8x8 patches, width 32, 2 heads), CPU only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.backbone import ViTBackbone
from models.grounder import Grounder, binarize_at_mean, build_model
from models.heads import class_logits
from models.text import LearnedTextEncoder, OpenClipTextEncoder
from utils.config import config_from_dict
from utils.maps import normalize_minmax

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
NAMES = ["cut_with", "hold", "pour"]
TINY_TEXT = {"width": 32, "layers": 1, "heads": 2, "context_length": 16}


def make(saliency: str = "locate", text: str = "none", gating: bool = False, prompt_tokens: int = 0) -> Grounder:
    torch.manual_seed(0)
    backbone = ViTBackbone("vit_small_patch16_224", **TINY)
    enc = None
    if text == "learned":
        enc = LearnedTextEncoder(NAMES, 32)
    elif text == "clip":
        enc = OpenClipTextEncoder(NAMES, 32, text_cfg=TINY_TEXT, prompt_tokens=prompt_tokens)
    return Grounder(NAMES, backbone, enc, saliency=saliency, cls_heads=[0, 1], text_gating=gating, kmeans_iters=10)


def batch(b: int = 2, n: int = 3, size: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "exo": torch.randn(b, n, 3, size, size, generator=g),
        "ego": torch.randn(b, 3, size, size, generator=g),
        "label": torch.tensor([0, 2, 1, 0][:b]),
    }


def test_forward_outputs_match_the_interface():
    model = make().train()
    out = model(batch(), epoch=1)
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
        "part_sim": (2, 3, 4, 4),
        "part_scores": (2, 3),
        "prototypes": (2, 32),
        "has_prototype": (2,),
        "part_centroids": (2, 3, 32),
        "part_best": (2,),
    }
    for key, shape in shapes.items():
        assert tuple(out[key].shape) == shape, key
    assert out["attnpool_mask"] is None
    assert out["selected_head"].tolist() == [-1, -1]
    assert set(out["losses"]) == {"ce_ego", "ce_exo", "proto", "conc", "contra", "sep", "border", "total"}
    assert out["losses"]["sep"].item() == 0.0  # off in the published recipe
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out["losses"].values())
    assert out["gt_ego_cam"].min() >= 0 and out["gt_ego_cam"].max() <= 1
    assert set(out["head_masks"].unique().tolist()) <= {0.0, 1.0}
    losses = out["losses"]
    expected = losses["ce_ego"] + losses["ce_exo"] + losses["proto"] + 0.07 * losses["conc"]
    torch.testing.assert_close(losses["total"], expected)


def test_gathers_and_locate_saliency_are_right():
    model = make().train()
    data = batch()
    out = model(data, epoch=0)
    cams = out["aff_cam"].view(2, 3, 3, 4, 4)
    for i, lab in enumerate(data["label"].tolist()):
        torch.testing.assert_close(out["gt_aff_cam"][i], cams[i, :, lab])
        torch.testing.assert_close(out["gt_ego_cam"][i], normalize_minmax(out["ego_pred"][i, lab]))
    masks = binarize_at_mean(out["cls_attn"])
    torch.testing.assert_close(out["head_masks"], masks)
    torch.testing.assert_close(out["saliency"], normalize_minmax(masks[:, [0, 1]].mean(1)))
    assert out["losses"]["proto"].item() == 0.0  # epoch 0 < proto_warmup_epochs


def test_every_trainable_parameter_gets_a_gradient_and_the_backbone_none():
    model = make().train()
    model.aff_cam_thd = 0.0  # cluster every patch so that prototypes exist on random weights
    model.part_iou_thd = 0.0
    out = model(batch(), epoch=5)
    assert bool(out["has_prototype"].all()) and out["losses"]["proto"].item() > 0
    out["losses"]["total"].backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(not n.startswith("backbone.") for n, _ in trainable)
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert all(p.grad is None for p in model.backbone.parameters())
    assert not model.backbone.vit.training
    assert model.frozen_prefixes() == ("backbone.",)


def test_bitalign_with_learned_text_trains_text_pool_and_scale():
    model = make(saliency="bitalign", text="learned", gating=True).train()
    out = model(batch(), epoch=0)
    assert out["attnpool_mask"].shape == (2, 4, 4)
    assert out["selected_head"].min() >= 0 and out["selected_head"].max() < 2
    chosen = out["head_masks"][torch.arange(2), out["selected_head"]]
    torch.testing.assert_close(out["saliency"], normalize_minmax(0.5 * out["attnpool_mask"] + 0.5 * chosen))
    assert out["losses"]["contra"].item() > 0
    out["losses"]["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert model.text.embedding.weight.grad.abs().sum() > 0


def test_learnable_prompts_of_the_clip_encoder_get_gradients():
    model = make(saliency="bitalign", text="clip", gating=True, prompt_tokens=2).train()
    out = model(batch(), epoch=0)
    out["losses"]["total"].backward()
    assert model.text.prompt.grad is not None and model.text.prompt.grad.abs().sum() > 0
    assert model.text.proj.weight.grad is not None
    assert all(p.grad is None for p in model.text.tower.parameters())
    assert model.frozen_prefixes() == ("backbone.", "text.tower.")


def test_forward_is_float32_where_it_matters_under_autocast():
    model = make().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch(), epoch=2)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out["losses"].values())
    assert out["part_scores"].dtype == torch.float32


def test_predict_maps_by_index_and_by_name_agree():
    model = make().train()
    images = torch.randn(2, 3, 32, 32)
    by_idx = model.predict(images, torch.tensor([1, 2]), output_size=(20, 24), return_features=True)
    by_name = model.predict(images, ["hold", "Pour"], output_size=(20, 24))
    assert model.training  # the previous mode is restored
    assert by_idx["maps"].shape == (2, 20, 24)
    torch.testing.assert_close(by_idx["maps"], by_name["maps"])
    assert by_idx["maps"].min() >= 0 and by_idx["maps"].max() <= 1
    up = F.interpolate(by_idx["ego_pred"][:, [1, 2]][[0, 1], [0, 1]].unsqueeze(1), size=(20, 24), mode="bilinear")
    torch.testing.assert_close(by_idx["maps"], normalize_minmax(up.squeeze(1)))
    torch.testing.assert_close(by_idx["probs"].sum(1), torch.ones(2))
    feats = by_idx["features"]
    assert feats["descriptors"].shape == feats["adapter"].shape == feats["projection"].shape == (2, 32, 4, 4)
    assert feats["cam"].shape == (2, 3, 4, 4)


def test_predict_label_free_and_other_input_size():
    model = make().eval()
    out = model.predict(torch.randn(3, 3, 48, 32))
    assert out["all_maps"].shape == (3, 3, 48, 32) and out["pred_label"].shape == (3,)
    assert out["ego_pred"].shape == (3, 3, 6, 4)
    torch.testing.assert_close(out["pred_label"], out["logits"].argmax(1))
    assert out["all_maps"].amax(dim=(-2, -1)).allclose(torch.ones(3, 3))


def test_object_prior_mixes_the_models_own_object_map_into_the_predictions():
    model = make().eval()
    # hand-made maps: the mixture of the two unit-mass maps, each min-max normalised first
    maps = torch.tensor([[[[0.0, 2.0], [0.0, 0.0]]]])  # (1, 1, 2, 2): all on one cell
    ego_pred = torch.log(torch.tensor([[[[1.0, 1.0], [3.0, 1.0]]]]))  # (1, C=1, 2, 2): object map 0, 0 / 1, 0
    assert model.mix_object_prior(maps, ego_pred) is maps  # object_prior 0: untouched
    model.object_prior = 0.25
    mixed = model.mix_object_prior(maps, ego_pred)
    torch.testing.assert_close(mixed, torch.tensor([[[[0.0, 0.75], [0.25, 0.0]]]]))
    # predict: the label's map and the label-free maps both get the mixture, computed on the patch grid
    images = torch.randn(2, 3, 32, 32)
    out = model.predict(images, torch.tensor([1, 2]), output_size=(20, 24))
    label_map = out["ego_pred"][[0, 1], [1, 2]].unsqueeze(1)
    want = F.interpolate(model.mix_object_prior(label_map, out["ego_pred"]), size=(20, 24), mode="bilinear")
    torch.testing.assert_close(out["maps"], normalize_minmax(want.squeeze(1)))
    plain = F.interpolate(label_map, size=(20, 24), mode="bilinear")
    assert not torch.allclose(out["maps"], normalize_minmax(plain.squeeze(1)))
    free = model.predict(images, output_size=(20, 24))
    want = F.interpolate(model.mix_object_prior(free["ego_pred"], free["ego_pred"]), size=(20, 24), mode="bilinear")
    torch.testing.assert_close(free["all_maps"], normalize_minmax(want))
    with pytest.raises(ValueError, match="object_prior"):
        Grounder(NAMES, ViTBackbone("vit_small_patch16_224", **TINY), cls_heads=[0, 1], object_prior=1.0)


def test_predict_label_free_with_gating_conditions_on_ungated_prediction():
    model = make(saliency="bitalign", text="learned", gating=True).eval()
    images = torch.randn(2, 3, 32, 32)
    out = model.predict(images)
    desc = model.backbone(images)["descriptors"]
    with torch.no_grad():
        ungated = model.aff_fc(model.aff_ego_proj(model.aff_proj.forward_grid(desc))).mean((-2, -1))
    torch.testing.assert_close(out["pred_label"], ungated.argmax(1))
    conditioned = model.predict(images, out["pred_label"])
    torch.testing.assert_close(out["logits"], conditioned["logits"])


def test_unknown_affordance_without_text_encoder_lists_class_names():
    model = make()
    with pytest.raises(ValueError, match=r"unknown affordance.*'grasp'.*cut_with.*hold.*pour"):
        model.predict(torch.randn(1, 3, 32, 32), ["grasp"])
    with pytest.raises(ValueError, match=r"label indices must be in \[0, 3\)"):
        model.predict(torch.randn(1, 3, 32, 32), torch.tensor([3]))
    with pytest.raises(ValueError, match="expected 2 labels"):
        model.predict(torch.randn(2, 3, 32, 32), ["hold"])


def test_open_vocabulary_phrase_with_clip_encoder():
    model = make(saliency="bitalign", text="clip", gating=True).eval()
    images = torch.randn(2, 3, 32, 32)
    out = model.predict(images, ["something to grasp firmly", "hold"])
    assert out["maps"].shape == (2, 32, 32) and torch.isfinite(out["maps"]).all()
    # A class name inside a mixed query still gives exactly its own channel.
    alone = model.predict(images[1:], ["hold"])
    torch.testing.assert_close(out["maps"][1:], alone["maps"], atol=1e-5, rtol=1e-5)


def test_topk_pooling_gives_the_logits_of_both_views_and_of_predict():
    torch.manual_seed(0)
    backbone = ViTBackbone("vit_small_patch16_224", **TINY)
    model = Grounder(NAMES, backbone, cls_heads=[0, 1], kmeans_iters=10, pooling="topk", pool_top=0.25)
    b = batch()
    out = model.train()(b)
    torch.testing.assert_close(out["logits_ego"], class_logits(out["ego_pred"], "topk", 0.25))
    exo_maps = out["aff_cam"].view(2, 3, len(NAMES), 4, 4)
    torch.testing.assert_close(out["logits_exo"], class_logits(exo_maps, "topk", 0.25))
    assert not torch.allclose(out["logits_ego"], class_logits(out["ego_pred"]))  # not the GAP logits
    pred = model.predict(b["ego"])
    torch.testing.assert_close(pred["logits"], class_logits(pred["ego_pred"], "topk", 0.25))
    with pytest.raises(ValueError, match="pooling must be one of"):
        Grounder(NAMES, backbone, cls_heads=[0], pooling="max")


def test_constructor_validation():
    backbone = ViTBackbone("vit_small_patch16_224", **TINY)
    with pytest.raises(ValueError, match=r"cls_heads \[0, 1, 3\].*\[0, 2\)"):
        Grounder(NAMES, backbone)
    with pytest.raises(ValueError, match="need a text encoder"):
        Grounder(NAMES, backbone, saliency="bitalign", cls_heads=[0])


def test_build_model_reads_the_config():
    cfg = config_from_dict(
        {
            "data": {"image_size": 32},
            "model": {
                "backbone": {"name": "vit_small_patch16_224", "kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2}},
                "cls_heads": [0, 1],
                "num_parts": 2,
                "pooling": "topk",
                "pool_top": 0.3,
                "text": {"encoder": "learned"},
                "saliency": "bitalign",
                "text_gating": True,
            },
            "loss": {"conc": 0.5, "proto_warmup_epochs": 3, "proto_margin": 0.2, "sep": 2.0},
            "seed": 7,
        }
    )
    cfg.model.backbone.kwargs["num_heads"] = 2
    model = build_model(cfg, NAMES)
    assert model.backbone.patch_size == 8 and model.backbone.default_grid == (4, 4)
    assert isinstance(model.text, LearnedTextEncoder) and model.saliency == "bitalign" and model.text_gating
    assert (model.num_parts, model.conc_weight, model.proto_warmup_epochs, model.kmeans_seed) == (2, 0.5, 3, 7)
    assert (model.proto_margin, model.sep_weight) == (0.2, 2.0)
    assert (model.pooling, model.pool_top) == ("topk", 0.3)
    assert model.aff_fc.out_channels == 3 and model.aff_proj.fc1.out_features == 128
    out = model.train()(batch(), epoch=0)
    assert out["part_scores"].shape == (2, 2)
    losses = out["losses"]
    assert losses["sep"].item() > 0
    expected = losses["ce_ego"] + losses["ce_exo"] + 0.5 * losses["conc"] + losses["contra"] + 2.0 * losses["sep"]
    torch.testing.assert_close(losses["total"], expected)  # epoch 0 < warm-up 3: no prototype term yet


def test_no_cuda_calls_anywhere_in_the_repository():
    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"\." + "cuda" + r"\(")
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if ".venv" not in p.parts and pattern.search(p.read_text(encoding="utf-8", errors="ignore"))
    ]
    assert not offenders, f"hard-coded CUDA moves in {offenders}; take a device argument instead"


def test_oracle_prototypes_come_from_the_part_mask_and_need_it():
    torch.manual_seed(0)
    backbone = ViTBackbone("vit_small_patch16_224", **TINY)
    model = Grounder(NAMES, backbone, cls_heads=[0, 1], kmeans_iters=10, oracle_prototypes=True).train()
    b = batch()
    with pytest.raises(ValueError, match="ego_part_mask"):
        model(b, epoch=1)
    mask = torch.zeros(2, 32, 32)
    mask[0, :8, :16] = 1.0  # the top-left two patches of a 4x4 grid
    b["ego_part_mask"] = mask  # sample 1 has an empty mask: no prototype
    out = model(b, epoch=1)
    desc = model.backbone(b["ego"])["descriptors"]  # (2, 32, 4, 4)
    expected = F.normalize(desc[0, :, 0, :2].mean(dim=-1), dim=0)
    torch.testing.assert_close(out["prototypes"][0], expected, rtol=1e-5, atol=1e-5)
    assert out["has_prototype"].tolist() == [True, False]
    assert out["losses"]["proto"].item() > 0
    # in eval mode (a test pass) the diagnostic is inert: the ordinary prototype selection runs, no mask needed
    model.eval()
    del b["ego_part_mask"]
    assert torch.isfinite(model(b, epoch=1)["losses"]["total"])


def test_centred_descriptors_feed_the_prototypes_and_their_loss():
    """center_descriptors: the part prototypes and the prototype loss see the descriptors minus their running mean
    (after one training step, that batch's mean, both views weighted equally), so a vector shared by every
    descriptor no longer dominates their cosines; evaluation does not move the mean; off, nothing changes."""
    from einops import rearrange

    from models.losses import prototype_loss
    from models.parts import select_part_prototypes

    torch.manual_seed(0)
    backbone = ViTBackbone("vit_small_patch16_224", **TINY)
    model = Grounder(NAMES, backbone, cls_heads=[0, 1], kmeans_iters=10, center_descriptors=True).train()
    b = batch()
    out = model(b, epoch=1)
    with torch.no_grad():
        exo = model.backbone(b["exo"].flatten(0, 1))["descriptors"]  # (6, 32, 4, 4)
        ego = model.backbone(b["ego"])["descriptors"]  # (2, 32, 4, 4)
    mean = 0.5 * (exo.mean(dim=(0, 2, 3)) + ego.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(model.desc_mean, mean, rtol=1e-5, atol=1e-5)
    assert int(model.desc_mean_count) == 1

    def select(exo_desc: torch.Tensor, ego_desc: torch.Tensor):
        return select_part_prototypes(
            rearrange(exo_desc, "(b n) d h w -> b n d h w", b=2),
            out["gt_aff_cam"],
            ego_desc,
            out["saliency"],
            k=model.num_parts,
            iters=10,
            seed=model.kmeans_seed,
        )

    mu = mean.view(1, -1, 1, 1)
    centred = select(exo - mu, ego - mu)
    torch.testing.assert_close(out["part_scores"], centred.part_scores)
    torch.testing.assert_close(out["prototypes"], centred.prototypes)
    expected = prototype_loss(ego - mu, out["gt_ego_cam"], centred.prototypes, centred.has_prototype, margin=0.5)
    torch.testing.assert_close(out["losses"]["proto"], expected)
    raw = select(exo, ego)  # what the published recipe compares: a different geometry
    assert not torch.allclose(raw.part_sim, centred.part_sim, atol=1e-3)
    before = model.desc_mean.clone()
    model.eval()(b, epoch=1)  # evaluation does not move the mean
    torch.testing.assert_close(model.desc_mean, before)
    # off (the default), there is no buffer: checkpoints of models without it keep loading
    assert not any(k.startswith("desc_mean") for k in make().state_dict())


def test_build_model_wires_the_offline_options_and_the_border_loss_counts_in_the_total():
    cfg = config_from_dict(
        {
            "data": {"image_size": 32},
            "model": {
                "backbone": {
                    "name": "vit_small_patch16_224",
                    "kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
                    "appearance": 2.0,
                },
                "cls_heads": [0, 1],
                "part_selection": "contrast",
                "part_contrast": 0.25,
                "part_bank": 2,
                "proj_kernels": [1, 1],
                "object_prior": 0.3,
            },
            "loss": {"border": 1.5, "proto_warmup_epochs": 3},
        }
    )
    model = build_model(cfg, NAMES)
    assert model.backbone.out_dim == 32 + 7 and model.aff_fc.in_channels == 39
    assert (model.part_selection, model.part_contrast, model.border_weight) == ("contrast", 0.25, 1.5)
    assert model.object_prior == 0.3
    assert model.part_bank is not None and model.part_bank.size == 2
    assert model.aff_ego_proj[0].kernel_size == (1, 1) and model.aff_exo_proj[3].kernel_size == (1, 1)
    model.train()
    out = model(batch(b=4), epoch=0)
    assert len(model.part_bank) == 4 and [len(v) for v in model.part_bank.items] == [2, 1, 1]
    losses = out["losses"]
    assert 0 < losses["border"].item() < 1
    expected = losses["ce_ego"] + losses["ce_exo"] + 0.07 * losses["conc"] + 1.5 * losses["border"]
    torch.testing.assert_close(losses["total"], expected)
    # A second step chooses with the bank: samples of classes it has images of get the contrast rule's scores.
    out = model(batch(b=4), epoch=0)
    assert [len(v) for v in model.part_bank.items] == [2, 2, 2]  # two per class at most: the newest stay
    assert torch.isfinite(out["part_scores"]).all()


def test_grounder_rejects_an_unknown_part_selection():
    backbone = ViTBackbone("vit_small_patch16_224", **TINY)
    with pytest.raises(ValueError, match="part_selection"):
        Grounder(NAMES, backbone, None, cls_heads=[0, 1], part_selection="nearest")
    with pytest.raises(ValueError, match="part_bank"):
        Grounder(NAMES, backbone, None, cls_heads=[0, 1], part_selection="contrast", part_bank=0)
