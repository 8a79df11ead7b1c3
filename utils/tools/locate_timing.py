"""Time LOCATE's public code (Li et al., CVPR 2023, github.com/Reagan1311/LOCATE) on this machine, for
``python -m utils.tools.benchmark --locate-json``.

    python -m utils.tools.locate_timing --locate-repo PATH --out locate.json [--batch-size 16] [--exo 3]
        [--warmup 2] [--repeats 6] [--threads N]

What is timed, on the CPU in fp32, with random weights and random inputs (224 px, 36 AGD20K Seen classes):

- ``train_step``: one iteration of the loop of LOCATE's ``train.py`` at its batch size (16 egocentric images and
  16 x 3 exocentric ones): ``Net.forward(exo, ego, aff_label, (epoch, warm_epoch))`` in train mode, the loss that
  ``train.py`` sums (egocentric cross-entropy, exocentric cross-entropy averaged over the views, the prototype loss
  and 0.07 x the concentration loss), ``zero_grad``, ``backward`` and ``step`` of the SGD optimizer that LOCATE's
  ``utils.util.get_optimizer`` builds with ``train.py``'s defaults (four groups: weights at lr, biases at 2 lr, and
  the parameters named ``*fc*`` at 10 lr and 20 lr; momentum 0.9, Nesterov, weight decay 5e-4). The epoch is
  (1, 0): from the second epoch on (14 of the 15), ``Net.forward`` also computes the prototype loss. The loader and
  the accuracy bookkeeping after the step are not timed.
- ``test_forward_b16`` and ``test_forward_b1``: ``Net.test_forward(ego, label)`` in eval mode, as ``test.py`` calls
  it (at its batch size 1, and at 16), without the post-processing and metrics.

LOCATE's code is imported from ``--locate-repo`` at run time, never copied. Its ``models`` and ``utils`` folders
are bound to those top-level names only while it is imported (this repository has packages of the same names).
Two things are patched while it runs, and put back afterwards: ``cuda()`` on tensors and modules returns them
unchanged (LOCATE moves its model and new tensors with it, so everything stays on the CPU), and the DINO weight
loader that ``Net.__init__`` calls (a download) does nothing, so the ViT keeps its random initialisation. It needs
the packages LOCATE's code imports (fast-pytorch-kmeans, with psutil; OpenCV and matplotlib for ``utils.util``),
which are not dependencies of this repository: install them for the timing.

Every number is the median over ``--repeats`` timed rounds after ``--warmup`` untimed ones: the training step
alone, then the two test forwards interleaved (:func:`utils.tools.benchmark.time_interleaved`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import logging
import subprocess
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.engine.runtime import environment_info, package_version, setup_logging
from utils.tools.benchmark import time_interleaved

__all__ = [
    "LocateCode",
    "LocateRepoError",
    "MissingPackageError",
    "check_locate_repo",
    "load_locate",
    "main",
    "time_locate",
]

logger = logging.getLogger(__name__)

IMAGE_SIZE = 224  # LOCATE's Net reshapes its tokens into the 14 x 14 grid of a 224-px image: the only size it takes
AFF_CLASSES = 36  # train.py's args.num_classes for the Seen split
EPOCH = (1, 0)  # (epoch, args.warm_epoch): Net.forward adds the prototype loss when epoch > warm_epoch
TRAIN_ARGS = types.SimpleNamespace(lr=0.001, momentum=0.9, weight_decay=5e-4)  # train.py's defaults
TEST_BATCHES = (16, 1)  # test_forward_b16, test_forward_b1
REQUIRED_FILES = ("models/locate.py", "utils/util.py")
LOCATE_PACKAGES = ("models", "utils")  # LOCATE's top-level folders that clash with this repository's packages
PIP_NAMES = {"fast_pytorch_kmeans": "fast-pytorch-kmeans", "cv2": "opencv-python", "PIL": "pillow"}


class LocateRepoError(ValueError):
    """``--locate-repo`` is not a checkout of LOCATE's public code."""


class MissingPackageError(ImportError):
    """LOCATE's code imports a package that this environment lacks."""


@dataclass
class LocateCode:
    """What the timing uses of LOCATE's code: its model class, its optimizer builder and the module of ``Net``."""

    repo: Path
    net: type[nn.Module]
    get_optimizer: Callable[..., tuple[torch.optim.Optimizer, Any]]
    locate_module: types.ModuleType
    commit: str


