"""The training objective, apart from the model: weighted loss terms computed from a :class:`GrounderOutput`.

L = CE_ego + mean_n CE_exo + λ_proto · L_proto + λ_conc · L_conc (LOCATE, CVPR 2023)
    + λ_contra · L_contra (BiT-Align, IROS 2025, with a text encoder)
    + λ_sep · L_sep + λ_border · L_border (ours, 0 in the published recipes).

The formulas live in :mod:`models.losses`; this module only decides which terms count, from which epoch, and with
which weights (``cfg.loss``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from models.losses import (
    border_loss,
    classification_losses,
    concentration_loss,
    contrastive_loss,
    prototype_loss,
    separation_loss,
)
from models.outputs import GrounderOutput

if TYPE_CHECKING:
    from utils.config import LossConfig

__all__ = ["LOSS_TERMS", "Criterion", "build_criterion"]

LOSS_TERMS: tuple[str, ...] = ("ce_ego", "ce_exo", "proto", "conc", "contra", "sep", "border", "total")
"""The terms a :class:`Criterion` returns, in log order; disabled ones are 0."""


@dataclass
class Criterion:
    """Weights and schedule of the loss terms.

    Attributes:
        proto: λ of the part-prototype hinge loss.
        conc: λ of the concentration loss.
        contra: λ of the image-text contrastive loss (counts only with a text encoder).
        sep: λ of the class-map separation loss (ours).
        border: λ of the border loss (ours).
        proto_warmup_epochs: the prototype loss counts from this (0-based) epoch on (LOCATE: 1).
        proto_margin: hinge margin of the prototype loss (LOCATE: 0.5).
        contra_temperature: divides the scaled cosines of the contrastive loss (BiT-Align: 0.5).
    """

    proto: float = 1.0
    conc: float = 0.07
    contra: float = 1.0
    sep: float = 0.0
    border: float = 0.0
    proto_warmup_epochs: int = 1
    proto_margin: float = 0.5
    contra_temperature: float = 0.5

    def __call__(self, out: GrounderOutput, epoch: int = 0) -> dict[str, torch.Tensor]:
        """Every term of :data:`LOSS_TERMS` as a 0-d tensor, ``total`` the weighted sum that is backpropagated.

        Args:
            out: the model's forward output.
            epoch: 0-based epoch (the prototype loss waits ``proto_warmup_epochs``).
        """
        label = out.label
        ce_ego, ce_exo = classification_losses(out.logits_ego, out.logits_exo, label)
        zero = ce_ego.new_zeros(())
        if epoch >= self.proto_warmup_epochs and self.proto > 0:
            parts = out.parts
            proto = prototype_loss(
                out.ego_proto_desc, out.gt_ego_cam, parts.prototypes, parts.has_prototype, margin=self.proto_margin
            )
        else:
            proto = zero
        conc = concentration_loss(out.ego_pred)
        sep = separation_loss(out.ego_pred, out.logits_ego) if self.sep > 0 else zero
        border = border_loss(out.ego_pred, label) if self.border > 0 else zero
        if out.text_features is not None and self.contra > 0:
            contra = contrastive_loss(
                out.image_feature, out.text_features, label, out.logit_scale, temperature=self.contra_temperature
            )
        else:
            contra = zero
        total = ce_ego + ce_exo + self.proto * proto + self.conc * conc + self.contra * contra
        total = total + self.sep * sep + self.border * border
        return {
            "ce_ego": ce_ego,
            "ce_exo": ce_exo,
            "proto": proto,
            "conc": conc,
            "contra": contra,
            "sep": sep,
            "border": border,
            "total": total,
        }


def build_criterion(cfg: LossConfig) -> Criterion:
    """The criterion described by the ``loss`` section of the configuration."""
    return Criterion(
        proto=cfg.proto,
        conc=cfg.conc,
        contra=cfg.contra,
        sep=cfg.sep,
        border=cfg.border,
        proto_warmup_epochs=cfg.proto_warmup_epochs,
        proto_margin=cfg.proto_margin,
    )
