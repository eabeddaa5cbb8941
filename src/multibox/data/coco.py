"""COCO-format reader (one JSON file with ``images``, ``annotations``, ``categories``; a folder of images).

COCO boxes are ``[x, y, width, height]`` in continuous pixel coordinates (no 1-based offset), so the xyxy box is
``[x, y, x + width, y + height]``. Categories are sorted by id and numbered ``1..K`` (0 is the background);
:meth:`COCODetection.category_ids` turns predicted labels back into COCO ids for a results file.

Crowd regions (``iscrowd: 1``) are not objects to detect: they are left out of the targets unless
``include_crowd=True`` (for evaluation, where detections on them are ignored, like VOC's ``difficult``). Images
without annotations are kept: they are valid negatives.

Field types are checked, not coerced (:mod:`multibox.data.coco_json`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from multibox.data.checks import (
    DatasetError,
    DatasetWarning,
    Issue,
    IssueLog,
    OnError,
    check_boxes,
    unusable_item,
)
from multibox.data.coco_json import coco_problems, load_coco_json, read_coco_json, usable_entries
from multibox.data.image_io import (
    ExifPolicy,
    decode_image,
    orient_boxes,
    probe_image,
    resolve_orientation,
    scale_to_decoded,
)
from multibox.data.records import RecordList

__all__ = ["COCODetection", "load_coco_json"]


@dataclass(frozen=True)
class _Record:
    image_id: int
    image_path: Path
    size: tuple[int, int]  # (width, height) stated in the JSON
    boxes: Tensor  # (N, 4) float32 xyxy pixels
    labels: Tensor  # (N,) int64
    iscrowd: Tensor  # (N,) bool


class COCODetection(RecordList):
    """A detection dataset in COCO format.

    Items are in the order of their COCO image ids (``image_ids``), each ``(image, target)``: an upright RGB
    ``uint8`` ``Tensor[3, H, W]`` and a dict

    - ``"boxes"``: ``Tensor[N, 4]`` float32 xyxy in continuous pixels,
    - ``"labels"``: ``Tensor[N]`` int64 in ``1..K`` (``classes[label - 1]``),
    - ``"iscrowd"``: ``Tensor[N]`` bool (all False unless ``include_crowd``),
    - ``"image_id"``: the COCO image id (``int``),
    - ``"orig_size"``: ``Tensor[2]`` int64 ``(H, W)``.

    Args:
        images_dir: the folder the ``file_name`` entries are relative to.
        annotation_json: the COCO annotation file.
        include_crowd: keep ``iscrowd`` regions in the targets (flagged in ``"iscrowd"``), for evaluation.
        on_error: ``"raise"`` on an image that cannot be used (missing file, an image or annotation entry with a
            wrong type or reference), or ``"skip"`` it and list it with the reason in the one warning; an
            annotation that names no listed image is then dropped alone. A file that is not JSON or whose top level
            or categories are malformed always raises. An image that fails to decode when an item is read raises,
            or under ``"skip"`` the item is ``None`` with a warning (see :class:`~multibox.data.VOCDetection`).
        exif: how boxes relate to EXIF-rotated images (see :mod:`multibox.data.image_io`); resolved when an item
            is read, since probing every header of a large set up front would be slow.

    Attributes:
        decode_max_side: as :class:`~multibox.data.VOCDetection`'s (large JPEGs decoded smaller for training).
    """

    decode_max_side: int | None = None

    def __init__(
        self,
        images_dir: str | Path,
        annotation_json: str | Path,
        include_crowd: bool = False,
        on_error: OnError = "raise",
        exif: ExifPolicy = "auto",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.images_dir = Path(images_dir)
        self.annotation_json = Path(annotation_json)
        self.include_crowd = include_crowd
        self.exif: ExifPolicy = exif
        data = read_coco_json(self.annotation_json)
        problems = coco_problems(data, self.annotation_json)
        if problems and on_error == "raise":
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise DatasetError(problems[0].message + more)
        self.on_error: OnError = on_error
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.classes: tuple[str, ...] = tuple(c["name"] for c in categories)
        self.category_id_to_label: dict[int, int] = {c["id"]: k + 1 for k, c in enumerate(categories)}
        self.label_to_category_id: dict[int, int] = {k: cid for cid, k in self.category_id_to_label.items()}
        self._label_to_cat = torch.tensor([0] + [c["id"] for c in categories], dtype=torch.int64)

        images, per_image = usable_entries(data, problems)
        try:
            listing = set(os.listdir(self.images_dir))
        except OSError as exc:
            raise DatasetError(f"{self.images_dir}: cannot list the images folder: {exc}") from exc
        self.log = IssueLog()
        for p in problems:
            kind = "bad_entry" if p.image_id is not None or p.kind == "image" else "dropped_annotation"
            where = f"{self.annotation_json} (image id {p.image_id})" if p.image_id is not None else p.message
            self.log.add(Issue(kind, where, p.message, severity="error"))
        self._records: list[_Record] = []
        self._upright_cache: dict[int, tuple[Tensor, tuple[int, int]]] = {}
        for img in images:
            path = self.images_dir / img["file_name"]
            if img["file_name"] not in listing and not path.exists():
                message = f"{self.annotation_json}: image {img['file_name']!r} (id {img['id']}) "
                message += f"not found in {self.images_dir}"
                if on_error == "raise":
                    raise DatasetError(message)
                self.log.add(Issue("skipped_file", str(path), message, severity="error"))
                continue
            self._records.append(self._make_record(img, path, per_image[img["id"]]))
        self.log.warn(repr(self))

    def _make_record(self, img: dict[str, Any], path: Path, anns: list[dict[str, Any]]) -> _Record:
        size = (int(img["width"]), int(img["height"]))
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        boxes = torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), dim=1)  # (N, 4) xywh -> xyxy
        degenerate = (xywh[:, 2] <= 0) | (xywh[:, 3] <= 0)
        check = check_boxes(boxes, *size, degenerate=degenerate)
        self.log.extend(check.issues(f"{self.annotation_json} (image id {img['id']}, {img['file_name']})"))
        crowd = torch.tensor([a.get("iscrowd", 0) == 1 for a in anns], dtype=torch.bool)  # 0/1 or a bool (checked)
        labels = torch.tensor([self.category_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64)
        keep = check.keep if self.include_crowd else check.keep & ~crowd
        return _Record(img["id"], path, size, check.boxes[keep], labels[keep], crowd[keep])

    def category_ids(self, labels: Tensor) -> Tensor:
        """Map contiguous labels ``Tensor[...]`` (1..K) to COCO category ids, e.g. to write a results file."""
        return self._label_to_cat[labels]

    def labels_from_category_ids(self, category_ids: Tensor) -> Tensor:
        """Map COCO category ids ``Tensor[...]`` to contiguous labels 1..K."""
        return torch.tensor(
            [self.category_id_to_label[int(c)] for c in category_ids.flatten()], dtype=torch.int64
        ).reshape(category_ids.shape)

    def _upright(self, index: int) -> tuple[Tensor, tuple[int, int]]:
        """Boxes in the upright image and its ``(H, W)``, from the image header (cached).

        Under ``on_error="skip"`` an image whose header cannot be read gives the annotation's own boxes and size,
        with a warning (the item itself will be skipped when read).
        """
        if index not in self._upright_cache:
            r = self._records[index]
            try:
                info = probe_image(r.image_path)
            except OSError as exc:
                if self.on_error == "raise":
                    raise DatasetError(str(exc)) from exc
                warnings.warn(f"{self!r}: {exc}; its target is taken from the annotation as written",
                              DatasetWarning, stacklevel=3)  # fmt: skip
                self._upright_cache[index] = (r.boxes, (r.size[1], r.size[0]))
                return self._upright_cache[index]
            boxes = r.boxes
            if resolve_orientation(info, r.size, self.exif):
                boxes = orient_boxes(boxes, info.orientation, info.stored_size)
            self._upright_cache[index] = (boxes, (info.size[1], info.size[0]))
        return self._upright_cache[index]

    def get_target(self, index: int) -> dict[str, Any]:
        """The target dict of item ``index`` without decoding its image (only its header is read, for EXIF)."""
        return self._target(index, *self._upright(index))

    def _target(self, index: int, boxes: Tensor, hw: tuple[int, int]) -> dict[str, Any]:
        r = self._records[index]
        return {
            "boxes": boxes.clone(),
            "labels": r.labels.clone(),
            "iscrowd": r.iscrowd.clone(),
            "image_id": r.image_id,
            "orig_size": torch.tensor(hw, dtype=torch.int64),
        }

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]] | None:
        r = self._records[index]
        try:
            image, info = decode_image(r.image_path, self.decode_max_side)  # (3, H, W) uint8, upright
        except OSError as exc:
            return unusable_item(repr(self), index, exc, self.on_error)
        boxes = r.boxes
        if info.orientation != 1 and resolve_orientation(info, r.size, self.exif):
            boxes = orient_boxes(boxes, info.orientation, info.stored_size)
        w, h = info.size
        return image, scale_to_decoded(self._target(index, boxes, (h, w)), (w, h), image)

    def __repr__(self) -> str:
        return f"COCODetection(images_dir={str(self.images_dir)!r}, images={len(self._records)})"
