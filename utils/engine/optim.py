"""Optimiser and learning-rate schedule of the published LOCATE recipe (docs/deviations.md).

Parameter groups follow LOCATE's ``get_optimizer``: ordinary weights train at the base learning rate, biases at
twice it, and every parameter whose name contains ``fc`` (the adapter MLP's ``aff_proj.fc1`` / ``aff_proj.fc2`` and
the classifier ``aff_fc``) at ten times it (their biases twenty times). The rule is LOCATE's substring test, so the
adapter's LayerNorm ``aff_proj.norm`` trains at the base rate (x1 weight, x2 bias), as in the published code. Only
parameters with ``requires_grad`` are handed to the optimiser, so a frozen backbone never appears in it.

Two rules sort the parameters whose name is neither a weight nor a bias (a positional embedding, learned prompt
tokens, a logit scale), chosen by ``train.param_groups``:

- ``ours`` (default): they train with the weights (x1), so that everything that asks for a gradient gets one.
- ``published``: they are left out of the optimiser, as LOCATE's and BiT-Align's ``get_optimizer`` leave them out
  (they never change); names are sorted by LOCATE's substring tests (``'weight' in name``, else ``'bias' in name``).
  LOCATE's trainable parameters are all weights or biases, so for LOCATE the two rules give the same groups.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from utils.config import TrainConfig

__all__ = [
    "GROUP_MULTIPLIERS",
    "HEAD_SUBSTRING",
    "PARAM_GROUP_RULES",
    "ParamGroupSpec",
    "build_optimizer",
    "build_scheduler",
    "current_lr",
    "param_groups",
]

logger = logging.getLogger(__name__)

HEAD_SUBSTRING = "fc"
"""Parameters whose name contains this train at x10 (weights) / x20 (biases) the base rate (LOCATE's rule)."""

PARAM_GROUP_RULES: tuple[str, ...] = ("ours", "published")
"""Values of ``train.param_groups``: what happens to a parameter that is neither a weight nor a bias."""

GROUP_MULTIPLIERS: dict[str, float] = {"weights": 1.0, "biases": 2.0, "head_weights": 10.0, "head_biases": 20.0}
"""Learning-rate multiplier of each parameter group (LOCATE's recipe)."""


@dataclass(frozen=True)
class ParamGroupSpec:
    """The parameters of one group, by name, with their learning-rate multiplier."""

    name: str
    lr_mult: float
    names: tuple[str, ...]


def _is_bias(name: str) -> bool:
    # ".bias" of Linear/Conv/Norm layers, and "in_proj_bias" of nn.MultiheadAttention
    return name.rsplit(".", 1)[-1].endswith("bias")


def _group_of(name: str, head_substring: str, rule: str) -> str | None:
    """The group of parameter ``name``, or None when the ``published`` rule leaves it out of the optimiser."""
    if rule == "published":
        # LOCATE's get_optimizer: 'weight' in name, else 'bias' in name, else the parameter is not optimised
        if "weight" in name:
            bias = False
        elif "bias" in name:
            bias = True
        else:
            return None
    else:
        bias = _is_bias(name)
    if head_substring in name:
        return "head_biases" if bias else "head_weights"
    return "biases" if bias else "weights"


def _strip_wrapper(name: str) -> str:
    # DistributedDataParallel and torch.compile prefix the names of the wrapped module's parameters
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def param_groups(
    model: nn.Module,
    lr: float,
    head_substring: str = HEAD_SUBSTRING,
    multipliers: dict[str, float] | None = None,
    rule: str = "ours",
) -> list[dict]:
    """Split the trainable parameters of ``model`` into LOCATE's learning-rate groups.

    Args:
        model: the model (a DistributedDataParallel wrapper is fine: its ``module.`` prefix is ignored).
        lr: the base learning rate.
        head_substring: a parameter whose name contains it is in the x10/x20 groups (LOCATE: ``fc``).
        multipliers: learning-rate multiplier per group name; default :data:`GROUP_MULTIPLIERS`.
        rule: ``ours`` (a parameter that is neither a weight nor a bias trains with the weights) or ``published``
            (it is left out, as LOCATE's ``get_optimizer`` leaves it out; logged once).

    Returns:
        Optimiser parameter groups (empty groups left out), each a dict with ``params``, ``lr``, ``name``,
        ``lr_mult`` and ``param_names``. A frozen parameter (``requires_grad=False``) is in none of them.

    Raises:
        ValueError: the model has no trainable parameter, or ``rule`` is unknown.
    """
    if rule not in PARAM_GROUP_RULES:
        raise ValueError(f"param_groups: rule={rule!r} is not one of {', '.join(PARAM_GROUP_RULES)}")
    mults = dict(GROUP_MULTIPLIERS if multipliers is None else multipliers)
    buckets: dict[str, list[tuple[str, nn.Parameter]]] = {k: [] for k in mults}
    left_out: list[str] = []
    for raw_name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = _strip_wrapper(raw_name)
        group = _group_of(name, head_substring, rule)
        if group is None:
            left_out.append(name)
        else:
            buckets[group].append((name, p))
    if left_out:
        logger.info(
            "train.param_groups=published: %d trainable parameter(s) that are neither weights nor biases are not "
            "optimised, as in the published code: %s",
            len(left_out),
            ", ".join(left_out),
        )
    groups = [
        {
            "params": [p for _, p in items],
            "lr": lr * mults[key],
            "name": key,
            "lr_mult": mults[key],
            "param_names": [n for n, _ in items],
        }
        for key, items in buckets.items()
        if items
    ]
    if not groups:
        raise ValueError(
            "the model has no trainable parameter (every requires_grad is False); check that the heads were built"
        )
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (the published recipe) or AdamW over :func:`param_groups`.

    Args:
        model: the model (or its DDP wrapper).
        cfg: the ``train`` section of the configuration (optimizer, lr, momentum, nesterov, weight_decay,
            head_lr_mult, bias_lr_mult, param_groups).

    Returns:
        The optimiser; every group carries ``name`` and ``lr_mult`` so that logs and tests can find it.
    """
    head, bias = cfg.head_lr_mult, cfg.bias_lr_mult
    groups = param_groups(
        model,
        cfg.lr,
        multipliers={"weights": 1.0, "biases": bias, "head_weights": head, "head_biases": head * bias},
        rule=cfg.param_groups,
    )
    for g in groups:
        n = sum(p.numel() for p in g["params"])
        logger.info(
            "param group %-12s lr x%-4g %3d tensors, %d parameters", g["name"], g["lr_mult"], len(g["params"]), n
        )
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov and cfg.momentum > 0,  # torch rejects Nesterov without momentum
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"train.optimizer={cfg.optimizer!r} is not one of sgd, adamw")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """StepLR: multiply every group's learning rate by ``lr_gamma`` every ``lr_step`` epochs (0: constant).

    The scheduler is stepped once per epoch, after the epoch's optimiser steps.
    """
    if cfg.lr_step <= 0:
        # gamma 1 keeps the same scheduler class (and checkpoint layout) for a constant schedule
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=1.0)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The base learning rate now in effect: the lr of the x1 ``weights`` group (else the first group / its mult)."""
    for g in optimizer.param_groups:
        if g.get("name") == "weights":
            return float(g["lr"])
    g = optimizer.param_groups[0]
    return float(g["lr"]) / float(g.get("lr_mult", 1.0))
