"""Post-processing written to trace into an ONNX graph: fixed-size, padded outputs and ONNX's own NMS.

:func:`padded_postprocess` has the semantics of :func:`multibox.postprocess` (softmax; decode; clip to [0, 1]; per
class >= 1: scores ``> score_thresh``, the best ``pre_nms_top_k``, greedy NMS suppressing IoU ``> nms_thresh``;
then the best ``top_k`` over all classes) but returns fixed-size tensors, ``K = top_k`` slots per image::

    boxes          [B, K, 4] float32  xyxy in [0, 1]
    scores         [B, K]    float32  class probabilities, descending; 0 in padded slots
    labels         [B, K]    int64    classes >= 1; 0 in padded slots
    num_detections [B]       int64    the number of real detections of each image

How NMS gets into the graph. Our eager NMS (:func:`multibox.nms.nms_padded`) iterates to a data-dependent fixed
point, which does not trace. The graph uses ONNX's ``NonMaxSuppression`` op instead, emitted by the ``symbolic`` of
:class:`GraphNMS`, a ``torch.autograd.Function`` whose ``forward`` runs the exact eager NMS (so the same module
gives :func:`multibox.postprocess`'s results in PyTorch). Each (image, class) pair is its own NMS "batch" with one
class: ``boxes [B*(C-1), K', 4]``, ``scores [B*(C-1), 1, K']`` with the per-class top ``K' = pre_nms_top_k``
candidates from ``TopK``. The selected indices are scattered into a keep mask over the candidates, suppressed
scores become ``-1``, a global ``TopK(top_k)`` picks the detections and ``GatherElements`` their boxes.

onnxruntime's CPU kernel keeps a candidate when ``score > score_threshold`` and suppresses it when ``IoU >
iou_threshold``, both strict as ours (``SuppressByIOU`` in its ``non_max_suppression_helper.h``; checked by
``tests/test_export.py``), so the thresholds go in unchanged. Its box format (``center_point_box=0``, nominally
``[y1, x1, y2, x2]``) does not matter: it takes the min and max of each coordinate pair and IoU is symmetric in x
and y, so xyxy boxes give the same result.

Ties: candidates with equal scores (e.g. probabilities saturated at exactly 1.0, common in untrained or very
confident models) may be ordered differently by torch's and onnxruntime's ``TopK`` and onnxruntime's NMS priority
queue, and then different boxes are kept, all equally valid. Likewise onnxruntime computes ``inter / union > t``
where :func:`multibox.nms.overlaps` computes ``inter > (t / (1 + t)) (area_1 + area_2)``, so a pair within a float
rounding error of the threshold may be decided differently. :func:`verify_detections` checks an output against what
the specification determines, leaving exactly these choices free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from multibox.boxes import DEFAULT_VARIANCES, box_iou
from multibox.nms import nms_padded
from multibox.onnx_runtime import BOX_ATOL, SCORE_ATOL, ExportMismatchError
from multibox.postprocess import class_candidates

__all__ = [
    "DETECTION_OUTPUTS",
    "IOU_ATOL",
    "RAW_OUTPUTS",
    "DetectionGraph",
    "GraphNMS",
    "RawGraph",
    "padded_postprocess",
    "verify_detections",
]

#: Output names of a graph with post-processing, in order.
DETECTION_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
#: Output names of a raw graph, in order.
RAW_OUTPUTS = ("cls_logits", "box_deltas")
#: IoU margin of :func:`verify_detections`: a pair this close to ``nms_thresh`` may be decided either way.
IOU_ATOL = 1e-4


class GraphNMS(torch.autograd.Function):
    """Greedy NMS over independent groups: the exact eager NMS in PyTorch, ONNX ``NonMaxSuppression`` in a graph.

    Inputs are those of the ONNX op with one class per group: ``boxes Tensor[N, K, 4]`` xyxy, sorted by
    descending score within each group (as ``TopK`` leaves them), and ``scores Tensor[N, 1, K]``; then
    ``max_per_group`` (int), ``iou_threshold`` and ``score_threshold`` (floats). The output is the op's
    ``selected_indices Tensor[M, 3]`` int64 rows ``(group, 0, box)``: in PyTorch ordered by group then box, in
    onnxruntime by group then descending score (the order is not used).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, boxes: Tensor, scores: Tensor, max_per_group: int, iou_threshold: float, score_threshold: float
    ) -> Tensor:
        keep = nms_padded(boxes, scores[:, 0] > score_threshold, iou_threshold)  # (N, K)
        keep &= keep.cumsum(1) <= max_per_group  # the op's cap on kept boxes per group
        idx = keep.nonzero()  # (M, 2): group, box
        return torch.stack((idx[:, 0], torch.zeros_like(idx[:, 0]), idx[:, 1]), dim=1)

    @staticmethod
    def symbolic(
        g: Any, boxes: Any, scores: Any, max_per_group: int, iou_threshold: float, score_threshold: float
    ) -> Any:
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_per_group], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
        )


