"""Default boxes fitted to a dataset: measure coverage, and re-choose the scales and aspect ratios where it is poor.

SSD learns a ground-truth box from the priors it matches with IoU >= 0.5 (paper §2.2 "Matching strategy"); a box
that no prior reaches is learnt only through its single forced best match, and a class made of such boxes is
barely learnt at all. The paper's scales (eq. 4, ``s_min = 0.2``) suit PASCAL VOC and COCO; a dataset of small
objects (cells, distant signs, card symbols) can fall almost entirely below the smallest prior.

:func:`fit_prior_spec` keeps the model's own spec when its coverage is already good (:data:`GOOD_COVERAGE`), and
otherwise searches the paper's family of specs for the one that covers the dataset best:

- scales ``s_k`` linear in ``k`` from ``s_min`` to ``s_max`` (eq. 4), each map's extra square prior at
  ``sqrt(s_k s_k+1)`` with ``s_m+1 = min(1, s_m + step)``, for ``s_min`` on a geometric grid and a few ``s_max``;
- the aspect ratios: the model's own, common alternatives and the k-means (``1 - IoU``) centroids' ratios
  (:func:`~multibox.data.anchors.suggest_priors`), with as many ratios per map as the model has, so the number of
  priors per cell (and the head) is unchanged.

Each candidate is scored on the dataset's boxes against the priors it generates on the model's measured feature
maps: ``covered + worst class's covered + mean best IoU / 2`` (all in [0, 1]), so that a class left uncovered
weighs as much as all the others together. The fitted spec replaces the model's only when it covers clearly more
(:data:`MIN_GAIN`); the result says what changed and why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from multibox.data.anchors import AnchorCoverage, anchor_coverage, suggest_priors
from multibox.priors import PriorSpec

__all__ = ["GOOD_COVERAGE", "MIN_GAIN", "PriorFit", "fit_prior_spec", "prior_spec_family"]

#: ``(overall, worst class)`` coverage at IoU 0.5 from which a model's own priors are kept.
GOOD_COVERAGE: tuple[float, float] = (0.95, 0.90)
#: The least gain in score (``covered + worst class + mean IoU / 2``) for which a fitted spec replaces the model's.
MIN_GAIN = 0.02
_MAX_BOXES = 4000  # boxes scored per candidate (a seeded sample of larger datasets)
_S_MIN_GRID = tuple(round(0.03 * (0.35 / 0.03) ** (i / 11), 4) for i in range(12))  # 0.03 .. 0.35, geometric
_S_MAX_GRID = (0.6, 0.75, 0.9, 0.95)
_RATIO_CHOICES = ((2.0, 3.0), (1.5, 3.0), (2.0, 4.0), (1.5, 2.5), (2.5, 4.0))


@dataclass
class PriorFit:
    """The result of :func:`fit_prior_spec`.

    Attributes:
        spec: the spec to train with (the model's own when ``changed`` is False).
        changed: whether ``spec`` differs from the model's.
        reason: one sentence on why it was kept or replaced.
        before: coverage of the model's own priors.
        after: coverage of ``spec``'s priors (``before`` when unchanged).
    """

    spec: PriorSpec
    changed: bool
    reason: str
    before: AnchorCoverage
    after: AnchorCoverage

    def __str__(self) -> str:
        lines = [f"default boxes: {'fitted to the data' if self.changed else 'kept'} ({self.reason})"]
        lines.append(f"  before: {_summary(self.before)}")
        if self.changed:
            lines.append(f"  after:  {_summary(self.after)}")
            lines.append(f"  min sizes (px at {self.spec.size}): {[round(s, 1) for s in self.spec.min_sizes]}")
            lines.append(f"  aspect ratios: {[list(r) for r in self.spec.aspect_ratios]}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        """Plain values for a JSON report: the decision, the spec and both coverages."""
        from dataclasses import asdict

        return {
            "changed": self.changed,
            "reason": self.reason,
            "spec": asdict(self.spec),
            "before": _coverage_dict(self.before),
            "after": _coverage_dict(self.after),
        }


def _summary(c: AnchorCoverage) -> str:
    worst = _worst_class(c)
    worst_text = f", worst class {worst[0]} {worst[1]:.1%}" if worst else ""
    return f"{c.covered:.1%} of {c.num_boxes} boxes covered (IoU >= {c.threshold}){worst_text}, mean best IoU " + (
        f"{float(c.best_iou.mean()):.3f}" if c.num_boxes else "-"
    )


def _coverage_dict(c: AnchorCoverage) -> dict[str, object]:
    return {
        "covered": c.covered,
        "boxes": c.num_boxes,
        "mean_best_iou": float(c.best_iou.mean()) if c.num_boxes else None,
        "per_class": {k: {"boxes": n, "covered": None if math.isnan(f) else f} for k, (n, f) in c.per_class.items()},
        "per_size": {k: {"boxes": n, "covered": None if math.isnan(f) else f} for k, (n, f) in c.per_size.items()},
    }


def _worst_class(c: AnchorCoverage) -> tuple[str, float] | None:
    present = [(name, f) for name, (n, f) in c.per_class.items() if n > 0]
    return min(present, key=lambda item: item[1]) if present else None


def _score(c: AnchorCoverage) -> float:
    worst = _worst_class(c)
    mean_iou = float(c.best_iou.mean()) if c.num_boxes else 0.0
    return c.covered + (worst[1] if worst else c.covered) + 0.5 * mean_iou


def prior_spec_family(like: PriorSpec, s_min: float, s_max: float, aspect_ratios: Sequence[float]) -> PriorSpec:
    """A spec of the paper's family with ``like``'s structure (maps, priors per cell, reference size).

    Scales ``s_k = s_min + (s_max - s_min) (k - 1) / (m - 1)`` (eq. 4) as fractions of ``like.size``; the extra
    square prior of map ``k`` is ``sqrt(s_k s_k+1)`` with ``s_m+1 = min(1, s_m + step)`` (kept only when ``like``
    has max sizes); map ``k`` takes the first ``len(like.aspect_ratios[k])`` of ``aspect_ratios``; the steps are
    derived from the measured maps, the clipping and offset are ``like``'s.

    Raises:
        ValueError: unless ``0 < s_min <= s_max`` and there are enough ratios for the map with the most.
    """
    m = like.num_maps
    if not 0 < s_min <= s_max:
        raise ValueError(f"need 0 < s_min <= s_max, got {s_min}, {s_max}")
    needed = max((len(r) for r in like.aspect_ratios), default=0)
    if len(aspect_ratios) < needed:
        raise ValueError(f"the spec has maps with {needed} aspect ratios; got only {list(aspect_ratios)}")
    step = (s_max - s_min) / (m - 1) if m > 1 else 0.0
    scales = [s_min + step * k for k in range(m)]
    scales.append(min(1.0, scales[-1] + (step if m > 1 else s_min)))
    size = like.size
    return PriorSpec(
        size=size,
        min_sizes=tuple(s * size for s in scales[:-1]),
        max_sizes=None if like.max_sizes is None else tuple(s * size for s in scales[1:]),
        aspect_ratios=tuple(tuple(float(a) for a in aspect_ratios[: len(r)]) for r in like.aspect_ratios),
        steps=None,
        clip=like.clip,
        offset=like.offset,
    )


def _ratio_candidates(like: PriorSpec, boxes: Sequence[Tensor]) -> list[tuple[float, ...]]:
    """The model's ratios, the common alternatives and the k-means suggestion (deduplicated, in that order)."""
    own = max(like.aspect_ratios, key=len, default=())
    width = len(own)
    candidates = [tuple(own), *(c[:width] for c in _RATIO_CHOICES)]
    try:
        suggested = [a for a in suggest_priors(boxes, k=6, num_maps=like.num_maps).aspect_ratios if a > 1]
    except ValueError:  # fewer than k boxes
        suggested = []
    if len(suggested) > width:  # the extremes and evenly spread ones between them
        suggested = [suggested[round(i * (len(suggested) - 1) / max(width - 1, 1))] for i in range(width)]
    if suggested:  # too few: completed with the model's own
        candidates.append(tuple(sorted((suggested + [a for a in own if a not in suggested])[:width])))
    unique: list[tuple[float, ...]] = []
    for c in candidates:
        if c not in unique:
            unique.append(c)
    return unique


def _sample(boxes: list[Tensor], labels: list[Tensor], limit: int, seed: int) -> tuple[list[Tensor], list[Tensor]]:
    flat_boxes = torch.cat([b.reshape(-1, 4).float() for b in boxes]) if boxes else torch.zeros(0, 4)
    flat_labels = torch.cat([lab.reshape(-1).long() for lab in labels]) if labels else torch.zeros(0).long()
    if flat_boxes.shape[0] <= limit:
        return [flat_boxes], [flat_labels]
    keep = torch.randperm(flat_boxes.shape[0], generator=torch.Generator().manual_seed(seed))[:limit]
    return [flat_boxes[keep]], [flat_labels[keep]]


def fit_prior_spec(
    gt_boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    class_names: Sequence[str],
    spec: PriorSpec,
    image_size: tuple[int, int],
    feature_maps: Sequence[tuple[int, int]],
    *,
    force: bool = False,
    good: tuple[float, float] = GOOD_COVERAGE,
    seed: int = 0,
) -> PriorFit:
    """Keep ``spec`` when it covers the dataset well, else the best-covering spec of the paper's family.

    Args:
        gt_boxes: per image, ``Tensor[N_i, 4]`` xyxy normalised to [0, 1] (:func:`normalized_targets`).
        labels: per image, ``Tensor[N_i]`` labels in ``1..K``.
        class_names: name of label ``k`` is ``class_names[k - 1]``.
        spec: the model's default boxes.
        image_size: the network input ``(H, W)``.
        feature_maps: the model's measured source-map sizes ``(h, w)``.
        force: search even when ``spec`` already covers the data well (the better spec still has to win by
            :data:`MIN_GAIN`).
        good: ``(overall, worst class)`` coverage from which ``spec`` is kept without a search.
        seed: seeds the sample of boxes scored (at most 4000) and the k-means initialisation.

    Returns:
        A :class:`PriorFit`; its coverages are measured on all the boxes.

    Raises:
        ValueError: the dataset has no boxes.
    """
    boxes, labs = list(gt_boxes), list(labels)
    if not any(b.numel() for b in boxes):
        raise ValueError("cannot fit default boxes: the dataset has no boxes")
    before = anchor_coverage(boxes, labs, spec.generate(image_size, feature_maps), class_names)
    worst = _worst_class(before)
    if not force and before.covered >= good[0] and (worst is None or worst[1] >= good[1]):
        reason = f"{before.covered:.1%} of the boxes covered, every class at least {good[1]:.0%}"
        return PriorFit(spec, False, reason, before, before)
    sample_boxes, sample_labels = _sample(boxes, labs, _MAX_BOXES, seed)
    best_spec, best_score = spec, _score(anchor_coverage(sample_boxes, sample_labels, spec.generate(
        image_size, feature_maps), class_names))  # fmt: skip
    own_score = best_score
    for ratios in _ratio_candidates(spec, boxes):
        for s_min in _S_MIN_GRID:
            for s_max in _S_MAX_GRID:
                if s_max < s_min:
                    continue
                candidate = prior_spec_family(spec, s_min, s_max, ratios)
                priors = candidate.generate(image_size, feature_maps)
                score = _score(anchor_coverage(sample_boxes, sample_labels, priors, class_names))
                if score > best_score + 1e-9:
                    best_spec, best_score = candidate, score
    if best_spec is spec or best_score - own_score < MIN_GAIN:
        reason = f"no spec of the paper's family covers the data clearly better (score gain < {MIN_GAIN})"
        return PriorFit(spec, False, reason, before, before)
    after = anchor_coverage(boxes, labs, best_spec.generate(image_size, feature_maps), class_names)
    why = "forced" if force and before.covered >= good[0] else _why(before, good)
    return PriorFit(best_spec, True, why, before, after)


def _why(before: AnchorCoverage, good: tuple[float, float]) -> str:
    worst = _worst_class(before)
    parts = []
    if before.covered < good[0]:
        parts.append(f"only {before.covered:.1%} of the boxes covered (< {good[0]:.0%})")
    if worst is not None and worst[1] < good[1]:
        parts.append(f"class {worst[0]!r} only {worst[1]:.1%} covered (< {good[1]:.0%})")
    small = before.per_size.get("small")
    if small and small[0] and not math.isnan(small[1]) and small[1] < good[1]:
        parts.append(f"{small[0]} small boxes {small[1]:.1%} covered")
    return "; ".join(parts) or "poor coverage"