# -------------------------------------------------------------------------------------------------- LOCATE's code
def check_locate_repo(path: str | Path) -> Path:
    """The checkout at ``path``, after checking that it holds the files of LOCATE that the timing imports.

    Raises:
        LocateRepoError: ``path`` is not a folder, or lacks ``models/locate.py`` or ``utils/util.py``.
    """
    repo = Path(path).expanduser()
    hint = "Pass a checkout of LOCATE's public code (git clone of github.com/Reagan1311/LOCATE)."
    if not repo.is_dir():
        found = "a file" if repo.exists() else "nothing"
        raise LocateRepoError(f"--locate-repo {path}: expected a folder, found {found} there. {hint}")
    missing = [f for f in REQUIRED_FILES if not (repo / f).is_file()]
    if missing:
        found = sorted(p.name for p in repo.iterdir())[:12]
        raise LocateRepoError(
            f"--locate-repo {path}: expected LOCATE's {' and '.join(REQUIRED_FILES)}, missing {', '.join(missing)} "
            f"(the folder holds {found or 'nothing'}). {hint}"
        )
    return repo.resolve()


@contextlib.contextmanager
def _locate_packages(repo: Path) -> Iterator[None]:
    """Bind the top-level names ``models`` and ``utils`` to the checkout's folders while its code is imported.

    LOCATE imports absolutely (``from models.dino import ...``) from folders without ``__init__.py``. Putting the
    checkout first on ``sys.path`` is not enough: a regular package of the same name anywhere on the path (this
    repository's) wins over namespace folders. So this repository's modules of those names are set aside, the names
    point at LOCATE's folders, and everything is put back afterwards; LOCATE's imported objects keep working.
    """

    def clashes(name: str) -> bool:
        return name.split(".")[0] in LOCATE_PACKAGES

    saved = {name: module for name, module in sys.modules.items() if clashes(name)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(repo))  # for anything else LOCATE imports from its root
    try:
        for name in LOCATE_PACKAGES:
            package = types.ModuleType(name)
            package.__path__ = [str(repo / name)]
            sys.modules[name] = package
        yield
    finally:
        for name in [n for n in sys.modules if clashes(n)]:
            del sys.modules[name]
        sys.modules.update(saved)
        sys.path.remove(str(repo))


def load_locate(repo: Path) -> LocateCode:
    """Import ``Net`` from the checkout's ``models/locate.py`` and ``get_optimizer`` from its ``utils/util.py``.

    Raises:
        MissingPackageError: LOCATE's code imports a package that is not installed (the message says which).
        LocateRepoError: the checkout's files do not define what the timing uses.
    """
    with _locate_packages(repo):
        try:
            locate_module = importlib.import_module("models.locate")
            util_module = importlib.import_module("utils.util")
        except ModuleNotFoundError as e:
            top = (e.name or "").split(".")[0]
            if top in LOCATE_PACKAGES:
                raise LocateRepoError(f"--locate-repo {repo}: LOCATE's code imports {e.name}, not found there") from e
            pip_name = PIP_NAMES.get(top, top)
            raise MissingPackageError(
                f"LOCATE's code in {repo} imports {top}, which is not installed. Install it for the timing with "
                f"`{sys.executable} -m pip install {pip_name}`; this repository itself does not need it."
            ) from e
    wanted = {"Net": locate_module, "load_pretrained_weights": locate_module, "get_optimizer": util_module}
    absent = [f"{name} in {module.__file__}" for name, module in wanted.items() if not hasattr(module, name)]
    if absent:
        raise LocateRepoError(f"--locate-repo {repo}: expected LOCATE's {', '.join(absent)}, not found")
    return LocateCode(repo, locate_module.Net, util_module.get_optimizer, locate_module, _git_commit(repo))


def _git_commit(repo: Path) -> str:
    """The checkout's commit, or "unknown" where it is not a git work tree (or git is absent)."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def _stay_on_cpu(self: Any, *args: Any, **kwargs: Any) -> Any:
    return self


def _keep_random_weights(model: nn.Module, *args: Any, **kwargs: Any) -> None:
    logger.info("DINO weights not loaded: the %s keeps its random initialisation", type(model).__name__)


@contextlib.contextmanager
def cpu_random_weights(code: LocateCode) -> Iterator[None]:
    """While inside, ``cuda()`` returns its tensor or module unchanged and LOCATE's DINO weight loader does nothing."""
    saved = torch.Tensor.cuda, nn.Module.cuda, code.locate_module.load_pretrained_weights
    torch.Tensor.cuda = _stay_on_cpu  # type: ignore[method-assign]
    nn.Module.cuda = _stay_on_cpu  # type: ignore[method-assign]
    code.locate_module.load_pretrained_weights = _keep_random_weights
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda, code.locate_module.load_pretrained_weights = saved  # type: ignore[method-assign]


# -------------------------------------------------------------------------------------------------- timing
def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch_size: int, exo: int) -> Callable[[], None]:
    """One iteration of train.py's loop on random images, as a function to time."""
    ego_images = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE)
    exo_images = torch.randn(batch_size, exo, 3, IMAGE_SIZE, IMAGE_SIZE)
    labels = torch.randint(0, AFF_CLASSES, (batch_size,))
    ce = nn.CrossEntropyLoss()

    def step() -> None:
        model.train()
        _, logits, loss_proto, loss_con = model(exo_images, ego_images, labels, EPOCH)
        # train.py's loss: its exocentric cross-entropy is a loop over the views, kept as it is
        exo_ce = torch.zeros(1)
        for n in range(exo):
            exo_ce += ce(logits["aff"][:, n], labels)  # logits["aff"]: (B, exo, classes)
        loss = ce(logits["aff_ego"], labels) + exo_ce / exo + loss_proto + loss_con * 0.07
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def _test_forward(model: nn.Module, batch_size: int) -> Callable[[], None]:
    """test.py's call of the model on random images, as a function to time."""
    images = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE)
    labels = torch.randint(0, AFF_CLASSES, (batch_size,))

    def forward() -> None:
        model.eval()
        model.test_forward(images, labels)

    return forward


