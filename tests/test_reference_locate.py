"""The LOCATE reference behaviours (configs/reference/locate_*.yaml) against LOCATE's published formulas, re-typed.

Each ``_published_*`` helper is re-typed from reading LOCATE's public code (``models/locate.py``, ``utils/util.py``
``get_optimizer``, ``utils/evaluation.py`` ``cal_nss``, the torchvision transforms of ``data/``) and run on small
hand-made inputs; nothing of that code is imported.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

import train
from datasets.agd20k import AGD20KTest, AGD20KTrain
from datasets.images import (
    center_resize,
    normalize,
    read_image,
    resize_shorter,
    train_transform,
    train_transform_with_mask,
)
from datasets.synthetic import ensure_world
from models.build import build_model
from models.criterion import build_criterion
from models.parts import select_part_prototypes
from utils.config import load_config
from utils.engine.checkpoint import load_checkpoint
from utils.engine.optim import build_optimizer, param_groups
from utils.evaluation.metrics import compute_metrics

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "configs" / "reference" / "locate_seen.yaml"
# A 1-block, 32-wide ViT with 4 heads (LOCATE's saliency reads heads 0, 1 and 3) on 32 x 32 inputs.
TINY_MODEL = [
    "model.backbone.weights=",
    "model.backbone.kwargs={img_size: 32, patch_size: 8, embed_dim: 32, depth: 1, num_heads: 4}",
    "data.image_size=32",
    "data.resize_size=36",
    "data.eval_size=32",
    "device=cpu",
]


# ---------------------------------------------------------------------------------------------- k-means parts
def _published_kmeans(points: torch.Tensor, init_idx: list[int], max_iter: int = 300) -> torch.Tensor:
    """fast-pytorch-kmeans 0.2.2 fit_predict (euclidean, tol 1e-4) from given start indices: the centroids."""
    k = len(init_idx)
    c = points[torch.tensor(init_idx)]
    for _ in range(max_iter):
        sim = 2 * points @ c.T - (points**2).sum(1)[:, None] - (c**2).sum(1)[None, :]
        mask = (sim.max(dim=-1)[1][None].expand(k, -1) == torch.arange(k)[:, None]).to(points.dtype)
        new = torch.nan_to_num(mask @ points / mask.sum(-1)[:, None])
        error = (new - c).pow(2).sum()
        c = new
        if error <= 1e-4:
            break
    return c


def _published_parts(exo_desc, exo_cam, ego_desc, ego_sam, init_idx, cam_thd=0.6, iou_thd=0.6, k=3):
    """LOCATE's per-sample part selection (models/locate.py Net.forward), re-typed: (part_proto, part_score)."""
    b, n, c = exo_desc.shape[:3]
    part_score = torch.zeros(b, k)
    part_proto = torch.zeros(b, c)
    ego_flat = ego_desc.flatten(-2)  # (b, c, hw)
    sam_flat = ego_sam.flatten(-2)  # (b, hw)
    for b_ in range(b):
        picked = []
        for n_ in range(n):
            cam = exo_cam[b_, n_].reshape(-1)
            cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-10)
            picked.append(exo_desc[b_, n_].flatten(-2)[:, torch.where(cam > cam_thd)[0]].T)
        points = torch.cat(picked, dim=0)
        if points.shape[0] < k:
            continue
        cens = F.normalize(_published_kmeans(points, init_idx[b_]), dim=1)
        sim_map = cens @ F.normalize(ego_flat[b_], dim=0)
        lo, hi = sim_map.min(-1, keepdim=True)[0], sim_map.max(-1, keepdim=True)[0]
        hard = (sim_map - lo) / (hi - lo + 1e-12) > ((sim_map - lo) / (hi - lo + 1e-12)).mean(1, keepdim=True)
        hard = hard.float()
        sam_hard = (sam_flat > sam_flat.mean(1, keepdim=True)).float()
        inter = (hard * sam_hard[b_]).sum(1)
        union = hard.sum(1) + sam_hard[b_].sum() - inter
        p_score = (inter / hard.sum(1) + sam_hard[b_].sum() / union) / 2
        part_score[b_] = p_score
        if p_score.max() < iou_thd:
            continue
        part_proto[b_] = cens[torch.argmax(p_score)]
    return part_proto, part_score