def padded_postprocess(
    cls_logits: Tensor,
    box_deltas: Tensor,
    priors: Tensor,
    *,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    pre_nms_top_k: int = 200,
    top_k: int = 200,
    variances: tuple[float, float] = DEFAULT_VARIANCES,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`multibox.postprocess` with fixed-size outputs (see the module docstring), traceable to ONNX.

    The batch size may vary in a graph; the class and prior counts are fixed by ``cls_logits`` and ``priors``.
    Every tensor that depends on the batch size is computed from the inputs (``x * 0``, not ``zeros_like``, which
    the TorchScript exporter would fold into a constant of the traced batch size).

    Args:
        cls_logits: ``Tensor[B, A, C]``.
        box_deltas: ``Tensor[B, A, 4]``.
        priors: ``Tensor[A, 4]`` cxcywh.
        score_thresh: keep class scores strictly above this.
        nms_thresh: suppress a box whose IoU with a kept higher-scored box of its class is strictly greater.
        pre_nms_top_k: candidates per class entering NMS.
        top_k: detections per image, the size of the outputs.
        variances: the box-coding variances.

    Returns:
        ``boxes Tensor[B, top_k, 4]`` xyxy in [0, 1], ``scores Tensor[B, top_k]`` (descending), ``labels
        Tensor[B, top_k]`` int64 and ``num_detections Tensor[B]`` int64; slots past ``num_detections`` are zeros.
    """
    a, c = int(priors.shape[0]), int(cls_logits.shape[-1])
    k = min(pre_nms_top_k, a)
    ck = (c - 1) * k
    boxes, scores = class_candidates(torch.softmax(cls_logits, dim=-1), box_deltas, priors, k, variances)
    # One NMS group per (image, class): (B, C-1, K, 4) -> (B*(C-1), K, 4), scores -> (B*(C-1), 1, K).
    selected = GraphNMS.apply(boxes.reshape(-1, k, 4), scores.reshape(-1, 1, k), k, nms_thresh, score_thresh)
    flat_sel = selected[:, 0] * k + selected[:, 2]  # (M,) into the B*(C-1)*K candidates
    flat_scores = scores.reshape(-1)  # (B*(C-1)*K,)
    keep = (flat_scores * 0).scatter(0, flat_sel, flat_scores.gather(0, flat_sel) * 0 + 1)  # 1 where kept
    masked = torch.where(keep > 0, flat_scores, -1.0).reshape(-1, ck)  # (B, (C-1)*K)
    n = min(top_k, ck)
    top, top_idx = masked.topk(n, dim=1)  # (B, n)
    out_boxes = boxes.reshape(-1, ck, 4).gather(1, top_idx.unsqueeze(-1).expand(-1, -1, 4))  # (B, n, 4)
    labels = torch.div(top_idx, k, rounding_mode="floor") + 1  # (B, n)
    num = keep.reshape(-1, ck).to(torch.int64).sum(1).clamp(max=n)  # (B,)
    if n < top_k:  # fewer candidates than output slots
        out_boxes = nn.functional.pad(out_boxes, (0, 0, 0, top_k - n))
        top = nn.functional.pad(top, (0, top_k - n))
        labels = nn.functional.pad(labels, (0, top_k - n))
    real = torch.arange(top_k, device=num.device).unsqueeze(0) < num.unsqueeze(1)  # (B, top_k)
    out_boxes = torch.where(real.unsqueeze(-1), out_boxes, 0.0)
    top = torch.where(real, top, 0.0)
    labels = torch.where(real, labels, 0)
    return out_boxes, top, labels, num


class DetectionGraph(nn.Module):
    """An SSD followed by :func:`padded_postprocess`: what is exported with post-processing.

    Args:
        model: an :class:`~multibox.models.SSD` (a module with ``priors`` that returns a ``Prediction``).
        score_thresh, nms_thresh, pre_nms_top_k, top_k: as :func:`multibox.postprocess`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.45,
        pre_nms_top_k: int = 200,
        top_k: int = 200,
    ) -> None:
        super().__init__()
        self.model = model
        self.kwargs = {
            "score_thresh": float(score_thresh),
            "nms_thresh": float(nms_thresh),
            "pre_nms_top_k": int(pre_nms_top_k),
            "top_k": int(top_k),
        }

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``images Tensor[B, 3, H, W]`` normalised -> ``(boxes, scores, labels, num_detections)``."""
        pred = self.model(images)
        return padded_postprocess(pred.cls_logits, pred.box_deltas, self.model.priors, **self.kwargs)


class RawGraph(nn.Module):
    """An SSD whose ``Prediction`` is returned as a plain tuple ``(cls_logits [B, A, C], box_deltas [B, A, 4])``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        pred = self.model(images)
        return pred.cls_logits, pred.box_deltas


