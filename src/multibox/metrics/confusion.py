"""A detection confusion matrix with a background row and column, and per-image error counts.

Detections at or above a score threshold are matched to ground truth class-agnostically, greedily by descending
score: each takes the still unmatched ground-truth box it overlaps most, if that IoU is at least ``iou_threshold``.
Then, with ``M[true, predicted]`` and index 0 the background:

- a matched pair counts in ``M[gt class, detected class]`` (the diagonal when the class is right);
- an unmatched ground-truth box is *missed*: ``M[gt class, 0]``;
- an unmatched detection is a *false* box (background taken for an object): ``M[0, detected class]``.

``M[0, 0]`` stays 0 (background found as background is not counted). Ground truth marked ``difficult`` is matched like
any other box but its pairs count nowhere, as in VOC evaluation, and it is never counted as missed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from multibox.boxes import box_iou

__all__ = ["ConfusionResult", "ImageErrors", "confusion_matrix", "match_image"]


@dataclass(frozen=True)
class ImageErrors:
    """One image's outcome.

    Attributes:
        correct: detections matched to a box of their class.
        wrong_class: detections matched to a box of another class.
        missed: ground-truth boxes no detection matched.
        false: detections that matched no ground-truth box.
    """

    correct: int
    wrong_class: int
    missed: int
    false: int

    @property
    def errors(self) -> int:
        """Everything that went wrong on the image (missed + false + wrong class)."""
        return self.missed + self.false + self.wrong_class


@dataclass(frozen=True)
class ConfusionResult:
    """The matrix and the per-image counts.

    Attributes:
        matrix: ``Tensor[K + 1, K + 1]`` int64, rows the true class, columns the detected one, 0 the background.
        images: per image, its :class:`ImageErrors`.
        score_thresh: detections below it were left out.
        iou_threshold: the matching IoU.
    """

    matrix: Tensor
    images: list[ImageErrors]
    score_thresh: float
    iou_threshold: float

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        """Plain values: ``labels`` (``background`` first), ``matrix`` rows, thresholds."""
        return {
            "labels": ["background", *class_names],
            "matrix": self.matrix.tolist(),
            "rows": "true class",
            "columns": "detected class",
            "score_thresh": self.score_thresh,
            "iou_threshold": self.iou_threshold,
        }


def match_image(
    det_boxes: Tensor,
    det_scores: Tensor,
    det_labels: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_difficult: Tensor | None,
    num_classes: int,
    iou_threshold: float = 0.5,
) -> tuple[Tensor, ImageErrors]:
    """One image's contribution to the matrix.

    Args:
        det_boxes: ``Tensor[D, 4]`` xyxy; det_scores ``Tensor[D]``; det_labels ``Tensor[D]`` in ``1..K``.
        gt_boxes: ``Tensor[G, 4]`` xyxy in the same units; gt_labels ``Tensor[G]`` in ``1..K``.
        gt_difficult: ``Tensor[G]`` bool, or None.
        num_classes: ``K + 1`` (background included).
        iou_threshold: the least IoU of a match.

    Returns:
        ``(Tensor[K + 1, K + 1] int64 counts, ImageErrors)``.
    """
    m = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    difficult = gt_difficult.bool() if gt_difficult is not None else torch.zeros(len(gt_labels), dtype=torch.bool)
    order = torch.argsort(det_scores, descending=True, stable=True)
    iou = box_iou(det_boxes[order].float(), gt_boxes.float()) if len(gt_boxes) and len(order) else None
    taken = torch.zeros(len(gt_labels), dtype=torch.bool)
    correct = wrong = false = 0
    for k, d in enumerate(order.tolist()):  # greedy by score: each detection depends on the earlier ones
        pred = int(det_labels[d])
        g = -1
        if iou is not None:
            overlaps = iou[k].masked_fill(taken, -1.0)
            best = int(overlaps.argmax())
            g = best if float(overlaps[best]) >= iou_threshold else -1
        if g < 0:
            m[0, pred] += 1
            false += 1
            continue
        taken[g] = True
        if difficult[g]:
            continue
        m[int(gt_labels[g]), pred] += 1
        correct += int(int(gt_labels[g]) == pred)
        wrong += int(int(gt_labels[g]) != pred)
    missed_mask = ~taken & ~difficult
    for label in gt_labels[missed_mask].tolist():
        m[int(label), 0] += 1
    return m, ImageErrors(correct, wrong, int(missed_mask.sum()), false)


def confusion_matrix(
    detections: Sequence[Any],
    targets: Sequence[dict[str, Any]],
    num_classes: int,
    score_thresh: float = 0.3,
    iou_threshold: float = 0.5,
) -> ConfusionResult:
    """The confusion matrix of a dataset's detections (see the module docstring).

    Args:
        detections: per image, ``boxes``/``scores``/``labels`` (:class:`~multibox.structures.Detections`).
        targets: per image, ``{"boxes", "labels", optional "difficult"}`` in the detections' units.
        num_classes: ``K + 1`` (background included).
        score_thresh: detections below are left out (a working point, unlike AP which sweeps all scores).
        iou_threshold: the least IoU of a match.
    """
    if len(detections) != len(targets):
        raise ValueError(f"{len(detections)} detection lists for {len(targets)} images")
    total = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    images = []
    for det, t in zip(detections, targets, strict=True):
        keep = det.scores >= score_thresh
        m, errs = match_image(det.boxes[keep], det.scores[keep], det.labels[keep], t["boxes"], t["labels"],
                              t.get("difficult"), num_classes, iou_threshold)  # fmt: skip
        total += m
        images.append(errs)
    return ConfusionResult(total, images, score_thresh, iou_threshold)