def test_locate_part_selection_reproduces_the_published_nan_rule_without_nan():
    gen = torch.Generator().manual_seed(3)
    b, n, d, h, w = 3, 2, 4, 3, 3
    exo_desc = torch.randn(b, n, d, h, w, generator=gen) + 5.0  # far from 0: a zero centroid never wins a point
    exo_cam = torch.rand(b, n, h, w, generator=gen)
    ego_desc = torch.randn(b, d, h, w, generator=gen)
    ego_desc[2] = torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None, None]  # one direction everywhere: flat similarity
    ego_sam = torch.rand(b, h, w, generator=gen)
    # sample 1 starts from a duplicated point: its second cluster ends empty, a zero centroid
    init = [[0, 1, 2], [0, 0, 1], [0, 1, 2]]
    proto_pub, score_pub = _published_parts(exo_desc, exo_cam, ego_desc, ego_sam, init)
    assert torch.isnan(score_pub[1, 1]) and not torch.isnan(score_pub[1, [0, 2]]).any()  # the published NaN
    assert torch.isnan(score_pub[2]).all()  # flat similarity maps: every part mask is empty

    sel = select_part_prototypes(exo_desc, exo_cam, ego_desc, ego_sam, kmeans="locate", kmeans_init=torch.tensor(init))
    has_pub = proto_pub.abs().sum(1) > 0
    # sample 1: the NaN part wins the argmax, its zero centroid is skipped by the loss -> no prototype;
    # sample 2: every score NaN, part 0 wins, its centroid is not zero -> a prototype
    assert has_pub.tolist() == [bool(has_pub[0]), False, True]
    assert sel.has_prototype.tolist() == has_pub.tolist()
    torch.testing.assert_close(sel.prototypes, proto_pub, rtol=0, atol=1e-6)
    assert torch.isfinite(sel.part_scores).all()  # no NaN leaves the selector
    torch.testing.assert_close(sel.part_scores, torch.nan_to_num(score_pub, nan=0.0), rtol=0, atol=1e-6)
    assert torch.equal(sel.centroids[1, 1], torch.zeros(d))

    ours = select_part_prototypes(exo_desc, exo_cam, ego_desc, ego_sam)  # k-means++: scores an empty part 0
    assert ours.has_prototype[2] == (ours.part_scores[2].max() >= 0.6)


def test_kmeans_init_needs_the_locate_kmeans():
    x = torch.zeros(1, 1, 2, 2, 2)
    with pytest.raises(ValueError, match="kmeans_init needs kmeans='locate'"):
        select_part_prototypes(x, x[:, :, 0], x[:, 0], x[:, 0, 0], kmeans_init=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="kmeans='lloyd' is not one of kmeanspp, locate"):
        select_part_prototypes(x, x[:, :, 0], x[:, 0], x[:, 0, 0], kmeans="lloyd")


# ---------------------------------------------------------------------------------------------- optimiser groups
def _published_groups(model: torch.nn.Module) -> list[list[str]]:
    """LOCATE's get_optimizer (utils/util.py), re-typed: the names in its four groups (lr x1, x2, x10, x20)."""
    weight, bias, last_weight, last_bias = [], [], [], []
    for name, value in model.named_parameters():
        if value.requires_grad:
            if "fc" in name:
                if "weight" in name:
                    last_weight.append(name)
                elif "bias" in name:
                    last_bias.append(name)
            else:
                if "weight" in name:
                    weight.append(name)
                elif "bias" in name:
                    bias.append(name)
    return [weight, bias, last_weight, last_bias]


@pytest.mark.parametrize(
    "config", ["configs/reference/locate_seen.yaml", "configs/locate_dino-vits16_agd20k-seen.yaml"]
)
def test_param_groups_of_a_real_model_are_locates(config: str):
    cfg = load_config(REPO / config, TINY_MODEL)
    model = build_model(cfg, ["a", "b", "c"])
    opt = build_optimizer(model, cfg.train)
    ours = {g["name"]: (g["lr"], g["param_names"]) for g in opt.param_groups}
    published = _published_groups(model)
    lrs = {"weights": 1e-3, "biases": 2e-3, "head_weights": 1e-2, "head_biases": 2e-2}
    for (name, lr), names in zip(lrs.items(), published):
        assert ours[name][0] == pytest.approx(lr)
        assert ours[name][1] == names
    # the adapter's LayerNorm trains at the base rate, its fc layers and the classifier at x10 / x20
    assert {"aff_proj.norm.weight", "aff_exo_proj.1.weight"} <= set(ours["weights"][1])
    assert "aff_proj.norm.bias" in ours["biases"][1]
    assert ours["head_weights"][1] == ["aff_proj.fc1.weight", "aff_proj.fc2.weight", "aff_fc.weight"]
    assert ours["head_biases"][1] == ["aff_proj.fc1.bias", "aff_proj.fc2.bias", "aff_fc.bias"]

    # one hand-computed first Nesterov step: p -= lr_group * (1 + momentum) * (g + wd * p)
    norm, fc1 = model.aff_proj.norm.weight, model.aff_proj.fc1.weight
    before = norm.detach().clone(), fc1.detach().clone()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5) if p.requires_grad else None
    opt.step()
    for p, p0, lr in ((norm, before[0], 1e-3), (fc1, before[1], 1e-2)):
        torch.testing.assert_close(p.detach(), p0 - lr * 1.9 * (0.5 + 5e-4 * p0))


