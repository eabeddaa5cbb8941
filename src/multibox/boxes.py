"""Pure tensor functions on boxes: format conversion, area, IoU, clipping, SSD encode/decode.

Formats are in the names: ``xyxy`` is ``(x1, y1, x2, y2)``, ``cxcywh`` is ``(cx, cy, w, h)``.
Every function works on any leading batch dimensions (``Tensor[..., 4]``) unless said otherwise,
and on pixels or on [0, 1] coordinates alike.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_VARIANCES",
    "box_area",
    "box_iou",
    "clip_boxes",
    "cxcywh_to_xyxy",
    "decode",
    "encode",
    "is_valid_box",
    "xyxy_to_cxcywh",
]

#: The variances of the SSD box coding (Caffe SSD's ``variance: 0.1, 0.1, 0.2, 0.2``; ssd.pytorch ``cfg['variance']``).
DEFAULT_VARIANCES: tuple[float, float] = (0.1, 0.2)

# exp(x) for width/height is clamped at this value: log(1000 / 16), as torchvision's BoxCoder does, so that an
# untrained head cannot produce inf boxes (and NaN IoUs) downstream.
_MAX_LOG_SCALE = math.log(1000.0 / 16)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """Convert ``Tensor[..., 4]`` corners ``(x1, y1, x2, y2)`` to ``(cx, cy, w, h)``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert ``Tensor[..., 4]`` ``(cx, cy, w, h)`` to corners ``(x1, y1, x2, y2)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``Tensor[..., 4]`` xyxy boxes as ``Tensor[...]``; inverted boxes have area 0."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def is_valid_box(boxes: Tensor) -> Tensor:
    """``Tensor[...]`` bool: True where an xyxy box has positive width and height and finite corners."""
    return torch.isfinite(boxes).all(-1) & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union of xyxy boxes.

    Args:
        boxes1: ``Tensor[..., N, 4]`` xyxy.
        boxes2: ``Tensor[..., M, 4]`` xyxy, with leading dimensions broadcastable against ``boxes1``'s.

    Returns:
        ``Tensor[..., N, M]``. A pair whose union is empty (two degenerate boxes) has IoU 0, never NaN.
        Empty inputs give an empty matrix of the right shape.
    """
    # Per-coordinate planes, made contiguous: broadcasting unit-stride planes vectorises, strided columns do not.
    a1, b1, a2, b2 = (t.contiguous().unsqueeze(-1) for t in boxes1.unbind(-1))  # (..., N, 1) each
    c1, d1, c2, d2 = (t.contiguous().unsqueeze(-2) for t in boxes2.unbind(-1))  # (..., 1, M) each
    area1 = (a2 - a1).clamp(min=0) * (b2 - b1).clamp(min=0)  # (..., N, 1)
    area2 = (c2 - c1).clamp(min=0) * (d2 - d1).clamp(min=0)  # (..., 1, M)
    inter = torch.minimum(a2, c2).sub_(torch.maximum(a1, c1)).clamp_(min=0)
    inter = inter.mul_(torch.minimum(b2, d2).sub_(torch.maximum(b1, d1)).clamp_(min=0))  # (..., N, M)
    # inter <= min(area1, area2) holds in floating point too, so union >= inter >= 0, and union == 0 only for two
    # empty boxes, where inter == 0 as well: clamping the union away from 0 gives IoU 0 there, never NaN.
    union = (area1 + area2).sub_(inter)
    return inter / union.clamp_(min=torch.finfo(union.dtype).tiny)


def clip_boxes(boxes: Tensor, width: float = 1.0, height: float = 1.0) -> Tensor:
    """Clip xyxy ``Tensor[..., 4]`` into ``[0, width] x [0, height]`` (defaults: the unit square)."""
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def encode(matched: Tensor, priors: Tensor, variances: tuple[float, float] = DEFAULT_VARIANCES) -> Tensor:
    """Encode ground-truth boxes as offsets from their priors (SSD paper eq. 2, with Caffe's variances).

    Args:
        matched: ``Tensor[..., A, 4]`` xyxy ground truth matched to each prior, in the priors' coordinates.
        priors: ``Tensor[A, 4]`` (or broadcastable) cxcywh default boxes.
        variances: ``(center, size)`` variances; the offsets are divided by them.

    Returns:
        ``Tensor[..., A, 4]`` targets ``((gx - px) / (pw v0), (gy - py) / (ph v0), log(gw / pw) / v1,
        log(gh / ph) / v1)``.
    """
    g = xyxy_to_cxcywh(matched)
    center = (g[..., :2] - priors[..., :2]) / (priors[..., 2:] * variances[0])
    size = torch.log(g[..., 2:] / priors[..., 2:]) / variances[1]
    return torch.cat((center, size), dim=-1)


def decode(deltas: Tensor, priors: Tensor, variances: tuple[float, float] = DEFAULT_VARIANCES) -> Tensor:
    """Invert :func:`encode`: offsets ``Tensor[..., A, 4]`` and cxcywh priors ``Tensor[A, 4]`` to xyxy boxes.

    The log-scale terms are clamped at ``log(1000/16)`` before ``exp`` so that wild predictions stay finite.
    """
    center = priors[..., :2] + deltas[..., :2] * variances[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp((deltas[..., 2:] * variances[1]).clamp(max=_MAX_LOG_SCALE))
    return torch.cat((center - size / 2, center + size / 2), dim=-1)
