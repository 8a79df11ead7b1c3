"""Tests of models/build.py: the configuration mapped to the grounder's parts, and their initial weights."""

from __future__ import annotations

import torch
from conftest import CLASS_NAMES, tiny_config

from models.build import build_model
from models.criterion import build_criterion
from models.extensions.appearance import AppearanceStats
from models.extensions.centring import DescriptorCentring
from models.extensions.contrast import ClassContrastSelector
from models.extensions.object_prior import ObjectPrior
from models.extensions.oracle import OracleSelector
from models.extensions.pooling import TopKPool
from models.gating import TextGate
from models.heads import GlobalAveragePool
from models.parts import PartIoUSelector
from models.saliency import LocateSaliency, TextGuidedSaliency
from models.text import LearnedTextEncoder


def test_the_published_recipe_has_no_extension(make_grounder):
    model = make_grounder()
    assert isinstance(model.saliency, LocateSaliency) and model.saliency.heads == [0, 1]
    assert isinstance(model.parts, PartIoUSelector) and isinstance(model.pool, GlobalAveragePool)
    assert (model.parts.cam_thd, model.parts.iou_thd, model.parts.num_parts) == (0.6, 0.6, 3)
    assert model.text is model.gate is model.attn_pool is model.logit_scale is None
    assert model.descriptor_extra is model.proto_space is model.postprocess is None
    assert model.aff_ego_proj[0].kernel_size == model.aff_exo_proj[3].kernel_size == (3, 3)
    assert model.aff_proj.residual and model.aff_proj.fc1.out_features == 4 * 32


def test_build_model_reads_the_config(make_batch):
    cfg = tiny_config(
        {
            "model": {
                "num_parts": 2,
                "aff_cam_thd": 0.4,
                "text": {"encoder": "learned"},
                "saliency": "bitalign",
                "text_gating": True,
                "extensions": {"topk_pool": 0.3},
            },
            "loss": {"conc": 0.5, "proto_warmup_epochs": 3, "proto_margin": 0.2, "sep": 2.0},
            "seed": 7,
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg, CLASS_NAMES)
    assert model.backbone.patch_size == 8 and model.backbone.default_grid == (4, 4)
    assert isinstance(model.text, LearnedTextEncoder) and isinstance(model.saliency, TextGuidedSaliency)
    assert isinstance(model.gate, TextGate) and model.attn_pool.num_heads == 2
    assert torch.equal(model.logit_scale.detach(), torch.tensor(1 / 0.07).log())  # CLIP's initial temperature
    assert (model.parts.num_parts, model.parts.seed, model.parts.cam_thd) == (2, 7, 0.4)
    assert isinstance(model.pool, TopKPool) and model.pool.top == 0.3
    assert model.aff_fc.out_channels == 3 and model.aff_proj.fc1.out_features == 128
    criterion = build_criterion(cfg.loss)
    assert (criterion.conc, criterion.proto_warmup_epochs, criterion.proto_margin, criterion.sep) == (0.5, 3, 0.2, 2.0)
    out = model.train()(make_batch())
    assert out.parts.part_scores.shape == (2, 2)
    losses = criterion(out, epoch=0)
    assert losses["sep"].item() > 0
    expected = losses["ce_ego"] + losses["ce_exo"] + 0.5 * losses["conc"] + losses["contra"] + 2.0 * losses["sep"]
    torch.testing.assert_close(losses["total"], expected)  # epoch 0 < warm-up 3: no prototype term yet


def test_build_model_wires_the_offline_extensions_and_the_border_loss_counts_in_the_total(make_batch):
    cfg = tiny_config(
        {
            "model": {
                "proj_kernels": [1, 1],
                "extensions": {
                    "appearance": 2.0,
                    "center_descriptors": True,
                    "class_contrast": True,
                    "contrast_weight": 0.25,
                    "contrast_bank": 2,
                    "object_prior": 0.3,
                },
            },
            "loss": {"border": 1.5, "proto_warmup_epochs": 3},
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg, CLASS_NAMES)
    assert isinstance(model.descriptor_extra, AppearanceStats) and model.descriptor_extra.weight == 2.0
    assert model.backbone.out_dim == 32 and model.aff_fc.in_channels == 32 + 7
    assert isinstance(model.proto_space, DescriptorCentring) and model.proto_space.desc_mean.shape == (39,)
    assert isinstance(model.parts, ClassContrastSelector) and model.parts.weight == 0.25
    assert isinstance(model.parts.base, PartIoUSelector)
    assert model.parts.bank.size == 2 and model.parts.bank.patches.shape == (3, 2, 39, 16)  # (C, size, D, h w)
    assert isinstance(model.postprocess, ObjectPrior) and model.postprocess.share == 0.3
    assert model.aff_ego_proj[0].kernel_size == (1, 1) and model.aff_exo_proj[3].kernel_size == (1, 1)
    model.train()
    out = model(make_batch(b=4))
    assert model.parts.bank.filled.tolist() == [2, 1, 1]
    losses = build_criterion(cfg.loss)(out, epoch=0)
    assert 0 < losses["border"].item() < 1
    expected = losses["ce_ego"] + losses["ce_exo"] + 0.07 * losses["conc"] + 1.5 * losses["border"]
    torch.testing.assert_close(losses["total"], expected)
    # A second step chooses with the bank: samples of classes it has images of get the contrast rule's scores.
    out = model(make_batch(b=4, seed=2))
    assert model.parts.bank.filled.tolist() == [2, 2, 2]  # two per class at most: the newest stay
    assert torch.isfinite(out.parts.part_scores).all()


def test_the_oracle_wraps_whatever_selector_is_built(make_grounder):
    model = make_grounder({"model": {"extensions": {"oracle_prototypes": True, "class_contrast": True}}})
    assert isinstance(model.parts, OracleSelector) and isinstance(model.parts.base, ClassContrastSelector)


def test_parameter_free_parts_leave_the_initial_weights_unchanged(make_grounder):
    # the parts are created in a fixed order: a rule without parameters switched on draws no random numbers
    plain = make_grounder().state_dict()
    extended = make_grounder(
        {
            "model": {
                "extensions": {
                    "center_descriptors": True,
                    "class_contrast": True,
                    "topk_pool": 0.3,
                    "object_prior": 0.2,
                    "oracle_prototypes": True,
                }
            }
        }
    ).state_dict()
    assert set(plain) < set(extended)  # the centring and bank buffers come on top
    assert all(torch.equal(v, extended[k]) for k, v in plain.items())
