"""From raw predictions to detections (the inference half of ssd.pytorch's ``Detect``), vectorised.

Per image: softmax over classes; decode the offsets against the priors; clip to [0, 1]; for each class >= 1 keep
the scores above ``score_thresh``, the ``pre_nms_top_k`` best of them, greedy NMS at ``nms_thresh``; finally the
``top_k`` best detections over all classes. All images and classes are processed in one batched pass.

:func:`postprocess` has two strategies with the same result: the reference ``"per_class"`` (the pipeline above as
written, :func:`_per_class`, first in this module) and the accelerated ``"shortlist"`` (the default; everything
below :func:`_shortlist`), which resolves each image's best-scored candidates first and stops once ``top_k`` survive.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from multibox.boxes import DEFAULT_VARIANCES, clip_boxes, decode
from multibox.nms import nms_padded
from multibox.structures import Detections, Prediction

__all__ = ["STRATEGIES", "class_candidates", "postprocess", "select_candidates"]

#: The strategies of :func:`postprocess`: the reference first, then the accelerated one.
STRATEGIES = ("per_class", "shortlist")


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
    probs = _class_major_softmax(pred.cls_logits)  # (B, A, C), the scores postprocess ranks
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


def _class_major_softmax(logits: Tensor) -> Tensor:
    """``softmax(logits, -1)`` in float32 for ``logits Tensor[B, A, C]``, stored class-major (a ``[B, C, A]`` buffer).

    With a few classes on the innermost axis, reductions over classes run slower than over an outer axis, so the
    scores are transposed once (one copy, which the float32 conversion needs anyway); the per-prior maximum and the
    per-class top-k that follow then read unit-stride rows.

    The exponential is taken as ``2 ** (x log2(e))``: torch's float32 ``exp`` runs slower on a CPU than its ``exp2``
    (``benchmarks/bench_primitives.py``), and the extra rounding of the product changes a score by about
    ``1e-7 |x - max|`` relative.
    """
    b, a, c = logits.shape
    x = torch.empty(b, c, a, dtype=torch.float32, device=logits.device)  # class-major
    if logits.dtype == torch.float32:
        torch.mul(logits.transpose(1, 2), _LOG2E, out=x)  # the transposing copy and the scaling in one pass
    else:  # scale in float32, not in the logits' half precision
        x.copy_(logits.transpose(1, 2)).mul_(_LOG2E)
    x -= x.amax(1, keepdim=True)
    x.exp2_()
    x /= x.sum(1, keepdim=True)
    return x.transpose(1, 2)


_LOG2E = 1.0 / math.log(2.0)


def postprocess(
    pred: Prediction,
    priors: Tensor,
    *,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    pre_nms_top_k: int = 200,
    top_k: int = 200,
    variances: tuple[float, float] = DEFAULT_VARIANCES,
    strategy: str = "shortlist",
) -> list[Detections]:
    """Turn a batch of raw predictions into detections.

    Two strategies give the same detections (to rounding; the tests hold both to one loop reference):

    - ``"per_class"``, the reference: every class's ``pre_nms_top_k`` candidates of every image go through NMS
      in one batched pass, then the image-wide ``top_k`` (:func:`_per_class`);
    - ``"shortlist"`` (the default), the accelerated path: the same result without running NMS over every
      candidate (:func:`_shortlist`, below).

    The shortlist: greedy NMS decides a candidate's fate from the higher-scored candidates of its class alone, so the
    ``M`` best candidates of an image (over all classes) can be resolved on their own; once ``top_k`` of them
    survive, nothing scored lower can enter the output. Each image's best ``M = 8 top_k`` (class, prior) pairs are
    listed once; their first ``4 top_k`` are resolved, and an image short of ``top_k`` survivors resolves a longer
    prefix, sized by its survival rate, with only the new pairs and the survivors of the shorter prefix entering
    NMS. Images still short after all ``M`` get a longer list (at least ``2 M``), until it would hold every
    candidate, when they go through all per-class candidates. With ``21`` classes this is many times fewer IoU
    pairs in the common case, and one image-wide selection of pairs (:func:`_top_pairs`) instead of a top-k per
    class.

    Args:
        pred: ``Prediction(cls_logits [B, A, C], box_deltas [B, A, 4])``.
        priors: ``Tensor[A, 4]`` cxcywh.
        score_thresh: keep class scores strictly above this (0.01 as ssd.pytorch's evaluation).
        nms_thresh: suppress a box whose IoU with a kept higher-scored box of its class is strictly greater.
        pre_nms_top_k: candidates per class entering NMS.
        top_k: detections per image over all classes.
        variances: the box-coding variances.
        strategy: ``"shortlist"`` or ``"per_class"`` (see above).

    Returns:
        One :class:`~multibox.structures.Detections` per image (boxes xyxy in [0, 1]), sorted by score.
    """
    c = pred.cls_logits.shape[-1]
    if c < 2:
        raise ValueError(f"need at least 2 classes (background + 1), got {c}")
    if top_k < 1 or pre_nms_top_k < 1:
        raise ValueError(f"top_k and pre_nms_top_k must be positive, got {top_k} and {pre_nms_top_k}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown post-processing strategy {strategy!r}; use one of {list(STRATEGIES)}")
    probs = _class_major_softmax(pred.cls_logits)  # (B, A, C)
    deltas = pred.box_deltas.float()
    priors = priors.to(deltas.device, torch.float32)
    kw = {"score_thresh": score_thresh, "nms_thresh": nms_thresh, "pre_nms_top_k": pre_nms_top_k, "top_k": top_k}
    if strategy == "per_class":
        return _per_class(probs, deltas, priors, variances=variances, **kw)
    return _shortlist(probs, deltas, priors, variances=variances, **kw)


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


# ---------------------------------------------------------------------- the accelerated path: shortlists


def _shortlist(
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
    """:func:`postprocess`'s ``"shortlist"`` strategy (described there) on float32 class-major probabilities."""
    b, a, c = probs.shape
    kw = {"score_thresh": score_thresh, "nms_thresh": nms_thresh, "pre_nms_top_k": pre_nms_top_k, "top_k": top_k}
    union = (c - 1) * min(pre_nms_top_k, a)  # the most candidates per image that enter NMS
    out: list[Detections | None] = [None] * b
    todo = torch.arange(b)
    m = 8 * top_k
    while todo.numel():
        # The images still to do (no copy while that is all of them).
        p, d = (probs, deltas) if todo.numel() == b else (probs[todo], deltas[todo])
        if m >= union:
            dets = _per_class(p, d, priors, variances=variances, **kw)
            for i, det in zip(todo.tolist(), dets, strict=True):
                out[i] = det
            break
        done, kept = _best_pairs(p, d, priors, m, variances=variances, **kw)
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
    """Resolve each image's ``m`` best (prior, class) pairs, a growing prefix at a time, until ``top_k`` survive.

    Returns:
        Per image its detections, or None where more pairs are needed; and how many of its pairs survived NMS.
    """
    n, a, c = probs.shape
    k = min(pre_nms_top_k, a)
    scores, prior, labels = _top_pairs(probs, m)
    valid = scores > score_thresh  # a prefix of each row
    runs = _class_runs(labels, valid, c)
    enter = valid & (runs.rank < k)  # the class's pre_nms_top_k cap
    flat = (prior + torch.arange(n, device=prior.device)[:, None] * a).reshape(-1)
    d = deltas.reshape(-1, 4).index_select(0, flat)
    boxes = clip_boxes(decode(d, priors.index_select(0, prior.reshape(-1)), variances)).view(n, m, 4)
    # Greedy NMS decides a pair from the higher-scored kept pairs of its class, so a prefix of the pairs can be
    # resolved alone, and a longer prefix only needs the kept pairs of the shorter one besides its new pairs.
    pos = torch.arange(m, device=probs.device)
    keep = torch.zeros_like(valid)
    rows = torch.arange(n, device=probs.device)  # the images still short of top_k
    lo, hi = 0, min(m, 4 * top_k)
    while True:
        new = enter[rows] & (pos >= lo) & (pos < hi)
        keep[rows] = _nms_pairs(boxes[rows], runs.order[rows], keep[rows] | new, runs.group[rows], nms_thresh, c)
        kept = keep[rows].sum(1)
        # Settled: top_k kept, or no valid pair beyond the prefix.
        short = (kept < top_k) & valid[rows, hi - 1]
        if hi == m or not bool(short.any()):
            break
        rows, fewest = rows[short], max(int(kept[short].min()), 1)
        # Next prefix: what the image furthest behind needs at its survival rate so far (with a margin).
        lo, hi = hi, min(m, hi + max(top_k, math.ceil(1.25 * (top_k - fewest) * hi / fewest)))
    kept_all = keep.sum(1)
    # Exhausted: every candidate above the threshold was among the m, or every class already hit its cap.
    exhausted = ~valid[:, -1] | (runs.counts[:, 1:] >= k).all(1)
    # Every image's first top_k kept pairs in one gather (pairs are in score order), split per image.
    take = keep & (keep.cumsum(1) <= top_k)
    ri, pi = take.nonzero(as_tuple=True)
    sizes = take.sum(1).tolist()
    parts = zip(*(t.split(sizes) for t in (boxes[ri, pi], scores[ri, pi], labels[ri, pi])), strict=True)
    result: list[Detections | None] = []
    for n_kept, done, part in zip(kept_all.tolist(), exhausted.tolist(), parts, strict=True):
        result.append(Detections(*part) if n_kept >= top_k or done else None)
    return result, kept_all.tolist()


def _top_pairs(probs: Tensor, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each image's ``m`` best foreground (prior, class) pairs, for ``m < (C - 1) A``.

    Args:
        probs: ``Tensor[N, A, C]`` (faster as the class-major view :func:`_class_major_softmax` returns).

    Returns:
        ``scores``, ``prior`` and ``labels``, each ``Tensor[N, m]``, by descending score.
    """
    n, a, c = probs.shape
    fg = probs.transpose(1, 2)[:, 1:]  # (N, C-1, A)
    # The m best pairs lie among the m priors with the best foreground maximum (a prior with a pair scoring s has a
    # maximum >= s, and at most m priors have a maximum >= the m-th best pair), so two small selections replace one
    # over all A * C pairs.
    mp = min(m, a)
    best, top_priors = fg.amax(1).topk(mp, dim=1, sorted=False)  # (N, mp), a set: the pairs are ordered below
    sub = fg.gather(2, top_priors[:, None, :].expand(n, c - 1, mp))  # (N, C-1, mp)
    j = None
    if mp == m:
        # The pairs scoring at least the m-th best prior maximum: at least m (each top prior's maximum), and every
        # one of the m best. Usually little more than m, so sorting them beats a top-k over all (C - 1) m.
        cand = sub >= best.amin(1, keepdim=True)[..., None]
        counts = cand.sum((1, 2))
        width = int(counts.max())
        if m <= int(counts.min()) and width <= 2 * m:  # not so with NaN scores, or many ties at the threshold
            ri, ci, pi = cand.nonzero(as_tuple=True)
            # One int64 key per pair: the score descending (a non-negative float's bits order as integers), then
            # the pair's prior-major number, so that tied scores spread over the priors.
            key = (_MAX_BITS - sub[ri, ci, pi].view(torch.int32)).long() << 32 | (pi * (c - 1) + ci)
            col = torch.arange(ri.numel(), device=ri.device) - (counts.cumsum(0) - counts)[ri]
            packed = torch.full((n, width), torch.iinfo(torch.int64).max, dtype=torch.int64, device=ri.device)
            packed[ri, col] = key
            key = packed.sort(dim=1).values[:, :m]
            scores = (_MAX_BITS - (key >> 32)).int().view(torch.float32)
            j = key & 0xFFFFFFFF
    if j is None:  # prior-major, as the keys
        scores, j = sub.transpose(1, 2).reshape(n, -1).topk(m, dim=1)
    prior = top_priors.gather(1, torch.div(j, c - 1, rounding_mode="floor"))
    return scores, prior, j % (c - 1) + 1


_MAX_BITS = 0x7FFFFFFF  # above every finite float32's bit pattern as an int32


class _ClassRuns(NamedTuple):
    """The masked pairs of each row grouped by class (``N`` rows of ``M`` pairs, ``c`` classes)."""

    order: Tensor  # [N, M] positions sorted by class, then position; unmasked pairs last
    group: Tensor  # [N, M] the class of each sorted entry (c for the unmasked)
    rank: Tensor  # [N, M] each pair's position among the masked pairs of its class (meaningful where masked)
    counts: Tensor  # [N, c] masked pairs per class


def _class_runs(labels: Tensor, mask: Tensor, c: int) -> _ClassRuns:
    """Group the masked pairs (``labels Tensor[N, M]`` in ``[0, c)``, ``mask Tensor[N, M]``) by class, in row order."""
    m = labels.shape[1]
    pos = torch.arange(m, device=labels.device)
    key, order = (torch.where(mask, labels, c) * m + pos).sort(1)  # by class, then row order; unmasked last
    group = torch.div(key, m, rounding_mode="floor")
    counts, start = _run_counts(group, (group < c).long(), c)  # start: where each class's run begins in the row
    rank = torch.empty_like(order).scatter_(1, order, pos - start.gather(1, group))
    return _ClassRuns(order, group, rank, counts[:, :c])


def _run_counts(group: Tensor, weight: Tensor, c: int) -> tuple[Tensor, Tensor]:
    """Per row of class-sorted entries (``group Tensor[N, M]`` in ``[0, c]``), each class's total ``weight`` and the
    total of the classes before it (``Tensor[N, c + 1]`` each)."""
    counts = torch.zeros(group.shape[0], c + 1, dtype=torch.int64, device=group.device).scatter_add_(1, group, weight)
    return counts, counts.cumsum(1) - counts


def _nms_pairs(boxes: Tensor, order: Tensor, mask: Tensor, group: Tensor, nms_thresh: float, c: int) -> Tensor:
    """Greedy NMS per class among the masked pairs of each row (``boxes Tensor[N, M, 4]`` in score order).

    Args:
        order, group: the rows' :class:`_ClassRuns` for a mask that contains ``mask``.

    Returns:
        ``Tensor[N, M]`` bool, the kept pairs.
    """
    n = mask.shape[0]
    sel = mask.gather(1, order).long()  # (N, M), 1 for the pairs to resolve, in class order
    # Each selected pair's place among the selected pairs of its (row, class): the count of selected entries
    # before it in the sorted row, less the count before its class's run.
    rank = (sel.cumsum(1) - sel) - _run_counts(group, sel, c)[1].gather(1, group)
    ri, ei = sel.nonzero(as_tuple=True)
    g, r, src = ri * c + group[ri, ei], rank[ri, ei], order[ri, ei]
    width = int(r.max()) + 1 if r.numel() else 0
    padded = boxes.new_zeros(n * c, width, 4)  # one row per (image, class), its pairs in score order
    valid = torch.zeros(n * c, width, dtype=torch.bool, device=mask.device)
    padded[g, r] = boxes[ri, src]
    valid[g, r] = True
    keep = torch.zeros_like(mask)
    keep[ri, src] = nms_padded(padded, valid, nms_thresh)[g, r]
    return keep
