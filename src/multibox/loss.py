"""MultiBox loss (SSD paper §2.2 "Training objective", eq. 1-2, and "Hard negative mining").

``L = (L_conf + L_loc) / N`` with ``N`` the number of positive priors in the batch (at least 1):
smooth-L1 (beta 1) on the encoded offsets of the positives, and softmax cross-entropy on the positives plus,
per image, the ``min(3 num_pos, A - num_pos)`` negatives with the highest cross-entropy (3:1 mining).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from multibox.boxes import DEFAULT_VARIANCES, encode
from multibox.matching import match, pad_targets
from multibox.structures import Prediction

__all__ = [
    "MINING",
    "TARGET_TOLERANCE",
    "background_loss",
    "background_loss_reference",
    "hard_negative_mask",
    "multibox_loss",
]

#: How :func:`multibox_loss` ranks the negatives it mines: the reference first, then the accelerated one (the same
#: values to rounding; the tests hold both to one loop reference).
MINING = ("reference", "fast")

#: How far outside [0, 1] a target box corner may lie before :func:`multibox_loss` refuses it: room for rounding and
#: for unclipped boxes that overshoot the image by a fraction of a percent, while boxes in pixels (a mistake the loss
#: would otherwise train on, with a loss in the thousands) are far outside.
TARGET_TOLERANCE = 0.01

_LOG2E = 1.4426950408889634
_CHUNK = 32768  # priors per slice in background_loss


def background_loss_reference(cls_logits: Tensor) -> Tensor:
    """Per-prior background cross-entropy ``-log softmax(x)[..., 0]`` as written (no gradient), ``Tensor[...]``
    float32 for ``cls_logits Tensor[..., C]``: the reference for :func:`background_loss`."""
    with torch.no_grad():
        return -F.log_softmax(cls_logits.detach().float(), dim=-1)[..., 0]


def background_loss(cls_logits: Tensor) -> Tensor:
    """Per-prior background cross-entropy ``-log softmax(x)[..., 0]``, the hardness that negatives are mined by.

    Computed without gradient as ``log1p(sum_{c >= 1} exp(x_c - x_0))``: a subtraction, an exponential and a
    matrix-vector product that sums the class axis (a class axis of 21 is too short for the reduction kernels; the
    product reads it as rows), slice by slice; ``benchmarks/bench_primitives.py`` times it against ``log_softmax``
    over ``[B, A, C]``.
    Shifting by the background logit instead of the maximum keeps ``log1p``'s full relative precision for the very
    easy negatives, as ``log_softmax`` has. Priors where a class is more than about 88 ahead of the background (the
    exponential overflows) are recomputed with ``log_softmax``, so the result is exact to rounding for every input;
    non-finite logits give NaN.

    Args:
        cls_logits: ``Tensor[..., C]`` class logits, class 0 the background.

    Returns:
        ``Tensor[...]`` float32, >= 0.
    """
    with torch.no_grad():
        x = cls_logits.detach().float()
        c = x.shape[-1]
        rows = x.reshape(-1, c)
        others = torch.ones(c, dtype=x.dtype, device=x.device)
        others[0] = 0.0
        rest = torch.empty(rows.shape[0], dtype=x.dtype, device=x.device)  # sum_{c >= 1} exp(x_c - x_0)
        # In slices of _CHUNK priors through one reused buffer (2.75 MB at 21 classes, cache-resident) rather than
        # three passes over a fresh [B * A, C] tensor.
        buf = torch.empty(min(_CHUNK, rows.shape[0]), c, dtype=x.dtype, device=x.device)
        for i in range(0, rows.shape[0], _CHUNK):
            r = rows[i : i + _CHUNK]
            e = buf[: r.shape[0]]
            # exp as exp2 of a scaled argument: float32 exp2 is faster than exp on CPUs
            # (benchmarks/bench_primitives.py).
            torch.sub(r, r[:, :1], out=e).mul_(_LOG2E).exp2_()
            torch.mv(e, others, out=rest[i : i + _CHUNK])
        big = torch.finfo(x.dtype).max
        finite = not rest.numel() or float(rest.amax()) <= big  # False on overflow or NaN
        bad = None if finite else (~(rest <= big)).nonzero().squeeze(1)
        hard = rest.log1p_()
        if bad is not None:
            hard[bad] = -F.log_softmax(rows[bad], dim=-1)[:, 0]
        return hard.view(x.shape[:-1])


def hard_negative_mask(ce: Tensor, positive: Tensor, neg_pos_ratio: float = 3.0) -> Tensor:
    """Select, per image, the negatives with the highest loss.

    Args:
        ce: ``Tensor[B, A]`` per-prior background cross-entropy (higher = harder).
        positive: ``Tensor[B, A]`` bool.
        neg_pos_ratio: negatives per positive (3 in the paper).

    Returns:
        ``Tensor[B, A]`` bool, True for the ``min(ratio * num_pos, A - num_pos)`` hardest negatives of each image
        (ties broken by prior index). An image without positives gets none.
    """
    a = ce.shape[1]
    num_pos = positive.sum(dim=1, keepdim=True)  # (B, 1)
    num_neg = torch.minimum((neg_pos_ratio * num_pos).long(), a - num_pos)  # (B, 1)
    k = int(num_neg.max()) if num_neg.numel() else 0
    if k == 0:
        return torch.zeros_like(positive)
    hardness = ce.detach().masked_fill(positive, float("-inf"))
    # The num_neg-th largest hardness of each image (a top-k, not a sort of all A priors), then everything above
    # it and, among the priors tied with it, the lowest indices: what a stable descending sort would select.
    tau = hardness.topk(k, dim=1).values.gather(1, (num_neg - 1).clamp(min=0))  # (B, 1)
    above = hardness > tau
    tied = hardness == tau
    need = num_neg - above.sum(dim=1, keepdim=True)
    return (above | (tied & (tied.cumsum(dim=1) <= need))) & (num_neg > 0)


def _check_targets(gt_boxes: Tensor, gt_labels: Tensor, present: Tensor, valid: Tensor, num_classes: int) -> int:
    """Raise on unusable targets; return how many boxes are merely degenerate (to be ignored).

    Args:
        gt_boxes: ``Tensor[B, G, 4]`` padded target boxes.
        gt_labels: ``Tensor[B, G]`` padded labels.
        present: ``Tensor[B, G]`` bool, False for padding.
        valid: ``Tensor[B, G]`` bool, present boxes that are finite with positive width and height.
        num_classes: ``C``, background included.
    """
    finite = torch.isfinite(gt_boxes).all(-1)  # (B, G)
    inside = ((gt_boxes >= -TARGET_TOLERANCE) & (gt_boxes <= 1 + TARGET_TOLERANCE)).all(-1)
    bad_box = present & ~(finite & inside)
    bad_label = present & ((gt_labels < 1) | (gt_labels >= num_classes))
    degenerate = present & ~valid & ~bad_box
    # One device-to-host transfer for the three counts: this runs at every training step.
    n_box, n_label, n_degenerate = torch.stack((bad_box.sum(), bad_label.sum(), degenerate.sum())).tolist()
    if n_label:
        i, j = bad_label.nonzero()[0].tolist()
        raise ValueError(
            f"image {i} of the batch has label {int(gt_labels[i, j])}; labels must be in 1..{num_classes - 1} "
            f"for a model with {num_classes} classes (0 is the background)"
        )
    if n_box:
        i, j = bad_box.nonzero()[0].tolist()
        box = gt_boxes[i, j].tolist()
        corners = "[" + ", ".join(f"{v:.6g}" for v in box) + "]"
        what = "has a non-finite corner" if not bool(finite[i, j]) else "lies outside [0, 1]"
        hint = ""
        if bool(finite[i, j]) and max(abs(v) for v in box) > 2:
            hint = " (pixel coordinates? divide x by the image width and y by its height, as ToRelative does)"
        raise ValueError(
            f"image {i} of the batch has target box {j} = {corners}, which {what}; target boxes must be normalised "
            f"xyxy in [0, 1] (tolerance {TARGET_TOLERANCE}){hint}; {n_box} such box(es) in the batch"
        )
    return int(n_degenerate)


def _check_shapes(cls_logits: Tensor, targets: Sequence[tuple[Tensor, Tensor]], priors: Tensor) -> None:
    """Raise ValueError unless the targets, priors and label dtypes fit the ``[B, A, C]`` logits."""
    b, a, _ = cls_logits.shape
    if len(targets) != b:
        raise ValueError(f"got {len(targets)} targets for a batch of {b} images")
    if priors.shape != (a, 4):
        raise ValueError(f"priors have shape {tuple(priors.shape)} but the predictions have {a} boxes")
    for i, (_, lb) in enumerate(targets):
        if lb.is_floating_point():
            raise ValueError(f"image {i} of the batch has labels of dtype {lb.dtype}; labels must be integers (int64)")


def _padded_targets(
    targets: Sequence[tuple[Tensor, Tensor]], device: torch.device, num_classes: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The batch's padded ``(boxes, labels, valid)``, checked; warns (at the loss's caller) about dropped boxes."""
    gt_boxes, gt_labels, valid = pad_targets(targets, device)
    lengths = torch.tensor([int(bx.shape[0]) for bx, _ in targets], device=gt_labels.device)
    present = torch.arange(gt_labels.shape[1], device=gt_labels.device) < lengths[:, None]  # (B, G)
    dropped = _check_targets(gt_boxes, gt_labels, present, valid, num_classes)
    if dropped:
        warnings.warn(
            f"multibox_loss: ignored {dropped} ground-truth box(es) without positive width/height; clean the "
            "annotations (see `multibox scan`)",
            stacklevel=3,
        )
    return gt_boxes, gt_labels, valid


