"""How well a set of default boxes fits a dataset's boxes, and k-means suggestions for better ones.

SSD matches a prior to a ground-truth box when their IoU is at least 0.5 (paper §2.2 "Matching strategy"); a box
that no prior reaches is learnt only through its single forced best match. :func:`anchor_coverage` measures that
on a dataset (overall, per class and per size), and :func:`suggest_priors` clusters the boxes' ``(w, h)`` with the
``1 - IoU`` distance (as YOLOv2 did for its anchors) to propose sizes and aspect ratios.

All boxes are xyxy normalised to [0, 1] by their image's width and height (what the transforms output); IoUs in
these units equal the IoUs in the resized network input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from multibox.boxes import box_iou, cxcywh_to_xyxy

__all__ = ["AnchorCoverage", "PriorSuggestion", "anchor_coverage", "normalized_targets", "suggest_priors"]

#: Size buckets by ``sqrt(w h)`` of a normalised box: small below 0.1 of the image, large from 0.3.
DEFAULT_SIZE_EDGES: tuple[float, float] = (0.1, 0.3)
_QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass
class AnchorCoverage:
    """The result of :func:`anchor_coverage`.

    Attributes:
        threshold: the IoU a prior must reach for a box to count as covered.
        num_boxes: ground-truth boxes examined.
        covered: fraction of boxes with a prior of IoU >= ``threshold``.
        per_class: class name -> ``(boxes, fraction covered)``.
        per_size: ``"small"``, ``"medium"``, ``"large"`` -> ``(boxes, fraction covered)``.
        best_iou_quantiles: quantile -> best IoU at that quantile.
        histogram: counts of best IoUs in the 10 bins ``[0, 0.1), ..., [0.9, 1]``.
        best_iou: ``Tensor[M]`` the best prior IoU of every box, in input order.
    """

    threshold: float
    num_boxes: int
    covered: float
    per_class: dict[str, tuple[int, float]]
    per_size: dict[str, tuple[int, float]]
    best_iou_quantiles: dict[float, float]
    histogram: list[int]
    best_iou: Tensor = field(repr=False)

    def __str__(self) -> str:
        lines = [
            f"anchor coverage: {self.covered:.1%} of {self.num_boxes} boxes have a prior with IoU >= {self.threshold}"
        ]
        lines.append("  per class: " + ", ".join(f"{k} {_pct(f)} ({n})" for k, (n, f) in self.per_class.items()))
        lines.append("  per size:  " + ", ".join(f"{k} {_pct(f)} ({n})" for k, (n, f) in self.per_size.items()))
        lines.append(
            "  best IoU quantiles: " + ", ".join(f"q{q:g} {v:.2f}" for q, v in self.best_iou_quantiles.items())
        )
        peak = max(self.histogram, default=0) or 1
        for k, count in enumerate(self.histogram):
            lines.append(f"  [{k / 10:.1f}, {(k + 1) / 10:.1f}) {count:6d} {'#' * round(40 * count / peak)}")
        return "\n".join(lines)


def _pct(fraction: float) -> str:
    return "-" if math.isnan(fraction) else f"{fraction:.1%}"


def _fraction(mask: Tensor) -> float:
    return float(mask.float().mean()) if mask.numel() else float("nan")


def anchor_coverage(
    gt_boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    priors: Tensor,
    class_names: Sequence[str],
    threshold: float = 0.5,
    size_edges: tuple[float, float] = DEFAULT_SIZE_EDGES,
    chunk: int = 2048,
) -> AnchorCoverage:
    """Measure how many ground-truth boxes some prior matches with IoU >= ``threshold``.

    Args:
        gt_boxes: per image, ``Tensor[N_i, 4]`` xyxy normalised to [0, 1].
        labels: per image, ``Tensor[N_i]`` labels in ``1..K``.
        priors: ``Tensor[A, 4]`` cxcywh default boxes relative to the input (:mod:`multibox.priors`).
        class_names: name of label ``k`` is ``class_names[k - 1]``.
        threshold: the matching IoU (paper: 0.5).
        size_edges: ``sqrt(w h)`` edges between small, medium and large boxes.
        chunk: boxes per IoU block (bounds memory at ``chunk x A`` floats).

    Returns:
        An :class:`AnchorCoverage` (``str()`` prints a readable table).
    """
    boxes = torch.cat([b.reshape(-1, 4).float() for b in gt_boxes]) if gt_boxes else torch.zeros(0, 4)
    cls = torch.cat([torch.as_tensor(lab).reshape(-1).long() for lab in labels]) if labels else torch.zeros(0).long()
    if boxes.shape[0] != cls.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {cls.shape[0]} labels")
    prior_boxes = cxcywh_to_xyxy(priors.float())  # (A, 4)
    best = (
        torch.cat([box_iou(part, prior_boxes).amax(dim=1) for part in boxes.split(chunk)])
        if len(boxes)
        else boxes[:, 0]
    )
    hit = best >= threshold
    scale = ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).sqrt()
    small, large = size_edges
    buckets = {"small": scale < small, "medium": (scale >= small) & (scale < large), "large": scale >= large}
    per_class = {name: (int((cls == k + 1).sum()), _fraction(hit[cls == k + 1])) for k, name in enumerate(class_names)}
    per_size = {name: (int(mask.sum()), _fraction(hit[mask])) for name, mask in buckets.items()}
    if len(best):
        q = torch.quantile(best.double(), torch.tensor(_QUANTILES, dtype=torch.float64))
        quantiles = {k: float(v) for k, v in zip(_QUANTILES, q, strict=True)}
    else:
        quantiles = {k: float("nan") for k in _QUANTILES}
    histogram = (
        torch.histc(best.clamp(0, 1 - 1e-9), bins=10, min=0.0, max=1.0).long().tolist() if len(best) else [0] * 10
    )
    return AnchorCoverage(threshold, len(best), _fraction(hit), per_class, per_size, quantiles, histogram, best)


@dataclass
class PriorSuggestion:
    """The result of :func:`suggest_priors`.

    Attributes:
        centroids: ``Tensor[k, 2]`` cluster ``(w, h)`` normalised, sorted by area.
        mean_iou: mean over boxes of the IoU with their best centroid (centred boxes).
        scales: ``sqrt(w h)`` of each centroid.
        aspect_ratios: the SSD-style ratios ``a >= 1`` (each stands for ``a`` and ``1/a``) the centroids suggest,
            rounded to 0.5 and without 1.
        min_sizes: per feature map, the lower scale edge of the map's share of boxes (quantiles of ``sqrt(w h)``).
        max_sizes: per feature map, the next map's lower edge (the last: the largest box scale).
    """

    centroids: Tensor
    mean_iou: float
    scales: list[float]
    aspect_ratios: list[float]
    min_sizes: list[float]
    max_sizes: list[float]

    def __str__(self) -> str:
        wh = ", ".join(f"{w:.3f}x{h:.3f}" for w, h in self.centroids.tolist())
        return (
            f"k-means (1 - IoU) centroids (w x h): {wh}\n  mean IoU with the best centroid: {self.mean_iou:.3f}\n"
            f"  aspect ratios: {self.aspect_ratios}\n  min sizes: {[round(s, 3) for s in self.min_sizes]}\n"
            f"  max sizes: {[round(s, 3) for s in self.max_sizes]}"
        )


def _wh_iou(wh1: Tensor, wh2: Tensor) -> Tensor:
    """IoU ``Tensor[N, K]`` of boxes ``(w, h)`` sharing a centre."""
    inter = torch.minimum(wh1[:, None, 0], wh2[None, :, 0]) * torch.minimum(wh1[:, None, 1], wh2[None, :, 1])
    union = (wh1[:, 0] * wh1[:, 1])[:, None] + (wh2[:, 0] * wh2[:, 1])[None, :] - inter
    return inter / union.clamp(min=1e-12)


def suggest_priors(
    gt_boxes: Sequence[Tensor],
    k: int = 6,
    num_maps: int = 6,
    iterations: int = 100,
    seed: int = 0,
) -> PriorSuggestion:
    """Cluster the boxes' ``(w, h)`` by k-means with distance ``1 - IoU`` and propose SSD prior parameters.

    Args:
        gt_boxes: per image, ``Tensor[N_i, 4]`` xyxy normalised to [0, 1].
        k: the number of clusters.
        num_maps: the number of feature maps to propose min/max sizes for (fractions of the input side).
        iterations: the most k-means iterations (it stops when assignments settle).
        seed: seeds the k-means++ initialisation.

    Returns:
        A :class:`PriorSuggestion`.
    """
    boxes = torch.cat([b.reshape(-1, 4).double() for b in gt_boxes]) if gt_boxes else torch.zeros(0, 4)
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    wh = wh[(wh > 0).all(dim=1)]
    if wh.shape[0] < k:
        raise ValueError(f"need at least k={k} non-empty boxes, got {wh.shape[0]}")
    g = torch.Generator().manual_seed(seed)
    # k-means++ initialisation with the 1 - IoU distance.
    centroids = wh[torch.randint(len(wh), (1,), generator=g)]
    while len(centroids) < k:
        d = (1 - _wh_iou(wh, centroids)).amin(dim=1).clamp(min=0) ** 2
        pick = (
            torch.multinomial(d / d.sum(), 1, generator=g) if d.sum() > 0 else torch.randint(len(wh), (1,), generator=g)
        )
        centroids = torch.cat((centroids, wh[pick]))
    assign = torch.full((len(wh),), -1, dtype=torch.long)
    for _ in range(iterations):
        iou = _wh_iou(wh, centroids)  # (N, k)
        new = iou.argmax(dim=1)
        if torch.equal(new, assign):
            break
        assign = new
        for c in range(k):
            members = wh[assign == c]
            if len(members):
                centroids[c] = members.mean(dim=0)
            else:  # re-seed an empty cluster on the worst-fitted box
                centroids[c] = wh[iou.amax(dim=1).argmin()]
    order = (centroids[:, 0] * centroids[:, 1]).argsort()
    centroids = centroids[order]
    mean_iou = float(_wh_iou(wh, centroids).amax(dim=1).mean())
    scales = (centroids[:, 0] * centroids[:, 1]).sqrt().tolist()
    ratios = sorted({round(2 * max(w / h, h / w)) / 2 for w, h in centroids.tolist()} - {1.0})
    box_scale = (wh[:, 0] * wh[:, 1]).sqrt()
    edges = torch.quantile(box_scale, torch.linspace(0, 1, num_maps + 1, dtype=torch.float64)).tolist()
    return PriorSuggestion(centroids.float(), mean_iou, scales, ratios, edges[:-1], edges[1:])


def normalized_targets(dataset: Any) -> tuple[list[Tensor], list[Tensor]]:
    """Every item's boxes as xyxy in [0, 1] of its image, and labels, decoding no image when the dataset can.

    Args:
        dataset: a detection dataset; ``get_target(i)`` (VOC, COCO) is used when present, else ``dataset[i]``.

    Returns:
        ``(boxes, labels)``: per image ``Tensor[N_i, 4]`` and ``Tensor[N_i]``.
    """
    boxes, labels = [], []
    for i in range(len(dataset)):
        if hasattr(dataset, "get_target"):
            target = dataset.get_target(i)
            h, w = (int(v) for v in target["orig_size"])
        else:
            image, target = dataset[i]
            h, w = image.shape[-2:]
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        boxes.append(target["boxes"].float() / scale)
        labels.append(target["labels"])
    return boxes, labels