def verify_detections(
    probs: Tensor,
    boxes: Tensor,
    got: Mapping[str, np.ndarray],
    *,
    score_thresh: float,
    nms_thresh: float,
    pre_nms_top_k: int,
    top_k: int,
    box_atol: float = BOX_ATOL,
    score_atol: float = SCORE_ATOL,
    iou_atol: float = IOU_ATOL,
) -> dict[str, float]:
    """Check that padded detections are an output the post-processing allows on these candidates, whatever the
    order of tied scores.

    The pipeline (per class: scores above ``score_thresh``, the ``pre_nms_top_k`` best, greedy NMS; then the
    ``top_k`` best over all classes) is deterministic except where scores tie: which tied candidates fill the last
    places of a top-k, and which of two tied overlapping boxes NMS keeps (which in turn decides whether the boxes it
    would suppress survive). So ``got`` is not compared as a list but checked against what is determined. Scores
    within ``score_atol`` count as tied, IoUs within ``iou_atol`` of ``nms_thresh`` may go either way. Per image:

    * the format: ``num_detections <= top_k``, padded slots zero, labels of foreground classes, scores descending;
    * every detection is a candidate of its class, one to one: score within ``score_atol``, box within ``box_atol``;
    * it could enter NMS: its score is above ``score_thresh`` and not below the class's ``pre_nms_top_k``-th best;
    * no two detections of a class overlap with IoU above ``nms_thresh``;
    * every candidate sure to enter NMS (clear of both cuts) that is not detected is overlapped above
      ``nms_thresh`` by a detection of its class scored at least as high: NMS suppressed it. Candidates tied with
      the lowest output score of a full output (``num_detections == top_k``) are exempt: they may have been cut;
    * where more than ``pre_nms_top_k`` candidates of a class are above the threshold, its top-k picks exactly
      that many: the detections tied at its cut do not exceed the places left, and the tied candidates that are
      neither detected nor accounted for (suppressed, or cut) leave none unfilled.

    The conditions are also sufficient: taking, among tied candidates, the detected ones first, greedy NMS keeps
    exactly the detections. Where no scores tie (within ``score_atol``) they hold for one output only, the
    deterministic one; a box, score or label that differs beyond the tolerances, a missing or an extra detection
    always fails.

    Args:
        probs: ``Tensor[B, A, C]`` class probabilities (background first) of the reference.
        boxes: ``Tensor[B, A, 4]`` the decoded boxes of the reference, xyxy clipped to [0, 1].
        got: padded detections (``boxes [B, K, 4]``, ``scores [B, K]``, ``labels [B, K]``,
            ``num_detections [B]``), ``K = top_k``.
        score_thresh, nms_thresh, pre_nms_top_k, top_k: the post-processing's arguments.
        box_atol, score_atol, iou_atol: the tolerances.

    Returns:
        ``{"boxes": ..., "scores": ...}``: the largest differences between detections and their candidates.

    Raises:
        ExportMismatchError: naming the image, the class and what is not allowed.
    """
    b, a, _ = probs.shape
    if np.shape(got["num_detections"]) != (b,):
        raise ExportMismatchError(f"num_detections: shape {list(np.shape(got['num_detections']))}, expected [{b}]")
    rule = _ClassRule(score_thresh, nms_thresh, min(pre_nms_top_k, a), score_atol, iou_atol)
    worst = {"boxes": 0.0, "scores": 0.0}
    for i in range(b):
        worst = _verify_image(probs[i], boxes[i], got, i, rule, top_k, box_atol, score_atol, worst)
    return worst


