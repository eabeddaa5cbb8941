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

Caveats: candidates with exactly equal scores may be ordered differently by torch's and onnxruntime's ``TopK``
(and onnxruntime's NMS priority queue), and onnxruntime computes ``inter / union > t`` where
:func:`multibox.nms.overlaps` computes ``inter > (t / (1 + t)) (area_1 + area_2)``, so a pair within a float
rounding error of the threshold may be decided differently.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from multibox.boxes import DEFAULT_VARIANCES
from multibox.nms import nms_padded
from multibox.postprocess import class_candidates

__all__ = ["DETECTION_OUTPUTS", "RAW_OUTPUTS", "DetectionGraph", "GraphNMS", "RawGraph", "padded_postprocess"]

#: Output names of a graph with post-processing, in order.
DETECTION_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
#: Output names of a raw graph, in order.
RAW_OUTPUTS = ("cls_logits", "box_deltas")


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
