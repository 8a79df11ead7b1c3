"""The LOCATE timing tool on a tiny fake LOCATE checkout: its JSON, its patches, its error messages."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import utils
from utils.tools import benchmark, locate_timing

# A stand-in for LOCATE's public code with the same call interface: Net(aff_classes).forward(exo, ego, aff_label,
# epoch) -> (masks, logits, loss_proto, loss_con), Net.test_forward(ego, aff_label), get_optimizer(model, args).
# Like LOCATE it imports absolutely from folders without __init__.py, calls .cuda() and loads DINO weights in
# __init__; here the loader raises, so the test fails unless the tool replaces it.
FAKE_FILES = {
    "models/dino/utils.py": """
        def load_pretrained_weights(model, pretrained_weights, checkpoint_key, model_name, patch_size):
            raise RuntimeError("the fake DINO loader was called: it would download weights")
    """,
    "models/locate.py": """
        import torch
        import torch.nn as nn
        from models.dino.utils import load_pretrained_weights
        from models.model_util import normalize_minmax

        SEEN = []  # the epoch argument of every forward


        class Net(nn.Module):
            def __init__(self, aff_classes=36):
                super().__init__()
                self.vit_model = nn.Conv2d(3, 8, 4, stride=4)
                load_pretrained_weights(self.vit_model, "", None, "vit_small", 16)
                self.aff_proj = nn.Conv2d(8, 8, 1)
                self.aff_fc = nn.Conv2d(8, aff_classes, 1)

            def forward(self, exo, ego, aff_label, epoch):
                SEEN.append(epoch)
                b, n = exo.shape[:2]
                with torch.no_grad():
                    exo_f, ego_f = self.vit_model(exo.flatten(0, 1)), self.vit_model(ego)
                exo_cam, ego_cam = self.aff_fc(self.aff_proj(exo_f)), self.aff_fc(self.aff_proj(ego_f))
                logits = {"aff": exo_cam.mean((2, 3)).reshape(b, n, -1), "aff_ego": ego_cam.mean((2, 3))}
                gt = ego_cam[torch.arange(b), aff_label]
                loss_con = torch.zeros(1).cuda() + normalize_minmax(gt).mean()
                return {"pred": gt}, logits, torch.zeros(1).cuda(), loss_con

            @torch.no_grad()
            def test_forward(self, ego, aff_label):
                cam = self.aff_fc(self.aff_proj(self.vit_model(ego)))
                return cam[torch.arange(len(ego)), aff_label].cuda()
    """,
    "models/model_util.py": """
        def normalize_minmax(cams, eps=1e-15):
            low = cams.flatten(1).min(1)[0][:, None, None]
            return (cams - low) / ((cams - low).flatten(1).max(1)[0][:, None, None] + eps)
    """,
    "utils/util.py": """
        import torch


        def get_optimizer(model, args):
            fc = [p for n, p in model.named_parameters() if "fc" in n]
            rest = [p for n, p in model.named_parameters() if "fc" not in n]
            optimizer = torch.optim.SGD([{"params": rest, "lr": args.lr}, {"params": fc, "lr": args.lr * 10}],
                                        momentum=args.momentum, weight_decay=args.weight_decay, nesterov=True)
            return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.1)
    """,
}


def make_fake_locate(root: Path, overrides: dict[str, str] | None = None) -> Path:
    for name, text in {**FAKE_FILES, **(overrides or {})}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text).lstrip())
    return root


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(locate_timing, "IMAGE_SIZE", 16)  # the real Net takes 224 only; the fake any multiple of 4


def test_timing_of_a_fake_locate_gives_the_benchmark_its_rates(tmp_path, tiny, capsys):
    repo = make_fake_locate(tmp_path / "LOCATE")
    out = tmp_path / "locate.json"
    cuda, module_cuda = torch.Tensor.cuda, nn.Module.cuda
    code = locate_timing.main(
        ["--locate-repo", str(repo), "--out", str(out), "--batch-size", "2", "--warmup", "1", "--repeats", "2",
         "--threads", "1"]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    rates = benchmark._read_locate(str(out))
    assert set(rates) == {"train_samples_per_s", "test_images_per_s", "test_images_per_s_batch1"}
    assert all(v > 0 for v in rates.values())
    assert report["train_step"]["samples_per_s"] == pytest.approx(2 / report["train_step"]["seconds"])
    assert report["test_forward_b16"]["batch_size"] == 16 and report["test_forward_b1"]["batch_size"] == 1
    # the checkout's get_optimizer with train.py's lr: its two groups at lr and 10 lr, every parameter trained
    groups = report["optimizer"]["groups"]
    assert [g["lr"] for g in groups] == pytest.approx([0.001, 0.01])
    assert report["optimizer"]["nesterov"] is True and report["optimizer"]["weight_decay"] == 5e-4
    assert [g["with_grad"] for g in groups] == [2, 2]  # aff_proj (vit_model is under no_grad) and aff_fc
    assert report["settings"]["threads"] == 1 and report["settings"]["epoch"] == [1, 0]
    assert report["settings"]["repeats"] == 2 and report["settings"]["exo"] == 3
    assert report["machine"]["device_name"] and report["machine"]["torch"] == torch.__version__
    assert report["machine"]["date"] and report["locate"]["repo"] == str(repo.resolve())
    assert "test forward, batch 1:" in capsys.readouterr().out
    # the patches and the borrowed names are put back
    assert torch.Tensor.cuda is cuda and nn.Module.cuda is module_cuda
    assert sys.modules["utils"] is utils and "models.locate" not in sys.modules
    assert str(repo.resolve()) not in sys.path


def test_training_step_is_timed_at_an_epoch_with_the_prototype_loss(tmp_path, tiny):
    code = locate_timing.load_locate(make_fake_locate(tmp_path / "LOCATE"))
    locate_timing.time_locate(code, batch_size=2, exo=2, warmup=1, repeats=1)
    epochs = code.locate_module.SEEN
    assert len(epochs) == 2 and all(e[0] > e[1] for e in epochs)  # one warm-up step and one timed


def test_wrong_locate_repo_fails_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"--locate-repo .*nowhere: expected a folder, found nothing"):
        locate_timing.main(["--locate-repo", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.json")])
    (tmp_path / "other" / "models").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"expected LOCATE's models/locate.py .* missing models/locate.py, utils/util"):
        locate_timing.main(["--locate-repo", str(tmp_path / "other"), "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_a_package_locate_needs_and_we_lack_is_named_with_its_install(tmp_path):
    locate = "import fast_pytorch_kmeans_x\n" + textwrap.dedent(FAKE_FILES["models/locate.py"])
    repo = make_fake_locate(tmp_path / "LOCATE", {"models/locate.py": locate})
    expected = r"imports fast_pytorch_kmeans_x, which is not installed.*pip install fast_pytorch_kmeans_x`"
    with pytest.raises(locate_timing.MissingPackageError, match=expected):
        locate_timing.load_locate(repo)
    assert sys.modules["utils"] is utils