def time_locate(code: LocateCode, batch_size: int = 16, exo: int = 3, warmup: int = 2, repeats: int = 6) -> dict:
    """Median seconds and rates of LOCATE's training step and test forwards, with the optimizer's groups."""
    with cpu_random_weights(code):
        torch.manual_seed(0)
        model = code.net(aff_classes=AFF_CLASSES)  # train.py moves it with cuda(), a no-op here
        optimizer, _ = code.get_optimizer(model, TRAIN_ARGS)
        step = _train_step(model, optimizer, batch_size, exo)
        logger.info("LOCATE training step: batch %d + %d exocentric images at %d px", batch_size, batch_size * exo,
                    IMAGE_SIZE)  # fmt: skip
        t = time_interleaved({"train_step": step}, torch.device("cpu"), warmup, repeats)
        forwards = {f"test_forward_b{b}": _test_forward(model, b) for b in TEST_BATCHES}
        logger.info("LOCATE test forward: batches %s", ", ".join(map(str, TEST_BATCHES)))
        t |= time_interleaved(forwards, torch.device("cpu"), warmup, repeats)
    report: dict[str, Any] = {
        "train_step": {
            "seconds": t["train_step"],
            "samples_per_s": batch_size / t["train_step"],
            "batch_size": batch_size,
            "exo_per_sample": exo,
        },
    }
    for b in TEST_BATCHES:
        key = f"test_forward_b{b}"
        report[key] = {"seconds": t[key], "images_per_s": b / t[key], "batch_size": b}
    report["optimizer"] = {
        "type": type(optimizer).__name__,
        "groups": [
            {
                "lr": g["lr"],
                "params": len(g["params"]),
                "elements": sum(p.numel() for p in g["params"]),
                "with_grad": sum(p.grad is not None for p in g["params"]),  # the ViT's get none (under no_grad)
            }
            for g in optimizer.param_groups
        ],
        **{k: optimizer.defaults[k] for k in ("momentum", "weight_decay", "nesterov") if k in optimizer.defaults},
    }
    return report


# -------------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m utils.tools.locate_timing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--locate-repo", required=True, metavar="PATH", help="a checkout of LOCATE's public code")
    p.add_argument("--out", default="locate.json", help="where the JSON goes (usual: locate.json)")
    p.add_argument("--batch-size", type=int, default=16, help="training step batch (train.py's: 16)")
    p.add_argument("--exo", type=int, default=3, help="exocentric images per sample (LOCATE's data loader: 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds before timing (usual: 2)")
    p.add_argument(
        "--repeats",
        type=int,
        default=6,
        help="timed rounds; the median is reported (usual: 6, even so that both test forwards take each slot "
        "equally often)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        code = load_locate(check_locate_repo(args.locate_repo))
    except (LocateRepoError, MissingPackageError) as e:
        raise SystemExit(f"error: {e}") from e
    report = time_locate(code, args.batch_size, args.exo, args.warmup, args.repeats)
    machine: dict[str, Any] = environment_info(torch.device("cpu"), None)
    machine["fast-pytorch-kmeans"] = package_version("fast-pytorch-kmeans")
    machine["date"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    report["machine"] = machine
    report["locate"] = {"repo": str(code.repo), "commit": code.commit}
    report["settings"] = {"device": "cpu", "precision": "fp32", "weights": "random", "image_size": IMAGE_SIZE,
                          "aff_classes": AFF_CLASSES, "epoch": list(EPOCH), "batch_size": args.batch_size,
                          "exo": args.exo, "test_batch_sizes": list(TEST_BATCHES), "warmup": args.warmup,
                          "repeats": args.repeats, "threads": torch.get_num_threads()}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    train = report["train_step"]
    print(
        f"LOCATE {code.commit[:12]} ({code.repo}) on {machine['device_name']}, {machine['torch_threads']} threads, "
        f"torch {machine['torch']}, fp32, random weights\n"
        f"  training step, batch {args.batch_size} + {args.batch_size * args.exo} exocentric: "
        f"{train['seconds']:.2f} s, {train['samples_per_s']:.2f} samples/s"
    )
    for b in TEST_BATCHES:
        r = report[f"test_forward_b{b}"]
        print(f"  test forward, batch {b}: {r['seconds']:.3f} s, {r['images_per_s']:.2f} images/s")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
