"""A diagnostic, not the method: part prototypes taken from the true part masks (the synthetic world only).

It bounds what better prototype selection could give: in training, each sample's prototype becomes the mean
egocentric descriptor inside the true affordance part (``batch["ego_part_mask"]``, which only the synthetic world's
loader provides). :func:`mask_prototypes` also serves utils/tools/part_diagnostics.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.losses import weighted_pool
from models.outputs import PartSelection
from models.parts import PartSelector

__all__ = ["OracleSelector", "mask_prototypes"]


@torch.no_grad()
def mask_prototypes(desc: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The *true* part prototype of each image: its descriptors averaged inside a part mask, L2-normalised.

    Only the synthetic world has part masks; this serves the :class:`OracleSelector` and
    utils/tools/part_diagnostics.py, never the method.

    Args:
        desc: (B, D, h, w) descriptors (in the space the prototypes are compared in).
        mask: (B, H, W) part masks in [0, 1] at image resolution; area-averaged to the (h, w) grid.

    Returns:
        ``(prototypes (B, D) float32, weights (B, h, w))``; a row whose mask misses the grid is zero.
    """
    h, w = desc.shape[-2:]
    weights = F.adaptive_avg_pool2d(mask.to(desc.device).float().unsqueeze(1), (h, w)).squeeze(1)
    with torch.autocast(device_type=desc.device.type, enabled=False):
        return F.normalize(weighted_pool(desc.float(), weights), dim=-1), weights


class OracleSelector(PartSelector):
    """In training, replace each sample's prototype by the true one (:func:`mask_prototypes`); else ``base``'s.

    Args:
        base: the selector whose clusters and maps are kept.
    """

    def __init__(self, base: PartSelector) -> None:
        super().__init__()
        self.base = base

    def forward(
        self,
        exo_desc: torch.Tensor,
        exo_cam: torch.Tensor,
        ego_desc: torch.Tensor,
        ego_saliency: torch.Tensor,
        labels: torch.Tensor,
        batch: dict,
    ) -> PartSelection:
        parts = self.base(exo_desc, exo_cam, ego_desc, ego_saliency, labels, batch)
        if not self.training:
            return parts
        mask = batch.get("ego_part_mask")
        if mask is None:
            raise ValueError(
                "the oracle-prototype diagnostic needs batch['ego_part_mask'] (the synthetic world's part masks, "
                "loaded by AGD20KTrain(with_part_masks=True)); turn model.extensions.oracle_prototypes off for real "
                "data"
            )
        with torch.no_grad():
            protos, weights = mask_prototypes(ego_desc, mask)  # (b, D), (b, h, w)
        parts.prototypes = protos
        parts.has_prototype = weights.sum(dim=(-2, -1)) > 0
        return parts