def multibox_loss(
    pred: Prediction,
    targets: Sequence[tuple[Tensor, Tensor]],
    priors: Tensor,
    *,
    iou_threshold: float = 0.5,
    neg_pos_ratio: float = 3.0,
    variances: tuple[float, float] = DEFAULT_VARIANCES,
    mining: str = "fast",
) -> dict[str, Tensor]:
    """The SSD training loss of a batch.

    Args:
        pred: the network's ``Prediction`` (``cls_logits [B, A, C]``, ``box_deltas [B, A, 4]``).
        targets: per image, ``(boxes Tensor[G, 4] xyxy in [0, 1], labels Tensor[G] int64 in 1..C-1)``; ``G`` may be 0.
            Boxes without positive width and height are ignored with a warning (the readers drop such boxes and the
            transforms never make one, but a user's crop may cut a box down to a line).
        priors: ``Tensor[A, 4]`` cxcywh default boxes.
        iou_threshold: IoU for a prior to be positive.
        neg_pos_ratio: hard negatives per positive.
        variances: the box-coding variances.
        mining: how negatives are ranked (:data:`MINING`): ``"reference"`` by :func:`background_loss_reference`,
            ``"fast"`` (the default) by :func:`background_loss`.

    Returns:
        ``{"loc", "conf", "total", "num_pos"}``: the three losses (0-dim, already divided by the number of
        positives) and the number of positives (int64).

    Raises:
        ValueError: a target box has a non-finite corner or one outside ``[0, 1]`` by more than
            :data:`TARGET_TOLERANCE` (e.g. pixel coordinates), or a label is not an integer in ``1..C-1``; the
            message names the image's index in the batch and the offending box or label. The test is batched and
            costs one device-to-host transfer per call.
    """
    if mining not in MINING:
        raise ValueError(f"unknown mining {mining!r}; use one of {list(MINING)}")
    cls_logits, box_deltas = pred.cls_logits.float(), pred.box_deltas.float()
    _check_shapes(cls_logits, targets, priors)
    gt_boxes, gt_labels, valid = _padded_targets(targets, cls_logits.device, cls_logits.shape[2])
    priors = priors.to(cls_logits.device, torch.float32)
    m = match(gt_boxes, valid, priors, iou_threshold)
    pos = m.positive  # (B, A)
    num_pos = pos.sum()

    # Localisation: smooth-L1 over the positives only (the others may be matched to padding).
    bi, ai = pos.nonzero(as_tuple=True)  # (P,) image and prior of each positive
    gi = m.gt_index[bi, ai]
    loc_t = encode(gt_boxes[bi, gi], priors[ai], variances)  # (P, 4)
    loc = F.smooth_l1_loss(box_deltas[bi, ai], loc_t, reduction="sum", beta=1.0)
    # Confidence: CE on the positives plus the hardest negatives. The negatives are ranked by their background
    # cross-entropy (no gradient), then the cross-entropy and its gradient are computed on the selected priors only
    # (about 4 per positive, a few percent of all), not as a log_softmax over all [B, A, C] logits.
    conf_t = torch.where(pos, torch.gather(gt_labels, 1, m.gt_index), 0)  # (B, A)
    hardness = background_loss(cls_logits) if mining == "fast" else background_loss_reference(cls_logits)
    neg = hard_negative_mask(hardness, pos, neg_pos_ratio)
    si, sa = (pos | neg).nonzero(as_tuple=True)
    conf = F.cross_entropy(cls_logits[si, sa], conf_t[si, sa], reduction="sum")
    n = num_pos.clamp(min=1).to(cls_logits.dtype)
    loc, conf = loc / n, conf / n
    return {"loc": loc, "conf": conf, "total": loc + conf, "num_pos": num_pos}
