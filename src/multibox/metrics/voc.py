"""PASCAL VOC average precision, with the devkit's matching rules.

The rules follow the VOC devkit's ``VOCevaldet.m`` (Everingham et al., IJCV 2010, sec. 4.2) as transcribed in the
widely used ``voc_eval.py`` (py-faster-rcnn, ssd.pytorch), per class:

1. All detections of the class, over all images, are sorted by descending score. The sort is *stable*: ties keep
   the input order (images in order, then detections in order within an image).
2. Each detection is compared with the class's ground truth in its image and takes the box of maximum IoU, whether
   or not that box is already matched (first box on ties). It is a true positive if that IoU is **strictly greater**
   than the threshold (the devkit's ``ovmax > ovthresh``) and the box is not yet matched; a second detection on a
   matched box is a false positive (a duplicate), and so is one with IoU <= threshold or no ground truth at all.
3. A detection whose best box is ``difficult`` is neither a true nor a false positive: it is left out of the
   precision/recall curve. Difficult boxes are not counted in the number of positives.
4. ``recall = TP / npos`` and ``precision = TP / (TP + FP)`` along the ranking; AP is then either the VOC2007
   11-point interpolation or the area under the monotone precision envelope (VOC2010 onward), see
   :func:`average_precision`.

Coordinates: the devkit works in integer pixels and adds 1 to every width and height (a box from pixel 1 to pixel
10 is 10 pixels wide). That is ``pixel_plus_one=True``. The default, ``False``, treats boxes as continuous
coordinates (``x2 - x1`` is the width), which is right for the float boxes SSD predicts, in pixels or in [0, 1].

Because the matched box does not depend on what was matched before (rule 2), the ranking is resolved without a
loop over detections: a candidate is a true positive exactly when it is the first, in score order, to claim its box.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from multibox.boxes import box_iou
from multibox.metrics._inputs import label_name, read_detections, read_ground_truths, to_numpy

__all__ = ["VOCResult", "average_precision", "voc_ap"]

#: The recall thresholds of the VOC2007 11-point AP: exactly k / 10 for k = 0..10.
_RECALL_POINTS_07 = np.arange(11) / 10


@dataclass(frozen=True)
class VOCResult:
    """The result of :func:`voc_ap`. Arrays are read-only float64 numpy.

    Attributes:
        ap: AP per class label (>= 1). NaN for a class with no (non-difficult) ground truth in the whole set:
            its AP is undefined, and it is left out of ``mean_ap``.
        mean_ap: mean of the non-NaN APs (NaN if every class is NaN or there are no classes).
        precision: per class, ``[D]`` precision after each ranked detection (difficult matches left out);
            empty for a class without ground truth.
        recall: per class, ``[D]`` recall after each ranked detection, aligned with ``precision``.
        num_positives: per class, the number of non-difficult ground-truth boxes.
        iou_threshold: the IoU a match had to exceed.
        use_07_metric: True for the 11-point AP, False for the area under the precision envelope.
    """

    ap: dict[int, float]
    mean_ap: float
    precision: dict[int, np.ndarray]
    recall: dict[int, np.ndarray]
    num_positives: dict[int, int]
    iou_threshold: float
    use_07_metric: bool

    def as_dict(self, class_names: Sequence[str] | Mapping[int, str] | None = None) -> dict[str, float]:
        """Flat ``{"mAP": ..., "AP/<class>": ...}`` for logging.

        Args:
            class_names: names of the foreground classes, ``class_names[label - 1]`` for a sequence or
                ``class_names[label]`` for a mapping; labels are used when None.
        """
        out = {"mAP": self.mean_ap}
        for label, ap in self.ap.items():
            name = str(label) if class_names is None else label_name(label, class_names)
            out[f"AP/{name}"] = ap
        return out


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def average_precision(recall: Any, precision: Any, use_07_metric: bool = True) -> float:
    """Average precision from one class's precision/recall curve, as the VOC devkit computes it.

    Args:
        recall: ``[D]`` recall after each ranked detection, non-decreasing (tensor, array or list).
        precision: ``[D]`` precision after each ranked detection.
        use_07_metric: True: the VOC2007 11-point interpolated AP, the mean over ``t in {0, 0.1, ..., 1}`` of the
            maximum precision at recall >= t (0 when no point reaches t). False: the VOC2010+ AP, the area under
            the precision envelope ``p(r) = max(precision at recall >= r)``, computed at the points where recall
            changes, with the curve extended to recall 0 and 1 with precision 0.

    Returns:
        AP in [0, 1]; 0 for an empty curve.

    Note:
        The thresholds are exactly ``k / 10``. ``voc_eval.py`` builds them with ``np.arange(0., 1.1, 0.1)``, whose
        entries 3, 6 and 7 are ``0.30000000000000004`` etc., so there a recall of exactly 0.3 (say 3 of 10 boxes)
        does not reach ``t = 0.3``. Here it does, as the definition says.
    """
    rec = to_numpy(recall, np.float64).reshape(-1)  # lists stay float64 (torch.as_tensor would make float32)
    prec = to_numpy(precision, np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"recall and precision must have the same length, got {rec.shape[0]} and {prec.shape[0]}")
    if rec.size and (np.diff(rec) < 0).any():
        raise ValueError("recall must be non-decreasing along the ranking (a cumulative TP count over npos)")
    if use_07_metric:
        if rec.size == 0:
            return 0.0
        # Max precision at recall >= t: a suffix max along the (sorted) recall, read at the first index with
        # recall >= t; index D means no point reaches t, which scores 0.
        suffix_max = np.append(np.maximum.accumulate(prec[::-1])[::-1], 0.0)  # (D + 1,)
        first = np.searchsorted(rec, _RECALL_POINTS_07, side="left")  # (11,)
        return float(suffix_max[first].sum() / 11.0)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the monotone envelope, right to left
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])  # where recall changes
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def voc_ap(
    detections: Sequence[Any],
    ground_truths: Sequence[Any],
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
    num_classes: int | None = None,
    pixel_plus_one: bool = False,
) -> VOCResult:
    """PASCAL VOC per-class AP and mAP over a set of images (see the module docstring for the exact rules).

    Args:
        detections: per image, a :class:`~multibox.Detections` (or a mapping/object with the same fields):
            ``boxes [N, 4]`` xyxy, ``scores [N]``, ``labels [N]`` int >= 1. Boxes in the same coordinates as the
            ground truth (pixels or [0, 1]). They need not be sorted.
        ground_truths: per image, a mapping or object with ``boxes [G, 4]`` xyxy, ``labels [G]`` int >= 1 and
            optionally ``difficult [G]`` bool. Same length as ``detections``; ``G`` may be 0.
        iou_threshold: a detection is a true positive only if its IoU with its box is *greater* than this.
        use_07_metric: True for the VOC2007 11-point AP (what SSD's VOC2007-test tables use), False for the
            VOC2010+ area AP.
        num_classes: the number of classes *including the background* (the model's ``C``, 21 for VOC): classes
            ``1..num_classes-1`` are reported, each even without ground truth or detections, and a label
            outside that range is an error. None: the labels that occur in either input are reported.
        pixel_plus_one: add 1 to widths and heights, as the devkit does for integer-pixel VOC boxes.

    Returns:
        A :class:`VOCResult`. A class with ground truth but no detection has AP 0; one without ground truth
        has AP NaN and is left out of the mAP (with a warning if it has detections, which are then not counted).
    """
    _check_arguments(len(detections), len(ground_truths), iou_threshold, num_classes)
    dets = read_detections(detections)
    gts = read_ground_truths(ground_truths)
    det_labels = np.concatenate([np.zeros(0, np.int64)] + [d.labels for d in dets])  # (D,)
    gt_labels = np.concatenate([np.zeros(0, np.int64)] + [g.labels for g in gts])  # (G,)
    classes = _reported_classes(det_labels, gt_labels, num_classes)
    ious, gt_index = _best_boxes(dets, gts, pixel_plus_one)
    difficult = np.concatenate([np.zeros(0, bool)] + [g.difficult for g in gts])  # (G,)
    scores = np.concatenate([np.zeros(0)] + [d.scores for d in dets])  # (D,)
    ranked_labels, tp, fp, ignored = _rank_and_mark(ious, gt_index, det_labels, scores, difficult, iou_threshold)

    positives = np.bincount(gt_labels[~difficult], minlength=int(classes.max(initial=0)) + 1)
    bounds = np.searchsorted(ranked_labels, np.stack([classes, classes + 1]))  # (2, K): each class's slice
    ap, precision, recall, num_positives = {}, {}, {}, {}
    no_gt_with_dets = []
    for k, label in enumerate(classes.tolist()):
        lo, hi = bounds[0, k], bounds[1, k]
        num_positives[label] = npos = int(positives[label])
        if npos == 0 and hi > lo:
            no_gt_with_dets.append(label)
        keep = ~ignored[lo:hi]
        ap[label], precision[label], recall[label] = _class_curve(tp[lo:hi][keep], fp[lo:hi][keep], npos, use_07_metric)
    if no_gt_with_dets:
        warnings.warn(
            f"{len(no_gt_with_dets)} class(es) have detections but no non-difficult ground truth "
            f"(labels {no_gt_with_dets}); their AP is NaN and they are left out of the mAP",
            stacklevel=2,
        )
    defined = [v for v in ap.values() if not np.isnan(v)]
    mean_ap = float(np.mean(defined)) if defined else float("nan")
    return VOCResult(ap, mean_ap, precision, recall, num_positives, float(iou_threshold), bool(use_07_metric))


def _check_arguments(num_dets: int, num_gts: int, iou_threshold: float, num_classes: int | None) -> None:
    """Raise ValueError for a threshold outside [0, 1], a class count below 1 or inputs of different lengths."""
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes counts the background and must be >= 1, got {num_classes}")
    if num_dets != num_gts:
        raise ValueError(f"detections and ground_truths must have one entry per image, got {num_dets} and {num_gts}")


def _reported_classes(det_labels: np.ndarray, gt_labels: np.ndarray, num_classes: int | None) -> np.ndarray:
    """The labels reported: ``1..num_classes-1`` (a label outside is an error), or those that occur if None."""
    if num_classes is None:
        return np.union1d(det_labels, gt_labels)
    largest = max(int(det_labels.max(initial=0)), int(gt_labels.max(initial=0)))
    if largest >= num_classes:
        raise ValueError(
            f"label {largest} is out of range for num_classes={num_classes} (which counts the background, "
            f"so labels are 1..{num_classes - 1})"
        )
    return np.arange(1, num_classes)


def _best_boxes(dets: Sequence[Any], gts: Sequence[Any], pixel_plus_one: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per detection: the best IoU with a same-class GT box of its image (-inf if none), and that box's index into
    the concatenated GT of all images. np.argmax takes the first box on ties, like the devkit."""
    offset = np.array([0.0, 0.0, 1.0, 1.0]) if pixel_plus_one else np.zeros(4)
    best_iou, best_gt = [np.zeros(0)], [np.zeros(0, np.int64)]
    start = 0
    for d, g in zip(dets, gts, strict=True):
        n, m = len(d.labels), len(g.labels)
        if n and m:
            iou = box_iou(torch.from_numpy(d.boxes + offset), torch.from_numpy(g.boxes + offset)).numpy()  # (N, M)
            iou = np.where(d.labels[:, None] == g.labels[None, :], iou, -np.inf)  # other classes never match
            j = iou.argmax(axis=1)  # (N,)
            best_iou.append(iou[np.arange(n), j])
            best_gt.append(j + start)
        else:
            best_iou.append(np.full(n, -np.inf))
            best_gt.append(np.zeros(n, np.int64))
        start += m
    return np.concatenate(best_iou), np.concatenate(best_gt)


def _rank_and_mark(
    ious: np.ndarray,
    gt_index: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    difficult: np.ndarray,
    iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rank the detections by class, then by descending score (both sorts stable so ties keep the input order),
    and mark each: true positive (first claim on its box), ignored (its box is difficult) or false positive.

    Returns:
        The ranked labels and the ``tp``, ``fp``, ``ignored`` masks in ranked order.
    """
    order = np.argsort(-scores, kind="stable")
    order = order[np.argsort(labels[order], kind="stable")]
    ious, gt_index = ious[order], gt_index[order]
    hit = ious > iou_threshold  # the devkit's strict `ovmax > ovthresh`
    ignored = np.zeros_like(hit)
    ignored[hit] = difficult[gt_index[hit]]  # gt_index is meaningless (0) where nothing was hit
    candidate = np.flatnonzero(hit & ~ignored)
    _, first = np.unique(gt_index[candidate], return_index=True)  # the first claim on each box wins
    tp = np.zeros(len(order), dtype=bool)
    tp[candidate[first]] = True
    return labels[order], tp, ~tp & ~ignored, ignored


def _class_curve(
    tp: np.ndarray, fp: np.ndarray, npos: int, use_07_metric: bool
) -> tuple[float, np.ndarray, np.ndarray]:
    """One class's AP, precision and recall from its ranked (non-ignored) tp/fp marks; NaN and empty curves for a
    class without ground truth."""
    if npos == 0:
        return float("nan"), _readonly(np.zeros(0)), _readonly(np.zeros(0))
    tp_cum = np.cumsum(tp, dtype=np.float64)
    fp_cum = np.cumsum(fp, dtype=np.float64)
    rec = tp_cum / npos
    prec = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
    return average_precision(rec, prec, use_07_metric), _readonly(prec), _readonly(rec)
