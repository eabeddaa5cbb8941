"""From raw predictions to detections (the inference half of ssd.pytorch's ``Detect``), vectorised.

Per image: softmax over classes; decode the offsets against the priors; clip to [0, 1]; for each class >= 1 keep
the scores above ``score_thresh``, the ``pre_nms_top_k`` best of them, greedy NMS at ``nms_thresh``; finally the
``top_k`` best detections over all classes. All images and classes are processed in one batched pass.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from multibox.boxes import DEFAULT_VARIANCES, clip_boxes, decode
from multibox.nms import nms_padded
from multibox.structures import Detections, Prediction

__all__ = ["class_candidates", "postprocess", "select_candidates"]


def class_candidates(
    probs: Tensor, box_deltas: Tensor, priors: Tensor, k: int, variances: tuple[float, float] = DEFAULT_VARIANCES
) -> tuple[Tensor, Tensor]:
    """Every foreground class's ``k`` best priors, decoded; traceable (the ONNX graph uses it too).

    Args:
        probs: ``Tensor[B, A, C]`` class probabilities (softmax over ``C``, background first).
        box_deltas: ``Tensor[B, A, 4]``.
        priors: ``Tensor[A, 4]`` cxcywh.
        k: candidates per class, at most ``A``.

    Returns:
        ``boxes Tensor[B, C-1, k, 4]`` xyxy clipped to [0, 1] and ``scores Tensor[B, C-1, k]``, descending per class.
    """
    c = int(probs.shape[-1])
    ck = (c - 1) * k
    scores, idx = probs[:, :, 1:].transpose(1, 2).topk(k, dim=2)  # (B, A, C) -> (B, C-1, A) -> (B, C-1, k)
    # Decode the candidates only: (B, (C-1)*k, 4) gathered deltas -> (B, C-1, k, 4).
    deltas = box_deltas.gather(1, idx.reshape(-1, ck, 1).expand(-1, -1, 4)).reshape(-1, c - 1, k, 4)
    return clip_boxes(decode(deltas, priors[idx], variances)), scores


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
    probs = torch.softmax(pred.cls_logits.float(), dim=-1)  # (B, A, C)
    deltas = pred.box_deltas.float()
    return _candidates(probs, deltas, priors.to(deltas.device, torch.float32), score_thresh, pre_nms_top_k, variances)


def _candidates(
    probs: Tensor,
    deltas: Tensor,
    priors: Tensor,
    score_thresh: float,
    pre_nms_top_k: int,
    variances: tuple[float, float],
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`select_candidates` from float32 probabilities, deltas and priors."""
    cand, scores = class_candidates(probs, deltas, priors, min(pre_nms_top_k, probs.shape[1]), variances)
    valid = scores > score_thresh
    # Candidates are sorted, so the valid ones form a prefix: trim to the longest prefix in the batch.
    k = int(valid.sum(-1).max()) if valid.numel() else 0
    return cand[..., :k, :], scores[..., :k], valid[..., :k]


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

    The result is that of the per-class pipeline in the module docstring, computed without running NMS over every
    candidate. Greedy NMS decides a candidate's fate from the higher-scored candidates of its class alone, so the
    ``M`` best candidates of an image (over all classes) can be resolved on their own; once ``top_k`` of them
    survive, nothing scored lower can enter the output. The image's best ``M = 4 top_k`` (class, prior) pairs are
    resolved first; the images that did not reach ``top_k`` get a longer shortlist, scaled by the share of pairs
    that survived (at least ``2 M``), until it would hold every candidate, when they go through all per-class
    candidates. With ``21`` classes this is about 40x fewer IoU pairs in the
    common case and an image-wide top-k instead of one per class.

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
    b, a, c = pred.cls_logits.shape
    if c < 2:
        raise ValueError(f"need at least 2 classes (background + 1), got {c}")
    if top_k < 1 or pre_nms_top_k < 1:
        raise ValueError(f"top_k and pre_nms_top_k must be positive, got {top_k} and {pre_nms_top_k}")
    probs = torch.softmax(pred.cls_logits.float(), dim=-1)  # (B, A, C)
    deltas = pred.box_deltas.float()
    priors = priors.to(deltas.device, torch.float32)
    kw = {"score_thresh": score_thresh, "nms_thresh": nms_thresh, "pre_nms_top_k": pre_nms_top_k, "top_k": top_k}
    union = (c - 1) * min(pre_nms_top_k, a)  # the most candidates per image that enter NMS
    out: list[Detections | None] = [None] * b
    todo = torch.arange(b)
    m = 4 * top_k
    while todo.numel():
        if m >= union:
            dets = _per_class(probs[todo], deltas[todo], priors, variances=variances, **kw)
            for i, det in zip(todo.tolist(), dets, strict=True):
                out[i] = det
            break
        done, kept = _best_pairs(probs[todo], deltas[todo], priors, m, variances=variances, **kw)
        short, fewest = [], top_k
        for i, det, n_kept in zip(todo.tolist(), done, kept, strict=True):
            if det is None:
                short.append(i)
                fewest = min(fewest, n_kept)
            else:
                out[i] = det
        todo = torch.tensor(short, dtype=torch.int64)
        # Next shortlist: scaled by the survival rate seen (with a margin), at least twice as long.
        m = max(2 * m, math.ceil(1.25 * m * top_k / max(fewest, 1)))
    return out  # type: ignore[return-value]


