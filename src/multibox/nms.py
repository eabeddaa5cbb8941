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

__all__ = ["batched_nms", "nms", "nms_padded", "overlaps", "suppression_matrix"]


def overlaps(rows: Tensor, cols: Tensor, iou_threshold: float, cols_valid: Tensor | None = None) -> Tensor:
    """``Tensor[N, R, C]`` bool: ``IoU(rows[n, i], cols[n, j]) > iou_threshold``, for boxes of positive area.

    Computed as ``inter > (t / (1 + t)) (area_i + area_j)`` (no division, no union), in chunks of groups sized to
    stay in cache; on a CPU this is several times faster than materialising the float IoU matrix. Only one of the
    two overlap extents is clamped (a negative height times a positive width is negative, which never beats the
    non-negative right-hand side), and a pair of empty boxes is never above any threshold (``0 > 0`` is false).

    Args:
        rows: ``Tensor[N, R, 4]`` xyxy.
        cols: ``Tensor[N, C, 4]`` xyxy.
        iou_threshold: ``t``.
        cols_valid: optional ``Tensor[N, C]`` bool; an invalid column overlaps nothing (its area counts as infinite).
    """
    n, r, _ = rows.shape
    c = cols.shape[1]
    scale = iou_threshold / (1.0 + iou_threshold)
    # Unit-stride planes (x, y) x (N, R) of the low and high corners: the broadcasts below vectorise over them, and
    # each step handles x and y in one call.
    lo_r, hi_r = rows.float().permute(2, 0, 1).contiguous().view(2, 2, n, r).unbind(0)
    lo_c, hi_c = cols.float().permute(2, 0, 1).contiguous().view(2, 2, n, c).unbind(0)
    area_r = (hi_r - lo_r).clamp_(min=0).prod(0).mul_(scale)  # (N, R)
    area_c = (hi_c - lo_c).clamp_(min=0).prod(0).mul_(scale)
    if cols_valid is not None:
        area_c.masked_fill_(~cols_valid, float("inf"))
    out = torch.empty(n, r, c, dtype=torch.bool, device=rows.device)
    chunk = max(1, (1 << 18) // max(r * c, 1))
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        part = slice(None) if e - s == n else slice(s, e)
        ext = torch.minimum(hi_r[:, part, :, None], hi_c[:, part, None, :])  # (2, n, R, C) overlap extents
        ext.sub_(torch.maximum(lo_r[:, part, :, None], lo_c[:, part, None, :]))
        inter = ext[0].clamp_(min=0).mul_(ext[1])  # intersection (or a negative number where they do not overlap)
        torch.gt(inter, area_r[part, :, None] + area_c[part, None, :], out=out[part])
    return out


def suppression_matrix(
    boxes: Tensor, iou_threshold: float, valid: Tensor | None = None, columns: int | None = None
) -> Tensor:
    """``Tensor[N, K, K']`` bool: ``S[n, i, j]`` is True where ``j < i``, ``j`` is valid and ``IoU(i, j) > t``.

    Args:
        boxes: ``Tensor[N, K, 4]`` xyxy.
        iou_threshold: ``t`` (see :func:`overlaps` for how the test is computed).
        valid: optional ``Tensor[N, K]`` bool; invalid boxes suppress nothing.
        columns: ``K' >= K`` columns (the extra ones False), e.g. a multiple of 8 for :func:`_nms_dense`'s words.
    """
    k = boxes.shape[1]
    kc = k if columns is None else columns
    if kc < k:
        raise ValueError(f"columns ({kc}) must be at least the number of boxes ({k})")
    cols, cols_valid = _pad_invalid(boxes, valid, kc) if kc > k else (boxes, valid)
    return overlaps(boxes, cols, iou_threshold, cols_valid).tril_(-1)


def _pad_invalid(boxes: Tensor, valid: Tensor | None, size: int) -> tuple[Tensor, Tensor]:
    """``boxes Tensor[N, K, 4]`` and ``valid`` (None: all valid) padded to ``size`` with invalid zero boxes."""
    n, k, _ = boxes.shape
    real = torch.ones(n, k, dtype=torch.bool, device=boxes.device) if valid is None else valid
    pad = size - k
    return torch.nn.functional.pad(boxes.float(), (0, 0, 0, pad)), torch.nn.functional.pad(real, (0, pad), value=False)


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
        solve = _nms_dense if hi <= _BUCKETS[-1] else _nms_blocked
        if rows.numel() == length.numel():  # all groups in one bucket: no gather/scatter copies
            keep[:, :hi] = solve(boxes[:, :hi], valid[:, :hi], iou_threshold)
        elif rows.numel():
            keep[rows, :hi] = solve(boxes[rows, :hi], valid[rows, :hi], iou_threshold)
        lo = hi
    return keep.reshape(*lead, k)


_BUCKETS = (8, 32, 96)


def _nms_blocked(boxes: Tensor, valid: Tensor, iou_threshold: float, block: int = 32) -> Tensor:
    """:func:`nms_padded` for long groups, a block of candidates at a time, dropping what is already suppressed.

    The next ``block`` live candidates of every group are solved exactly among themselves (every earlier kept box has
    already removed what it overlaps), their kept boxes remove the later candidates they overlap, and the survivors
    are packed to the front for the next block. Where a few objects draw most candidates (a trained model), the
    first block removes most of a group and the work is about ``K x block`` pairs instead of ``K^2``.
    """
    n, k = valid.shape
    keep = torch.zeros_like(valid)
    index = torch.arange(k, device=valid.device).expand(n, k)  # original position of each current column
    cur, alive = boxes, valid
    while cur.shape[1]:
        b = min(block, cur.shape[1])
        kept = _nms_dense(cur[:, :b], alive[:, :b], iou_threshold)  # (N, b)
        keep.scatter_(1, index[:, :b], kept)  # positions are distinct within a row
        rest, alive, index = cur[:, b:], alive[:, b:], index[:, b:]
        if not rest.shape[1]:
            break
        hit = overlaps(rest, cur[:, :b], iou_threshold) & kept[:, None, :]  # (N, R, b)
        alive = alive & ~hit.any(-1)
        live = int(alive.sum(1).max())
        order = torch.sort((~alive).to(torch.uint8), dim=1, stable=True).indices[:, :live]  # live ones first
        cur = rest.gather(1, order[..., None].expand(n, live, 4))
        alive, index = alive.gather(1, order), index.gather(1, order)
    return keep


def _nms_dense(boxes: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """:func:`nms_padded` on ``boxes Tensor[N, K, 4]``, ``valid Tensor[N, K]`` without bucketing.

    The sweeps read the suppression matrix 8 entries at a time: its bool rows (padded to a multiple of 8) are
    viewed as int64 words, and ``any_j(S[i, j] & keep[j])`` becomes a word-wise AND with the packed ``keep``.
    """
    k = valid.shape[1]
    kp = -(-k // 8) * 8
    if kp > k:  # padded with invalid candidates, so that every row is a whole number of words
        boxes, valid = _pad_invalid(boxes, valid, kp)
    else:  # fresh strides: a one-row slice counts as contiguous but its row stride need not be a whole word
        valid = valid.clone(memory_format=torch.contiguous_format)
    sup = suppression_matrix(boxes, iou_threshold, valid=valid)  # (N, Kp, Kp), invalid columns False
    # Tracers (ONNX export runs this eagerly under the tracer) do not know dtype views: plain bools there.
    packed = not torch.jit.is_tracing()
    words = sup.view(torch.uint8).view(torch.int64) if packed else sup  # (N, Kp, Kp / 8) or (N, Kp, Kp)
    cur = valid
    for _ in range(k + 1):
        cur_words = cur.view(torch.uint8).view(torch.int64) if packed else cur
        nxt = valid & ~(words & cur_words[:, None, :]).any(-1)  # one Jacobi sweep of the triangular system
        if torch.equal(nxt, cur):
            break
        cur = nxt
    return cur[:, :k]


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