def test_published_rule_leaves_out_what_is_neither_weight_nor_bias(caplog: pytest.LogCaptureFixture):
    model = torch.nn.Module()
    model.aff_fc = torch.nn.Linear(2, 2)
    model.logit_scale = torch.nn.Parameter(torch.zeros(()))
    model.prompt = torch.nn.Parameter(torch.zeros(3, 2))
    ours = {g["name"]: g["param_names"] for g in param_groups(model, 1e-3)}
    assert ours == {
        "weights": ["logit_scale", "prompt"],
        "head_weights": ["aff_fc.weight"],
        "head_biases": ["aff_fc.bias"],
    }
    with caplog.at_level(logging.INFO, logger="utils.engine.optim"):
        published = {g["name"]: g["param_names"] for g in param_groups(model, 1e-3, rule="published")}
    assert published == {"head_weights": ["aff_fc.weight"], "head_biases": ["aff_fc.bias"]}
    assert "not optimised, as in the published code: logit_scale, prompt" in caplog.text
    with pytest.raises(ValueError, match="rule='locate' is not one of ours, published"):
        param_groups(model, 1e-3, rule="locate")


# ---------------------------------------------------------------------------------------------- transforms
def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(h // 8 + 2, w // 8 + 2, 3)).astype(np.uint8)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 12, (h, w, 3)), 0, 255)


@pytest.mark.parametrize("shape", [(300, 401), (403, 257)])
def test_pil_resize_is_torchvisions_resize_of_a_pil_image(shape):
    img = _photo(*shape).astype(np.uint8)
    pil = Image.fromarray(img)
    np.testing.assert_array_equal(resize_shorter(img, 256, "pil"), np.asarray(transforms.Resize(256)(pil)))
    np.testing.assert_array_equal(center_resize(img, 224, "pil"), np.asarray(transforms.Resize((224, 224))(pil)))
    assert not np.array_equal(center_resize(img, 224, "pil"), center_resize(img, 224))  # the backends differ


def test_pil_resize_antialiases_by_hand():
    # 1 x 4 -> 1 x 2: PIL's bilinear filter widens to 2 source pixels per side when shrinking by 2. Output pixel 0
    # (centre 1.0 in source coordinates) weighs the pixels centred at 0.5, 1.5, 2.5 by 0.75, 0.75, 0.25:
    # (0 * 0.75 + 100 * 0.75 + 200 * 0.25) / 1.75 = 71.4 -> 71; pixel 1: (100 * 0.25 + 200 * 0.75 + 255 * 0.75)
    # / 1.75 = 209.3 -> 209. OpenCV's bilinear reads only the two nearest pixels: 50 and 227.5.
    row = np.array([[0, 100, 200, 255]], np.uint8)
    assert center_resize(row, (1, 2), "pil").tolist() == [[71, 209]]


def test_pil_image_with_mask_is_resized_like_the_image_alone():
    img, mask = _photo(50, 70).astype(np.uint8), np.zeros((50, 70), np.uint8)
    mask[10:30, 20:60] = 255
    alone = train_transform(img, 40, 32, np.random.default_rng(5), "pil")
    both, m = train_transform_with_mask(img, mask, 40, 32, np.random.default_rng(5), "pil")
    torch.testing.assert_close(both, alone, rtol=0, atol=0)  # a 4th channel is not treated as alpha
    assert m.shape == (32, 32) and 0 < float(m.mean()) < 1


# ---------------------------------------------------------------------------------------------- GT in float64
def _published_nss(pred: np.ndarray, gt: np.ndarray) -> float:
    """LOCATE's cal_nss (utils/evaluation.py), re-typed, float64, with its per-pixel binarisation."""
    pred, gt = pred / 255.0, gt / 255.0
    smap = (pred - np.mean(pred)) / np.std(pred)
    fixation = (gt - np.min(gt)) / (np.max(gt) - np.min(gt) + 1e-12)
    binary = np.zeros(fixation.size).reshape(fixation.shape)
    for y in range(fixation.shape[0]):
        for x in range(fixation.shape[1]):
            if fixation[y][x] > 0.1:
                binary[y][x] = 1
    return float(np.sum(smap * binary) / np.sum(binary + 1e-12))


@pytest.fixture
def one_image_root(tmp_path: Path) -> Path:
    """An AGD20K-layout root with one test image and a 4 x 4 GT whose top-left 2 x 2 block averages to 0.1."""
    ego = tmp_path / "Seen" / "testset" / "egocentric" / "hold" / "cup"
    gt = tmp_path / "Seen" / "testset" / "GT" / "hold" / "cup"
    ego.mkdir(parents=True)
    gt.mkdir(parents=True)
    cv2.imwrite(str(ego / "a.jpg"), _photo(37, 53).astype(np.uint8))
    png = np.zeros((4, 4), np.uint8)
    png[:2, :2] = [[25, 26], [25, 26]]  # bilinear 4 -> 2 averages each 2 x 2 block: 25.5 / 255 = 0.1
    png[:2, 2:] = 255
    png[2:, 2:] = 128
    cv2.imwrite(str(gt / "a.png"), png)
    return tmp_path


@pytest.mark.parametrize("cached", [False, True])
def test_gt_stays_float64_and_nss_equals_the_published_at_the_threshold(one_image_root: Path, cached: bool):
    cache = one_image_root / "cache" if cached else None
    ds = AGD20KTest(one_image_root, "Seen", image_size=16, eval_size=2, class_names=["hold"], cache_dir=cache)
    if cached:  # built, then read back from the .npy
        ds = AGD20KTest(one_image_root, "Seen", image_size=16, eval_size=2, class_names=["hold"], cache_dir=cache)
        assert ds._gt_cache.dtype == np.float64
    gt = ds[0]["gt"]
    png = cv2.imread(str(one_image_root / "Seen/testset/GT/hold/cup/a.png"), cv2.IMREAD_GRAYSCALE)
    published_gt = cv2.resize(png / 255.0, (2, 2))  # LOCATE's test.py
    assert gt.dtype == torch.float64
    np.testing.assert_array_equal(gt.numpy(), published_gt)
    # min-max(G) of the top-left pixel is 0.1 in exact arithmetic: just below 0.1 in float64 (not a fixation),
    # 0.1000000015 once rounded to float32 (a fixation)
    pred = torch.tensor([[0.9, 0.2], [0.1, 0.6]], dtype=torch.float64)
    expected = _published_nss(pred.numpy(), published_gt)
    assert float(compute_metrics(pred, gt)["nss"]) == pytest.approx(expected, abs=1e-12)
    float32 = float(compute_metrics(pred, gt.float())["nss"])
    assert abs(float32 - expected) > 0.1  # what the float32 GT gave: another fixation map


def test_pil_backend_reaches_the_test_images(one_image_root: Path):
    kw = {"image_size": 16, "eval_size": 2, "class_names": ["hold"]}
    ds = AGD20KTest(one_image_root, "Seen", reduced_decode=False, resize="pil", **kw)
    img = read_image(one_image_root / "Seen/testset/egocentric/hold/cup/a.jpg")
    torch.testing.assert_close(ds[0]["image"], normalize(center_resize(img, 16, "pil")), rtol=0, atol=0)
    with pytest.raises(ValueError, match="resize='bicubic' is not one of opencv, pil"):
        AGD20KTest(one_image_root, "Seen", class_names=["hold"], resize="bicubic")


def _partner_sets(root: Path, rule: str) -> list[list[str]]:
    ds = AGD20KTrain(root, "Seen", num_exo=3, image_size=16, resize_size=20, class_names=["hold"], exo_partners=rule)
    out = []
    for epoch in range(12):
        ds.set_epoch(epoch)
        out += [ds[i]["exo_paths"] for i in range(len(ds))]
    return out


@pytest.mark.parametrize("folder_size", [3, 4])
def test_published_partners_repeat_only_in_folders_of_num_exo_images(tmp_path: Path, folder_size: int):
    exo = tmp_path / "Seen" / "trainset" / "exocentric" / "hold" / "cup"
    ego = tmp_path / "Seen" / "trainset" / "egocentric" / "hold" / "cup"
    exo.mkdir(parents=True)
    ego.mkdir(parents=True)
    for i in range(folder_size):
        cv2.imwrite(str(exo / f"{i}.jpg"), _photo(24, 24, seed=i).astype(np.uint8))
    cv2.imwrite(str(ego / "e.jpg"), _photo(24, 24, seed=9).astype(np.uint8))
    assert all(len(set(paths)) == 3 for paths in _partner_sets(tmp_path, "distinct"))
    published = _partner_sets(tmp_path, "published")
    # LOCATE's loader: more than 3 images -> distinct partners; exactly 3 -> random.choice of the whole folder,
    # with repeats and the anchor possible (all three distinct in only 2 of 9 draws)
    repeats = sum(len(set(paths)) < 3 for paths in published)
    assert repeats == 0 if folder_size == 4 else repeats > len(published) // 2


# ---------------------------------------------------------------------------------------------- end to end
def test_reference_config_is_locate():
    cfg = load_config(REFERENCE)
    assert (cfg.model.kmeans, cfg.train.amp, cfg.data.resize) == ("locate", "off", "pil")
    assert (cfg.data.reduced_decode, cfg.train.drop_last, cfg.train.param_groups) == (False, False, "published")
    assert cfg.data.exo_partners == "published"
    assert (cfg.eval.batch_size, cfg.eval.every, cfg.train.cudnn_deterministic) == (1, 1, True)
    assert (cfg.model.cls_heads, cfg.model.num_parts, cfg.model.kmeans_iters) == ([0, 1, 3], 3, 300)
    assert (cfg.model.aff_cam_thd, cfg.model.part_iou_thd, cfg.loss.proto_margin) == (0.6, 0.6, 0.5)
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.momentum, cfg.train.weight_decay) == ("sgd", 1e-3, 0.9, 5e-4)
    assert (cfg.train.lr_step, cfg.train.lr_gamma, cfg.train.epochs, cfg.train.batch_size) == (5, 0.1, 15, 16)
    unseen = load_config(REPO / "configs" / "reference" / "locate_unseen.yaml")
    assert unseen.data.splits == ["Unseen"] and unseen.model.kmeans == "locate"


