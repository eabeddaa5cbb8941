"""Greedy non-maximum suppression in plain torch, exact and batched.

Greedy NMS keeps box ``i`` (boxes sorted by descending score) if and only if no *kept* box ``j < i`` overlaps
it with IoU above the threshold. Written as ``keep = valid & ~any_j(S[i, j] & keep[j])`` with the strictly
lower-triangular suppression matrix ``S``, this is a triangular system with exactly one solution. We solve it
by fixed-point iteration from ``keep = valid``: each sweep fixes at least one more leading box, and the
iteration stops as soon as ``keep`` no longer changes, which (the solution being unique) is the greedy
result. The number of sweeps is the length of the longest suppression chain, usually a handful, and each sweep
is one batched matrix-vector product over all images and classes at once: no Python loop over boxes or classes.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["batched_nms", "nms", "nms_padded", "suppression_matrix"]


def suppression_matrix(boxes: Tensor, iou_threshold: float) -> Tensor:
    """``Tensor[N, K, K]`` bool: ``S[n, i, j]`` is True where ``j < i`` and ``IoU(i, j) > iou_threshold``.

    Computed as ``inter (1 + t) > t (area_i + area_j)`` (no division), in chunks of groups sized to stay in
    cache, which on a CPU is several times faster than materialising the float IoU matrix at once.

    Args:
        boxes: ``Tensor[N, K, 4]`` xyxy.
        iou_threshold: ``t``.
    """
    n, k, _ = boxes.shape
    out = torch.empty(n, k, k, dtype=torch.bool, device=boxes.device)
    lower = torch.ones(k, k, dtype=torch.bool, device=boxes.device).tril_(-1)
    chunk = max(1, (1 << 18) // max(k * k, 1))
    for s in range(0, n, chunk):
        b = boxes[s : s + chunk]
        x1, y1, x2, y2 = b.unbind(-1)  # (n', K) each
        area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
        w = torch.minimum(x2[:, :, None], x2[:, None, :]).sub_(torch.maximum(x1[:, :, None], x1[:, None, :]))
        h = torch.minimum(y2[:, :, None], y2[:, None, :]).sub_(torch.maximum(y1[:, :, None], y1[:, None, :]))
        inter = w.clamp_(min=0).mul_(h.clamp_(min=0))  # (n', K, K)
        union_t = (area[:, :, None] + area[:, None, :]).mul_(iou_threshold)
        torch.logical_and(inter.mul_(1.0 + iou_threshold) > union_t, lower, out=out[s : s + chunk])
    return out


def nms_padded(boxes: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS over independent groups of candidates already sorted by descending score.

    Args:
        boxes: ``Tensor[..., K, 4]`` xyxy, sorted by descending score within each group.
        valid: ``Tensor[..., K]`` bool; invalid candidates are neither kept nor suppress anything.
        iou_threshold: a box is suppressed by a kept higher-scored box when their IoU is strictly greater.

    Returns:
        ``Tensor[..., K]`` bool, True for the kept candidates.
    """
    k = boxes.shape[-2]
    if k == 0 or valid.numel() == 0:
        return valid.clone()
    lead = boxes.shape[:-2]
    boxes = boxes.reshape(-1, k, 4)  # (..., K, 4) -> (N, K, 4)
    valid = valid.reshape(-1, k)  # (..., K) -> (N, K)
    # Effective length of each group: one past its last valid candidate. Groups are solved in buckets of similar
    # length, so the work is about sum(k_g^2) rather than N * K^2 when a few groups are long and most are short.
    length = (valid * torch.arange(1, k + 1, device=valid.device)).amax(1)  # (N,)
    keep = torch.zeros_like(valid)
    lo = 0
    for hi in (*_BUCKETS, k):
        hi = min(hi, k)
        if hi <= lo:
            continue
        rows = ((length > lo) & (length <= hi)).nonzero().squeeze(1)
        if rows.numel():
            keep[rows, :hi] = _nms_dense(boxes[rows, :hi], valid[rows, :hi], iou_threshold)
        lo = hi
    return keep.reshape(*lead, k)


_BUCKETS = (8, 32, 96)


def _nms_dense(boxes: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """:func:`nms_padded` on ``boxes Tensor[N, K, 4]``, ``valid Tensor[N, K]`` without bucketing."""
    k = boxes.shape[1]
    keep = valid.clone()
    sup = suppression_matrix(boxes, iou_threshold)  # (N, K, K)
    sup &= keep[:, None, :]  # invalid candidates suppress nothing
    # Only groups with at least one possible suppression need sweeps.
    active = sup.flatten(1).any(1).nonzero().squeeze(1)
    if active.numel():
        s, v = sup[active], keep[active]
        cur = v
        for _ in range(k):
            nxt = v & ~(s & cur[:, None, :]).any(-1)  # one Jacobi sweep of the triangular system
            if torch.equal(nxt, cur):
                break
            cur = nxt
        keep[active] = cur
    return keep


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS of one set of boxes (torchvision.ops.nms semantics).

    Args:
        boxes: ``Tensor[N, 4]`` xyxy.
        scores: ``Tensor[N]``.
        iou_threshold: suppress boxes whose IoU with a kept higher-scored box is strictly greater.

    Returns:
        ``Tensor[M]`` int64 indices of the kept boxes, by descending score.
    """
    return batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.int64), iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS applied independently within each group ``idxs`` (e.g. each class).

    The boxes are sorted by (group, descending score) and laid out as a padded ``[groups, K_max]`` array, so
    memory grows with the size of the largest group squared, not with ``N`` squared.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy.
        scores: ``Tensor[N]``.
        idxs: ``Tensor[N]`` int64 group of each box.
        iou_threshold: IoU above which a lower-scored box of the same group is suppressed.

    Returns:
        ``Tensor[M]`` int64 indices of the kept boxes, by descending score.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(idxs[order], stable=True).indices]  # by group, then by descending score
    groups, counts = torch.unique_consecutive(idxs[order], return_counts=True)
    k_max = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    g = torch.repeat_interleave(torch.arange(groups.numel(), device=boxes.device), counts)  # (N,)
    pos = torch.arange(n, device=boxes.device) - starts[g]  # rank of each box in its group
    padded = boxes.new_zeros(groups.numel(), k_max, 4)
    valid = torch.zeros(groups.numel(), k_max, dtype=torch.bool, device=boxes.device)
    padded[g, pos] = boxes[order]
    valid[g, pos] = True
    keep = nms_padded(padded, valid, iou_threshold)[g, pos]  # back to the sorted order, (N,)
    kept = order[keep]
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]