def _best_pairs(
    probs: Tensor,
    deltas: Tensor,
    priors: Tensor,
    m: int,
    *,
    score_thresh: float,
    nms_thresh: float,
    pre_nms_top_k: int,
    top_k: int,
    variances: tuple[float, float],
) -> tuple[list[Detections | None], list[int]]:
    """Resolve each image's ``m`` best (prior, class) pairs.

    Returns:
        Per image its detections, or None where more pairs are needed; and how many of its pairs survived NMS.
    """
    n, a, c = probs.shape
    k = min(pre_nms_top_k, a)
    # The m best pairs lie among the m priors with the best foreground maximum (a prior with a pair scoring s has a
    # maximum >= s, and at most m priors have a maximum >= the m-th best pair), so two small top-k replace one over
    # all A * C pairs.
    fg = probs[..., 1:]
    best = fg.amax(-1)  # (n, A)
    mp = min(m, a)
    top_priors = best.topk(mp, dim=1).indices  # (n, mp)
    sub = fg.gather(1, top_priors[..., None].expand(n, mp, c - 1))  # (n, mp, C-1)
    scores, j = sub.reshape(n, -1).topk(m, dim=1)  # (n, m), sorted
    prior = top_priors.gather(1, torch.div(j, c - 1, rounding_mode="floor"))
    labels = j % (c - 1) + 1
    valid = scores > score_thresh
    onehot = torch.nn.functional.one_hot(labels, c) * valid[..., None]  # (n, m, C)
    rank = onehot.cumsum(1).gather(2, labels[..., None]).squeeze(2) - 1  # position within its class
    counts = onehot.sum(1)  # (n, C) valid pairs of each class among the m
    enter = valid & (rank < k)  # the class's pre_nms_top_k cap
    length = max(1, int(counts.max().clamp(max=k)))
    d = deltas.gather(1, prior[..., None].expand(n, m, 4))
    boxes = clip_boxes(decode(d.reshape(-1, 4), priors[prior.reshape(-1)], variances)).view(n, m, 4)
    bi, mi = enter.nonzero(as_tuple=True)
    gi, ri = labels[bi, mi] - 1, rank[bi, mi]
    padded = boxes.new_zeros(n, c - 1, length, 4)  # per-class groups in score order
    padded_valid = torch.zeros(n, c - 1, length, dtype=torch.bool, device=boxes.device)
    padded[bi, gi, ri] = boxes[bi, mi]
    padded_valid[bi, gi, ri] = True
    keep = torch.zeros_like(valid)
    keep[bi, mi] = nms_padded(padded, padded_valid, nms_thresh)[bi, gi, ri]
    kept = keep.sum(1)
    # Exhausted: every candidate above the threshold was among the m, or every class already hit its cap.
    exhausted = ~valid[:, -1] | (counts[:, 1:] >= k).all(1)
    result: list[Detections | None] = []
    for i in range(n):
        if int(kept[i]) < top_k and not bool(exhausted[i]):
            result.append(None)
            continue
        sel = keep[i].nonzero().squeeze(1)[:top_k]
        result.append(Detections(boxes[i, sel], scores[i, sel], labels[i, sel]))
    return result, kept.tolist()


def _per_class(
    probs: Tensor,
    deltas: Tensor,
    priors: Tensor,
    *,
    score_thresh: float,
    nms_thresh: float,
    pre_nms_top_k: int,
    top_k: int,
    variances: tuple[float, float],
) -> list[Detections]:
    """The plain batched pipeline: every class's candidates through NMS, then the image-wide ``top_k``."""
    b = probs.shape[0]
    cand, scores, valid = _candidates(probs, deltas, priors, score_thresh, pre_nms_top_k, variances)
    k = scores.shape[-1]
    keep = nms_padded(cand, valid, nms_thresh)  # (B, C-1, K)
    flat = torch.where(keep, scores, -1.0).reshape(b, -1)  # (B, C-1, K) -> (B, (C-1)*K)
    n = min(top_k, flat.shape[1])
    top, idx = flat.topk(n, dim=1)  # (B, n)
    boxes = torch.gather(cand.reshape(b, -1, 4), 1, idx.unsqueeze(-1).expand(b, n, 4))  # (B, n, 4)
    labels = torch.div(idx, max(k, 1), rounding_mode="floor") + 1
    counts = keep.reshape(b, -1).sum(1).clamp(max=n).tolist()
    return [Detections(boxes[i, :m], top[i, :m], labels[i, :m]) for i, m in enumerate(counts)]