def _verify_image(
    probs: Tensor,
    boxes: Tensor,
    got: Mapping[str, np.ndarray],
    i: int,
    rule: _ClassRule,
    top_k: int,
    box_atol: float,
    score_atol: float,
    worst: dict[str, float],
) -> dict[str, float]:
    """:func:`verify_detections` for image ``i`` (``probs [A, C]``, ``boxes [A, 4]``, ``got`` the whole batch's);
    ``worst`` updated with its largest differences."""
    c = probs.shape[-1]
    det_boxes, det_scores, det_labels = _image_detections(got, i, c, top_k, score_atol)
    cut = float(det_scores[-1]) + 2 * score_atol if len(det_scores) == top_k else -math.inf
    for label in range(1, c):
        mine = det_labels == label
        where = f"image {i}, class {label}"
        kept, box_err, score_err = _match(
            probs[:, label], boxes, det_boxes[mine], det_scores[mine], box_atol, score_atol, where
        )
        rule.check(probs[:, label], boxes, kept, cut, where)
        worst = {"boxes": max(worst["boxes"], box_err), "scores": max(worst["scores"], score_err)}
    return worst


def _image_detections(
    got: Mapping[str, np.ndarray], i: int, num_classes: int, top_k: int, score_atol: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Image ``i``'s real detections (``boxes [n, 4]``, ``scores [n]``, ``labels [n]``), their format checked."""
    n = int(got["num_detections"][i])
    shapes = {k: np.shape(got[k][i]) for k in ("boxes", "scores", "labels")}
    if shapes != {"boxes": (top_k, 4), "scores": (top_k,), "labels": (top_k,)}:
        raise ExportMismatchError(f"image {i}: outputs of shapes {shapes}, expected top_k = {top_k} slots")
    if not 0 <= n <= top_k:
        raise ExportMismatchError(f"image {i}: {n} detections, not in [0, top_k = {top_k}]")
    det_boxes, det_scores, det_labels = (torch.as_tensor(np.asarray(got[k][i])) for k in ("boxes", "scores", "labels"))
    if det_boxes[n:].any() or det_scores[n:].any() or det_labels[n:].any():
        raise ExportMismatchError(f"image {i}: the padded slots after {n} detections are not zero")
    det_boxes, det_scores, det_labels = det_boxes[:n].float(), det_scores[:n].float(), det_labels[:n].long()
    if n and not ((det_labels >= 1) & (det_labels < num_classes)).all():
        raise ExportMismatchError(f"image {i}: labels {det_labels.unique().tolist()} outside 1..{num_classes - 1}")
    rise = det_scores[1:] - det_scores[:-1]
    if (rise > score_atol).any():
        j = int(rise.argmax())
        raise ExportMismatchError(
            f"image {i}: scores not descending: detection {j + 1} scores {float(det_scores[j + 1]):.6f} after "
            f"{float(det_scores[j]):.6f}"
        )
    return det_boxes, det_scores, det_labels


def _match(
    scores: Tensor, boxes: Tensor, det_boxes: Tensor, det_scores: Tensor, box_atol: float, score_atol: float, where: str
) -> tuple[Tensor, float, float]:
    """The candidate of each detection of one class, one to one (the most constrained detection first, then the
    closest box): ``(index Tensor[m], largest box error, largest score error)``.

    Args:
        scores: ``Tensor[A]`` the class's candidate scores; ``boxes``: ``Tensor[A, 4]``.
        det_boxes: ``Tensor[m, 4]``; ``det_scores``: ``Tensor[m]``.
    """
    m = len(det_scores)
    if m == 0:
        return torch.zeros(0, dtype=torch.int64), 0.0, 0.0
    box_err = torch.cdist(det_boxes, boxes.float(), p=math.inf)  # (m, A): the largest coordinate difference
    score_err = (det_scores[:, None] - scores.float()[None, :]).abs()  # (m, A)
    ok = (box_err <= box_atol) & (score_err <= score_atol)
    free = torch.ones(len(scores), dtype=torch.bool)
    index = torch.empty(m, dtype=torch.int64)
    for j in ok.sum(1).argsort().tolist():
        options = (ok[j] & free).nonzero().squeeze(1)
        if options.numel() == 0:
            taken = " that is not matched to another detection already" if ok[j].any() else ""
            raise ExportMismatchError(
                f"{where}: the detection scored {float(det_scores[j]):.6f} with box "
                f"{[round(v, 5) for v in det_boxes[j].tolist()]} is no candidate of its class{taken} (within box "
                f"{box_atol:g}, score {score_atol:g})"
            )
        index[j] = options[box_err[j, options].argmin()]
        free[index[j]] = False
    rows = torch.arange(m)
    return index, float(box_err[rows, index].max()), float(score_err[rows, index].max())


class _ClassRule:
    """The conditions of :func:`verify_detections` on one class of one image."""

    def __init__(self, score_thresh: float, nms_thresh: float, pool: int, tol: float, iou_atol: float) -> None:
        self.score_thresh, self.nms_thresh, self.pool, self.tol, self.iou_atol = (
            score_thresh, nms_thresh, pool, tol, iou_atol,
        )  # fmt: skip

    def check(self, scores: Tensor, boxes: Tensor, kept: Tensor, cut: float, where: str) -> None:
        """``scores Tensor[A]``, ``boxes Tensor[A, 4]`` of the class's candidates; ``kept Tensor[m]`` the candidates
        detected; candidates scored at most ``cut`` may have been cut from a full output."""
        scores = scores.float()
        tol, pool = self.tol, self.pool
        above = scores > self.score_thresh
        allowed, required = scores > self.score_thresh - tol, scores > self.score_thresh + tol
        full = int(above.sum()) > pool  # the per-class top-k cuts
        last = float(scores[above].topk(pool).values[-1]) if full else -math.inf  # its lowest score
        allowed &= scores >= last - tol
        required &= scores > last + tol
        is_kept = torch.zeros_like(allowed)
        is_kept[kept] = True
        if not allowed[kept].all():
            s = float(scores[kept][~allowed[kept]].max())
            raise ExportMismatchError(
                f"{where}: a detection scored {s:.6f} cannot have entered NMS (score_thresh {self.score_thresh}, "
                f"the class's {pool}-th best score {last:.6f})"
            )
        self._check_overlaps(scores, boxes, kept, where)
        consider = allowed & ~is_kept
        suppressed = torch.zeros_like(allowed)
        suppressed[consider] = self._suppressed(scores[consider], boxes[consider], scores[kept], boxes[kept])
        missing = required & ~is_kept & ~suppressed & (scores > cut)
        if missing.any():
            j = int(torch.where(missing, scores, -1.0).argmax())
            raise ExportMismatchError(
                f"{where}: the candidate scored {float(scores[j]):.6f} with box "
                f"{[round(v, 5) for v in boxes[j].tolist()]} is missing: it enters NMS and no detection of its class "
                f"scored as high overlaps it with IoU > {self.nms_thresh}"
            )
        if full:
            self._check_pool(required, allowed & ~required, is_kept, suppressed | (scores <= cut), scores, where)

    def _check_overlaps(self, scores: Tensor, boxes: Tensor, kept: Tensor, where: str) -> None:
        iou = box_iou(boxes[kept], boxes[kept]).fill_diagonal_(0.0)  # (m, m)
        if (iou > self.nms_thresh + self.iou_atol).any():
            j1, j2 = divmod(int(iou.argmax()), len(kept))
            raise ExportMismatchError(
                f"{where}: the detections scored {float(scores[kept[j1]]):.6f} and {float(scores[kept[j2]]):.6f} "
                f"overlap with IoU {float(iou[j1, j2]):.4f} > {self.nms_thresh}: NMS keeps only one of them"
            )

    def _suppressed(self, scores: Tensor, boxes: Tensor, kept_scores: Tensor, kept_boxes: Tensor) -> Tensor:
        """``Tensor[N]`` bool: each candidate overlaps a kept box scored at least as high (within the tolerance)."""
        overlap = box_iou(boxes, kept_boxes) > max(self.nms_thresh - self.iou_atol, 0.0)  # (N, m)
        return (overlap & (kept_scores[None, :] >= scores[:, None] - self.tol)).any(1)

    def _check_pool(
        self, required: Tensor, band: Tensor, is_kept: Tensor, excused: Tensor, scores: Tensor, where: str
    ) -> None:
        """The per-class top-k took ``pool`` candidates: all ``required`` ones, the rest from the tied ``band``."""
        places = self.pool - int(required.sum())
        taken = int((band & is_kept).sum())
        if taken > places:
            raise ExportMismatchError(
                f"{where}: {taken} detections share the last {places} places of the class's top "
                f"{self.pool} (pre_nms_top_k) candidates"
            )
        if int((scores > self.score_thresh + self.tol).sum()) >= self.pool:  # full whatever the rounding
            fill = int((band & ~is_kept & excused).sum())
            if taken + fill < places:
                raise ExportMismatchError(
                    f"{where}: the class's top {self.pool} (pre_nms_top_k) candidates have {places} places for tied "
                    f"candidates, but only {taken} detected and {fill} suppressed or cut ones fill them: a tied "
                    f"candidate is missing"
                )