def test_a_tiny_model_from_the_reference_config_trains_a_step():
    cfg = load_config(REFERENCE, TINY_MODEL)
    torch.manual_seed(0)
    model = build_model(cfg, ["a", "b", "c"]).train()
    assert model.parts.kmeans == "locate"
    gen = torch.Generator().manual_seed(0)
    batch = {"exo": torch.randn(2, 3, 3, 32, 32, generator=gen), "ego": torch.randn(2, 3, 32, 32, generator=gen)}
    batch["label"] = torch.tensor([0, 2])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = build_criterion(cfg.loss)(model(batch), epoch=1)
    assert all(torch.isfinite(v) for v in losses.values())
    opt = build_optimizer(model, cfg.train)
    opt.zero_grad()
    losses["total"].backward()
    opt.step()
    after = model.state_dict()
    assert not torch.equal(before["aff_proj.norm.weight"], after["aff_proj.norm.weight"])
    assert not torch.equal(before["aff_fc.weight"], after["aff_fc.weight"])
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))  # frozen


def test_train_py_runs_the_reference_config_on_a_tiny_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # train.cudnn_deterministic sets process-wide flags: restore them after the test
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", torch.backends.cudnn.deterministic)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    sizes = {"image_size": 40, "exo_per_folder": 2, "ego_per_folder": 1, "test_per_folder": 1}
    world = ensure_world(tmp_path / "world", progress=False, seed=0, **sizes)
    args = ["--config", str(REFERENCE), *TINY_MODEL, f"data.root={world}", "data.synthetic.enabled=true"]
    args += [f"data.synthetic.{k}={v}" for k, v in sizes.items()]
    args += ["data.num_workers=0", "train.batch_size=3", "train.epochs=1", "train.max_steps_per_epoch=1"]
    args += ["eval.viz=0", "viz.every=0", "output.tensorboard=false", f"output.dir={tmp_path / 'run'}"]
    assert train.main(args) == 0
    ckpt = load_checkpoint(tmp_path / "run" / "Seen" / "last.pth")
    assert ckpt["config"]["model"]["kmeans"] == "locate" and ckpt["config"]["data"]["resize"] == "pil"
    assert torch.backends.cudnn.deterministic  # the reference's set_seed behaviour
    assert (tmp_path / "run" / "Seen" / "metrics.json").is_file()
