"""COCO box AP/AR through the official pycocotools ``COCOeval`` (Lin et al., ECCV 2014; cocodataset.org).

Nothing here re-implements COCO's matching: the ground truth is turned into an in-memory COCO dataset, the
detections into a COCO results list, and ``COCOeval(iouType="bbox")`` does the rest. pycocotools is an optional
dependency (``pip install multibox[eval]``) imported only when these functions run.

Labels and category ids: the library's labels are contiguous, ``1..K`` (0 is the background), while a COCO
dataset has its own category ids (COCO's 80 classes use ids 1..90 with gaps). ``category_ids`` maps one to the
other and is one of

* ``None``: the label *is* the category id;
* a sequence of K ids: ``category_ids[label - 1]`` is the id of ``label`` (the dataset's categories in label order);
* a mapping ``{label: category_id}``.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from multibox.metrics._inputs import ImageDetections, read_detections, read_ground_truths

__all__ = ["COCO_STAT_NAMES", "category_id_to_label", "coco_evaluate", "to_coco_results"]

#: The names of ``COCOeval.stats``, in order: AP at IoU .50:.05:.95, at .50, at .75, for small/medium/large
#: objects (area < 32², < 96², above), then AR for 1/10/100 detections per image and for the three sizes.
COCO_STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip

CategoryIds = Sequence[int] | Mapping[int, int] | None


def _pycocotools() -> tuple[type, type]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:
        raise ImportError(
            "COCO evaluation needs pycocotools, which is not installed: pip install 'multibox[eval]'"
        ) from err
    return COCO, COCOeval


def _label_to_category(category_ids: CategoryIds) -> Mapping[int, int] | None:
    """``{label: category_id}`` for a sequence or mapping; None for the identity."""
    if category_ids is None:
        return None
    if isinstance(category_ids, Mapping):
        mapping = {int(k): int(v) for k, v in category_ids.items()}
    else:
        mapping = {label: int(cat) for label, cat in enumerate(category_ids, start=1)}
    if len(set(mapping.values())) != len(mapping):
        raise ValueError("category_ids maps two labels to the same category id")
    return mapping


def _category_of(label: int, mapping: Mapping[int, int] | None) -> int:
    if mapping is None:
        return label
    try:
        return mapping[label]
    except KeyError:
        raise ValueError(
            f"label {label} has no category id: category_ids covers labels {sorted(mapping)} "
            "(a sequence is indexed by label - 1)"
        ) from None


def category_id_to_label(category_ids: Sequence[int] | Mapping[int, int]) -> dict[int, int]:
    """Invert a label -> category id mapping (a sequence indexed by ``label - 1``, or a mapping).

    Returns:
        ``{category_id: label}``, e.g. to turn a COCO dataset's annotations into training labels.
    """
    mapping = _label_to_category(category_ids)
    if mapping is None:
        raise TypeError("category_ids must be a sequence or a mapping, not None")
    return {cat: label for label, cat in mapping.items()}


def _xywh(boxes: np.ndarray) -> np.ndarray:
    """``[N, 4]`` xyxy -> ``[N, 4]`` COCO ``(x, y, width, height)``."""
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _results(dets: Sequence[ImageDetections], image_ids: Sequence[int], mapping: Mapping[int, int] | None) -> list:
    out = []
    for det, image_id in zip(dets, image_ids, strict=True):
        for box, score, label in zip(_xywh(det.boxes).tolist(), det.scores.tolist(), det.labels.tolist(), strict=True):
            out.append(
                {"image_id": int(image_id), "category_id": _category_of(label, mapping), "bbox": box, "score": score}
            )
    return out


def to_coco_results(
    detections: Sequence[Any], image_ids: Sequence[int], category_ids: CategoryIds = None
) -> list[dict[str, Any]]:
    """Detections as a COCO results list, ready for ``json.dump`` or ``COCO.loadRes``.

    Args:
        detections: per image, a :class:`~multibox.Detections` (or mapping/object with ``boxes [N, 4]`` xyxy in the
            pixels of the original image, ``scores [N]``, ``labels [N]`` >= 1).
        image_ids: the COCO image id of each entry of ``detections``.
        category_ids: label -> category id (see the module docstring); None keeps labels as ids.

    Returns:
        One ``{"image_id", "category_id", "bbox": [x, y, width, height], "score"}`` dict per detection, plain
        Python numbers.
    """
    if len(image_ids) != len(detections):
        raise ValueError(f"got {len(detections)} detections entries but {len(image_ids)} image ids")
    return _results(read_detections(detections), image_ids, _label_to_category(category_ids))


def coco_evaluate(
    detections: Sequence[Any],
    ground_truths: Sequence[Any],
    image_sizes: Sequence[tuple[int, int]] | None = None,
    category_ids: CategoryIds = None,
    *,
    image_ids: Sequence[int] | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """COCO box AP and AR of a set of images, computed by pycocotools' ``COCOeval``.

    Boxes must be in pixels of the images they are evaluated at: COCO's small/medium/large split is by area
    in pixels² (32², 96²). ``COCOeval`` keeps at most 100 detections per image and category.

    Args:
        detections: per image, a :class:`~multibox.Detections` or mapping/object with ``boxes [N, 4]`` xyxy,
            ``scores [N]``, ``labels [N]`` >= 1.
        ground_truths: per image, a mapping or object with ``boxes [G, 4]`` xyxy and ``labels [G]``, and optionally
            ``iscrowd [G]`` bool (crowd regions: detections on them are ignored, never false positives) and
            ``area [G]`` (the area used for the size split, e.g. COCO's segmentation area; default: box area).
            ``difficult`` has no COCO meaning: such boxes are evaluated as ordinary boxes, with a warning.
        image_sizes: per image ``(height, width)``, written into the COCO image records (not used by box AP).
        category_ids: label -> category id (see the module docstring). With None the labels are the ids and the
            categories are the labels that occur; otherwise every listed category is evaluated.
        image_ids: the COCO image ids (default ``1..len(detections)``).
        verbose: let pycocotools print its progress and summary table.

    Returns:
        ``{name: value}`` for the 12 names of :data:`COCO_STAT_NAMES`. pycocotools' -1 ("no ground truth in this
        setting", e.g. APs without small objects) is returned as NaN.
    """
    ids = _image_ids(len(detections), len(ground_truths), image_ids, image_sizes)
    COCO, COCOeval = _pycocotools()
    dets = read_detections(detections)
    gts = read_ground_truths(ground_truths)
    mapping = _label_to_category(category_ids)
    _warn_about_inputs(dets, gts)
    images = _image_records(ids, image_sizes)
    annotations = _annotations(gts, ids, mapping)
    if mapping is not None:
        categories = sorted(mapping.values())
    else:
        categories = sorted({int(a["category_id"]) for a in annotations} | {int(v) for d in dets for v in d.labels})
    results = _results(dets, ids, mapping)
    if not ids or not categories:
        return dict.fromkeys(COCO_STAT_NAMES, math.nan)
    dataset = {
        "images": images,
        "categories": [{"id": c, "name": str(c)} for c in categories],
        "annotations": annotations,
    }
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        stats = _run_cocoeval(COCO, COCOeval, dataset, results)
    return {name: (math.nan if v == -1 else float(v)) for name, v in zip(COCO_STAT_NAMES, stats, strict=True)}


def _image_ids(
    num_dets: int, num_gts: int, image_ids: Sequence[int] | None, image_sizes: Sequence[tuple[int, int]] | None
) -> list[int]:
    """The COCO image ids (``1..num_dets`` by default), after checking that every per-image input has one entry per
    image and the ids are distinct."""
    if num_dets != num_gts:
        raise ValueError(f"detections and ground_truths must have one entry per image, got {num_dets} and {num_gts}")
    ids = list(range(1, num_dets + 1)) if image_ids is None else [int(i) for i in image_ids]
    if len(ids) != num_dets or len(set(ids)) != len(ids):
        raise ValueError(f"image_ids must be {num_dets} distinct ids, got {len(ids)} ({len(set(ids))} distinct)")
    if image_sizes is not None and len(image_sizes) != num_dets:
        raise ValueError(f"got {len(image_sizes)} image sizes for {num_dets} images")
    return ids


def _warn_about_inputs(dets: Sequence[Any], gts: Sequence[Any]) -> None:
    """Warn (at the caller of :func:`coco_evaluate`) about what COCO evaluation treats differently than one may
    expect: difficult boxes, more than 100 detections per image and class, boxes that look normalised."""
    num_difficult = sum(int(g.difficult.sum()) for g in gts)
    if num_difficult:
        warnings.warn(
            f"{num_difficult} ground-truth boxes are marked difficult, which COCO evaluation does not know: "
            "they are evaluated as ordinary boxes",
            stacklevel=3,
        )
    over = sum(int((np.unique(d.labels, return_counts=True)[1] > 100).sum()) for d in dets)
    if over:
        warnings.warn(
            f"{over} (image, class) pairs have more than 100 detections; COCOeval keeps the 100 best of each",
            stacklevel=3,
        )
    all_boxes = np.concatenate([np.zeros((0, 4))] + [g.boxes for g in gts])
    if all_boxes.size and np.abs(all_boxes).max() <= 1.0:
        warnings.warn(
            "all ground-truth boxes lie within [0, 1]: if they are normalised, scale them (and the detections) to "
            "pixels, since COCO's small/medium/large split is in pixels²",
            stacklevel=3,
        )


def _image_records(ids: list[int], image_sizes: Sequence[tuple[int, int]] | None) -> list[dict[str, Any]]:
    """The COCO ``images`` records: the id, and the height and width when given."""
    images = []
    for i, image_id in enumerate(ids):
        record: dict[str, Any] = {"id": image_id}
        if image_sizes is not None:
            record["height"], record["width"] = int(image_sizes[i][0]), int(image_sizes[i][1])
        images.append(record)
    return images


def _annotations(gts: Sequence[Any], ids: list[int], mapping: Mapping[int, int] | None) -> list[dict[str, Any]]:
    """The COCO ``annotations`` of the ground truth (xywh boxes, areas, categories, crowd flags)."""
    annotations = []
    for g, image_id in zip(gts, ids, strict=True):
        xywh = _xywh(g.boxes)
        area = xywh[:, 2] * xywh[:, 3] if g.area is None else g.area
        columns = (xywh.tolist(), area.tolist(), g.labels.tolist(), g.iscrowd.tolist())
        for box, a, label, crowd in zip(*columns, strict=True):
            annotations.append(
                # Annotation ids start at 1: COCOeval stores matched GT ids and reads 0 as "unmatched".
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": _category_of(label, mapping),
                    "bbox": box,
                    "area": a,
                    "iscrowd": int(crowd),
                }
            )
    return annotations


def _run_cocoeval(COCO: Any, COCOeval: Any, dataset: dict[str, Any], results: list[dict[str, Any]]) -> list[float]:
    """pycocotools' evaluate, accumulate and summarize of ``results`` against the ground-truth ``dataset``; its 12
    stats."""
    coco_gt = COCO()
    coco_gt.dataset = dataset
    coco_gt.createIndex()
    if results:
        coco_dt = coco_gt.loadRes(results)
    else:  # loadRes indexes results[0]; an empty result set is built by hand
        coco_dt = COCO()
        coco_dt.dataset = {"images": dataset["images"], "categories": dataset["categories"], "annotations": []}
        coco_dt.createIndex()
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return list(evaluator.stats)
