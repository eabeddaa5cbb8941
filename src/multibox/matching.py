"""Matching default boxes to ground truth (SSD paper §2.2 "Matching strategy"), batched over images.

Every prior takes the ground-truth box it overlaps most; every ground-truth box is then forced onto the prior
that overlaps it most (the paper's "match each ground truth box to the default box with the best jaccard
overlap"), the later box winning when two want the same prior, as ssd.pytorch's loop does. A prior is
positive when its (possibly forced) IoU is at least the threshold; forced priors always are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from multibox.boxes import box_iou, cxcywh_to_xyxy, is_valid_box

__all__ = ["MatchResult", "match", "match_iou", "pad_targets"]


class MatchResult:
    """Per-prior assignment of a batch.

    Attributes:
        gt_index: ``Tensor[B, A]`` int64 index of the ground-truth box each prior is assigned to (0 where the
            image has none; meaningful only where ``positive``).
        iou: ``Tensor[B, A]`` IoU with that box; forced matches read 2.0 (as ssd.pytorch); -1 where no box.
        positive: ``Tensor[B, A]`` bool.
    """

    __slots__ = ("gt_index", "iou", "positive")

    def __init__(self, gt_index: Tensor, iou: Tensor, positive: Tensor) -> None:
        self.gt_index = gt_index
        self.iou = iou
        self.positive = positive


def match_iou(iou: Tensor, valid: Tensor, iou_threshold: float = 0.5) -> MatchResult:
    """Assign priors to ground truth from an IoU matrix.

    Args:
        iou: ``Tensor[B, G, A]`` IoU between the (padded) ground-truth boxes and the priors.
        valid: ``Tensor[B, G]`` bool; padding and unusable boxes are False and are never matched.
        iou_threshold: the positive threshold (0.5 in the paper).

    Returns:
        The :class:`MatchResult`.
    """
    b, g, a = iou.shape
    if g == 0:
        zeros = torch.zeros(b, a, dtype=torch.int64, device=iou.device)
        return MatchResult(zeros, torch.full((b, a), -1.0, device=iou.device), zeros.bool())
    iou = iou.masked_fill(~valid[:, :, None], -1.0)
    best_iou, best_gt = iou.max(dim=1)  # (B, A): each prior's best ground truth
    best_prior = iou.argmax(dim=2)  # (B, G): each ground truth's best prior
    # Force each valid GT onto its best prior; on collisions the highest GT index (the later one) wins.
    flat = (torch.arange(b, device=iou.device)[:, None] * a + best_prior).reshape(-1)  # (B*G,)
    src = torch.where(valid, torch.arange(g, device=iou.device).expand(b, g), -1).reshape(-1)
    forced = torch.full((b * a,), -1, dtype=torch.int64, device=iou.device)
    forced = forced.scatter_reduce(0, flat, src, reduce="amax").view(b, a)
    is_forced = forced >= 0
    gt_index = torch.where(is_forced, forced, best_gt)
    best_iou = torch.where(is_forced, torch.full_like(best_iou, 2.0), best_iou)
    return MatchResult(gt_index, best_iou, best_iou >= iou_threshold)


def pad_targets(
    targets: Sequence[tuple[Tensor, Tensor]], device: torch.device | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Stack per-image ``(boxes Tensor[G_i, 4], labels Tensor[G_i])`` into padded batch tensors.

    Returns:
        ``boxes Tensor[B, G, 4]`` float32, ``labels Tensor[B, G]`` int64 and ``valid Tensor[B, G]`` bool with
        ``G = max(1, max G_i)``; ``valid`` is False for padding and for boxes that are not finite with positive size.
    """
    b = len(targets)
    for i, (bx, lb) in enumerate(targets):
        n = int(bx.shape[0]) if bx.ndim else -1
        if bx.ndim != 2 or bx.shape[-1] != 4 or lb.shape != (n,):
            raise ValueError(
                f"target {i}: expected boxes [N, 4] and labels [N], got {tuple(bx.shape)} and {tuple(lb.shape)}"
            )
    g = max((int(t[0].shape[0]) for t in targets), default=1) or 1  # at least one (invalid) slot
    if b == 0:
        z = torch.zeros(0, g, device=device)
        return torch.zeros(0, g, 4, device=device), z.long(), z.bool()
    # One padding call per tensor instead of a Python loop of slice assignments.
    boxes = pad_sequence([t[0].to(device=device, dtype=torch.float32) for t in targets], batch_first=True)
    labels = pad_sequence([t[1].to(device=device, dtype=torch.int64) for t in targets], batch_first=True)
    if boxes.shape[1] < g:  # every image empty: keep the single padding slot
        boxes = torch.zeros(b, g, 4, dtype=torch.float32, device=boxes.device)
        labels = torch.zeros(b, g, dtype=torch.int64, device=boxes.device)
    lengths = torch.tensor([int(t[0].shape[0]) for t in targets], device=boxes.device)
    present = torch.arange(g, device=boxes.device) < lengths[:, None]
    return boxes, labels, present & is_valid_box(boxes)


def match(gt_boxes: Tensor, gt_valid: Tensor, priors: Tensor, iou_threshold: float = 0.5) -> MatchResult:
    """Match padded ground truth ``Tensor[B, G, 4]`` (xyxy, [0, 1]) to cxcywh ``priors Tensor[A, 4]``."""
    return match_iou(box_iou(gt_boxes, cxcywh_to_xyxy(priors)), gt_valid, iou_threshold)
