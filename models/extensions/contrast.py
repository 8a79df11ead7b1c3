"""The part prototype chosen by class contrast (ours), with the bank of recent egocentric images it needs.

LOCATE's PartIoU keeps the exocentric cluster that overlaps the egocentric saliency most, which is the whole object,
or the background, as often as the part; and a random ViT's CLS attention is near chance. This rule instead keeps
the cluster most visible in recent egocentric images of the sample's own class and least in those of any other
class (:func:`contrast_selection`). The recent images are model state: a :class:`ClassPatchBank` of registered
buffers, saved in checkpoints and updated only in training mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum
from torch import nn

from models.outputs import PartSelection
from models.parts import PartSelector

__all__ = ["ClassContrastSelector", "ClassPatchBank", "contrast_selection"]


class ClassPatchBank(nn.Module):
    """The L2-normalised patch descriptors of the last ``size`` egocentric training images of every class.

    A ring buffer per class in registered buffers (``patches`` (C, size, D, h·w), ``filled`` (C,), ``head`` (C,)),
    so it moves with the model, is saved in checkpoints and restored on resume. Until a class has an image, its
    samples keep the base selection.

    Args:
        num_classes: C.
        size: images kept per class (the oldest is replaced first).
        dim: descriptor width D.
        num_patches: h·w of the training grid.
    """

    def __init__(self, num_classes: int, size: int, dim: int, num_patches: int) -> None:
        super().__init__()
        if num_classes < 1 or size < 1 or dim < 1 or num_patches < 1:
            raise ValueError(
                f"ClassPatchBank: expected positive sizes, got num_classes={num_classes}, size={size}, dim={dim}, "
                f"num_patches={num_patches}"
            )
        self.num_classes, self.size = int(num_classes), int(size)
        self.register_buffer("patches", torch.zeros(num_classes, size, dim, num_patches))
        self.register_buffer("filled", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("head", torch.zeros(num_classes, dtype=torch.long))

    def __len__(self) -> int:
        return int(self.filled.sum())

    def clear(self) -> None:
        """Forget every stored image."""
        self.patches.zero_()
        self.filled.zero_()
        self.head.zero_()

    @torch.no_grad()
    def add(self, desc: torch.Tensor, labels: torch.Tensor) -> None:
        """Store every image of a batch, in batch order: ``desc`` (B, D, h, w), ``labels`` (B,) long."""
        flat = F.normalize(desc.detach().float().flatten(2), dim=1)  # (B, D, hw)
        if flat.shape[1:] != self.patches.shape[2:]:
            raise ValueError(
                f"ClassPatchBank.add: descriptors of shape (D, h*w) = {tuple(flat.shape[1:])} do not fit the bank's "
                f"{tuple(self.patches.shape[2:])}; the training image size or backbone changed since the bank was "
                "built (resume with the configuration the run started with)"
            )
        for j, c in enumerate(labels.tolist()):
            pos = int(self.head[c])
            self.patches[c, pos] = flat[j]
            self.head[c] = (pos + 1) % self.size
            self.filled[c] = min(int(self.filled[c]) + 1, self.size)

    def stored(self, c: int) -> torch.Tensor:
        """(m, D, h·w) the images stored for class ``c``, oldest first."""
        m = int(self.filled[c])
        if m < self.size:
            return self.patches[c, :m]
        order = (int(self.head[c]) + torch.arange(self.size, device=self.patches.device)) % self.size
        return self.patches[c, order]

    @torch.no_grad()
    def presence(self, protos: torch.Tensor, topk: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
        """How visible each candidate is in each class's stored images.

        Args:
            protos: (B, K, D) L2-normalised candidate prototypes.
            topk: the presence of a candidate in one image is the mean of its ``topk`` highest patch cosines.

        Returns:
            ``(presence, known)``: (B, C, K) float32, a candidate's presence averaged over the class's images (0 for
            classes without images), and (C,) bool, the classes that have images.
        """
        b, k, _ = protos.shape
        out = protos.new_zeros(b, self.num_classes, k, dtype=torch.float32)
        known = self.filled > 0  # (C,)
        for c in torch.nonzero(known).flatten().tolist():
            stored = self.stored(c)  # (m, D, hw)
            cos = einsum(protos.float(), stored.to(protos.device), "b k d, m d n -> b m k n")
            per_image = cos.topk(min(topk, cos.shape[-1]), dim=-1).values.mean(dim=-1)  # (b, m, K)
            out[:, c] = per_image.mean(dim=1)
        return out, known.to(protos.device)


@torch.no_grad()
def contrast_selection(
    parts: PartSelection, presence: torch.Tensor, known: torch.Tensor, labels: torch.Tensor, weight: float = 0.5
) -> PartSelection:
    """Choose each sample's part by how much more visible it is in its own class than in any other class (ours).

    PartIoU keeps the cluster that overlaps the egocentric saliency most, which is the whole object, or the
    background, as often as the part. This rule scores cluster k of a sample of class a by

        presence_a(k) − weight · max_{c ≠ a} presence_c(k),

    with presence from :meth:`ClassPatchBank.presence`: the background is present in every class's images and the
    food of "cut_with" or the person in none, so both score about 0 or below, while the blade, found on the objects
    of "cut_with" and on few others, scores high. A sample gets a prototype when its best score is above 0.

    Args:
        parts: the PartIoU selection (its ``centroids`` are the candidates).
        presence: (B, C, K) from :meth:`ClassPatchBank.presence` of the normalised centroids.
        known: (C,) bool, the classes the bank has images of.
        labels: (B,) int64 class of each sample.
        weight: how much a candidate's presence in the other classes counts against it.

    Returns:
        A new :class:`PartSelection`: ``best``, ``has_prototype``, ``prototypes`` and (for the samples it chose)
        ``part_scores`` come from this rule; samples whose class the bank has no image of, or that have no
        clusters, keep PartIoU's.
    """
    b, c, _ = presence.shape
    rows = torch.arange(b, device=presence.device)
    own = presence[rows, labels]  # (B, K)
    is_other = known.view(1, c).expand(b, c).clone()
    is_other[rows, labels] = False
    others = presence.masked_fill(~is_other.unsqueeze(-1), float("-inf")).max(dim=1).values  # (B, K)
    others = torch.where(torch.isfinite(others), others, torch.zeros_like(others))
    score = own - weight * others
    valid = parts.centroids.abs().sum(dim=(1, 2)) > 0
    usable = valid & known[labels]
    top, choice = score.max(dim=1)
    best = torch.where(usable, choice, parts.best)
    has = torch.where(usable, top > 0, parts.has_prototype)
    protos = F.normalize(parts.centroids, dim=-1)
    chosen = protos[rows, best]
    return PartSelection(
        prototypes=torch.where(has.unsqueeze(1), chosen, chosen.new_zeros(())),
        has_prototype=has,
        part_scores=torch.where(usable.unsqueeze(1), score, parts.part_scores),
        part_sim=parts.part_sim,
        best=best,
        centroids=parts.centroids,
    )


class ClassContrastSelector(PartSelector):
    """Clusters and part maps from a base selector, the prototype from :func:`contrast_selection` (ours).

    In training mode every egocentric image of the batch is added to the bank after the selection.

    Args:
        base: the selector that clusters (LOCATE's :class:`models.parts.PartIoUSelector`).
        bank: the bank of recent egocentric images.
        weight: how much a cluster's presence in the other classes counts against it.
    """

    def __init__(self, base: PartSelector, bank: ClassPatchBank, weight: float = 0.5) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"ClassContrastSelector: expected a weight >= 0, got {weight}")
        self.base, self.bank, self.weight = base, bank, float(weight)

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
        presence, known = self.bank.presence(F.normalize(parts.centroids, dim=-1))
        parts = contrast_selection(parts, presence, known, labels, weight=self.weight)
        if self.training:
            self.bank.add(ego_desc, labels)
        return parts

    def extra_repr(self) -> str:
        return f"weight={self.weight}"
