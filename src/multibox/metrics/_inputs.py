"""Reading per-image detections and ground truth into checked float64/int64 numpy arrays.

The metrics accept, per image, anything with ``boxes``/``scores``/``labels`` (a :class:`~multibox.Detections`,
a dict, or any object with those attributes) holding tensors, numpy arrays or nested lists. Metrics are computed
in float64 numpy: evaluation is not a hot path, and float64 keeps IoUs that are exactly 0.5 on paper exactly 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["ImageDetections", "ImageGroundTruth", "label_name", "read_detections", "read_ground_truths", "to_numpy"]

_MISSING = object()


def _field(item: Any, name: str, default: Any = _MISSING, *, where: str) -> Any:
    """``item[name]`` for a mapping, ``item.name`` otherwise; ``default`` (or a clear error) when absent."""
    value = item.get(name, default) if isinstance(item, Mapping) else getattr(item, name, default)
    if value is _MISSING:
        raise ValueError(f"{where} has no field {name!r} (expected a mapping or an object with {name!r})")
    return value


def to_numpy(value: Any, dtype: type) -> np.ndarray:
    """A tensor (any device), array or nested list as a numpy array of ``dtype``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _boxes(value: Any, where: str) -> np.ndarray:
    boxes = to_numpy(value, np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: boxes must have shape [N, 4] (xyxy), got {list(boxes.shape)}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{where}: boxes contain NaN or inf")
    return boxes


def _vector(value: Any, dtype: type, n: int, name: str, where: str) -> np.ndarray:
    out = to_numpy(value, dtype).reshape(-1)
    if out.shape[0] != n:
        raise ValueError(f"{where}: {name} has {out.shape[0]} entries but there are {n} boxes")
    return out


def _labels(value: Any, n: int, where: str) -> np.ndarray:
    labels = to_numpy(value, np.float64).reshape(-1)
    if labels.shape[0] != n:
        raise ValueError(f"{where}: labels has {labels.shape[0]} entries but there are {n} boxes")
    if labels.size and (labels != np.round(labels)).any():
        raise ValueError(f"{where}: labels must be integers")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 1:
        raise ValueError(f"{where}: labels must be >= 1 (0 is the background), got {int(labels.min())}")
    return labels


@dataclass(frozen=True)
class ImageDetections:
    """The detections of one image as numpy arrays: ``boxes [N, 4]`` xyxy, ``scores [N]``, ``labels [N]`` >= 1."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class ImageGroundTruth:
    """The ground truth of one image: ``boxes [G, 4]`` xyxy, ``labels [G]`` >= 1 and per-box flags/areas.

    ``area`` is ``None`` when the caller gave none (the box area is then used where an area is needed).
    """

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray | None


def read_detections(detections: Sequence[Any]) -> list[ImageDetections]:
    """Check and convert per-image detections (see the module docstring) to :class:`ImageDetections`."""
    out = []
    for i, det in enumerate(detections):
        where = f"detections[{i}]"
        boxes = _boxes(_field(det, "boxes", where=where), where)
        scores = _vector(_field(det, "scores", where=where), np.float64, len(boxes), "scores", where)
        if not np.isfinite(scores).all():
            raise ValueError(f"{where}: scores contain NaN or inf")
        labels = _labels(_field(det, "labels", where=where), len(boxes), where)
        out.append(ImageDetections(boxes, scores, labels))
    return out


def read_ground_truths(ground_truths: Sequence[Any]) -> list[ImageGroundTruth]:
    """Check and convert per-image ground truth to :class:`ImageGroundTruth`.

    Each item needs ``boxes [G, 4]`` xyxy and ``labels [G]``; ``difficult [G]``, ``iscrowd [G]`` (bool, default
    False) and ``area [G]`` are optional.
    """
    out = []
    for i, gt in enumerate(ground_truths):
        where = f"ground_truths[{i}]"
        boxes = _boxes(_field(gt, "boxes", where=where), where)
        n = len(boxes)
        labels = _labels(_field(gt, "labels", where=where), n, where)
        flags = {}
        for name in ("difficult", "iscrowd"):
            value = _field(gt, name, None, where=where)
            flags[name] = np.zeros(n, dtype=bool) if value is None else _vector(value, bool, n, name, where)
        area = _field(gt, "area", None, where=where)
        if area is not None:
            area = _vector(area, np.float64, n, "area", where)
        out.append(ImageGroundTruth(boxes, labels, flags["difficult"], flags["iscrowd"], area))
    return out


def label_name(label: int, class_names: Sequence[str] | Mapping[int, str] | None) -> str:
    """The display name of ``label`` (>= 1): ``class_names[label]`` for a mapping, ``class_names[label - 1]``
    for a sequence (which lists the foreground classes only, without the background), else ``"class {label}"``.
    """
    if class_names is None:
        return f"class {label}"
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, f"class {label}"))
    if not 1 <= label <= len(class_names):
        raise ValueError(
            f"label {label} has no name: class_names lists {len(class_names)} foreground classes "
            f"(class_names[label - 1], no background entry)"
        )
    return str(class_names[label - 1])
