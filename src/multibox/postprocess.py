"""From raw predictions to detections (the inference half of ssd.pytorch's ``Detect``), vectorised.

Per image: softmax over classes; decode the offsets against the priors; clip to [0, 1]; for each class >= 1 keep
the scores above ``score_thresh``, the ``pre_nms_top_k`` best of them, greedy NMS at ``nms_thresh``; finally the
``top_k`` best detections over all classes. All images and classes are processed in one batched pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from multibox.boxes import DEFAULT_VARIANCES, clip_boxes, decode
from multibox.nms import nms_padded
from multibox.structures import Detections, Prediction

__all__ = ["postprocess", "select_candidates"]


def select_candidates(
    pred: Prediction,
    priors: Tensor,
    *,
    score_thresh: float = 0.01,
    pre_nms_top_k: int = 200,
    variances: tuple[float, float] = DEFAULT_VARIANCES,
) -> tuple[Tensor, Tensor, Tensor]:
    """The per-class candidates before NMS.

    Returns:
        ``boxes Tensor[B, C-1, K, 4]`` xyxy in [0, 1], ``scores Tensor[B, C-1, K]`` sorted descending within each
        class, and ``valid Tensor[B, C-1, K]`` (score above the threshold), with ``K = min(pre_nms_top_k, A)``
        possibly lowered to the largest number of valid candidates of any (image, class).
    """
    b, a, c = pred.cls_logits.shape
    probs = torch.softmax(pred.cls_logits.float(), dim=-1)  # (B, A, C)
    probs = probs[..., 1:].transpose(1, 2).contiguous()  # (B, A, C) -> (B, C-1, A), contiguous for topk
    k = min(pre_nms_top_k, a)
    scores, idx = probs.topk(k, dim=-1)  # (B, C-1, K), sorted
    valid = scores > score_thresh
    # Candidates are sorted, so the valid ones form a prefix: trim to the longest prefix in the batch.
    k = int(valid.sum(-1).max()) if valid.numel() else 0
    scores, idx, valid = scores[..., :k], idx[..., :k], valid[..., :k]
    # Decode only the candidates: flat prior index -> (B, C-1, K, 4).
    flat = (idx + torch.arange(b, device=idx.device).view(b, 1, 1) * a).reshape(-1)
    deltas = pred.box_deltas.float().reshape(b * a, 4)[flat]
    cand_priors = priors.to(deltas.device, torch.float32)[idx.reshape(-1)]
    cand = clip_boxes(decode(deltas, cand_priors, variances)).view(b, c - 1, k, 4)
    return cand, scores, valid


def postprocess(
    pred: Prediction,
    priors: Tensor,
    *,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    pre_nms_top_k: int = 200,
    top_k: int = 200,
    variances: tuple[float, float] = DEFAULT_VARIANCES,
) -> list[Detections]:
    """Turn a batch of raw predictions into detections.

    Args:
        pred: ``Prediction(cls_logits [B, A, C], box_deltas [B, A, 4])``.
        priors: ``Tensor[A, 4]`` cxcywh.
        score_thresh: keep class scores strictly above this (0.01 as ssd.pytorch's evaluation).
        nms_thresh: suppress a box whose IoU with a kept higher-scored box of its class is strictly greater.
        pre_nms_top_k: candidates per class entering NMS.
        top_k: detections per image over all classes.
        variances: the box-coding variances.

    Returns:
        One :class:`~multibox.structures.Detections` per image (boxes xyxy in [0, 1]), sorted by score.
    """
    b, _, c = pred.cls_logits.shape
    if c < 2:
        raise ValueError(f"need at least 2 classes (background + 1), got {c}")
    cand, scores, valid = select_candidates(
        pred, priors, score_thresh=score_thresh, pre_nms_top_k=pre_nms_top_k, variances=variances
    )
    k = scores.shape[-1]
    keep = nms_padded(cand, valid, nms_thresh)  # (B, C-1, K)
    flat = torch.where(keep, scores, -1.0).reshape(b, -1)  # (B, C-1, K) -> (B, (C-1)*K)
    n = min(top_k, flat.shape[1])
    top, idx = flat.topk(n, dim=1)  # (B, n)
    boxes = torch.gather(cand.reshape(b, -1, 4), 1, idx.unsqueeze(-1).expand(b, n, 4))  # (B, n, 4)
    labels = torch.div(idx, max(k, 1), rounding_mode="floor") + 1
    counts = keep.reshape(b, -1).sum(1).clamp(max=n).tolist()
    return [Detections(boxes[i, :m], top[i, :m], labels[i, :m]) for i, m in enumerate(counts)]
