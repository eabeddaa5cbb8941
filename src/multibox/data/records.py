"""Datasets held as one record per image: what every such reader answers from its records (VOC, YOLO, COCO), and
the record and item access VOC and YOLO share.

A reader builds its records once (annotations parsed and checked, image headers probed); items then decode the
image and return it with the record's target, boxes scaled to the decoded size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from multibox.data.checks import OnError, unusable_item
from multibox.data.image_io import decode_image, scale_to_decoded

__all__ = ["ImageRecord", "RecordDataset", "RecordList"]


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset and its checked annotation."""

    image_id: str
    image_path: Path
    size: tuple[int, int]  # upright (width, height)
    boxes: Tensor  # (N, 4) float32 xyxy pixels
    labels: Tensor  # (N,) int64 in 1..K
    difficult: Tensor  # (N,) bool


class RecordList(torch.utils.data.Dataset):
    """A dataset whose reader built one record per image (``_records``, each with ``image_id``, ``image_path`` and
    ``boxes``), and what it answers from them without decoding an image. Subclasses give ``get_target`` and
    ``__getitem__``."""

    _records: list[Any]

    def __len__(self) -> int:
        return len(self._records)

    @property
    def image_ids(self) -> list[Any]:
        """The id of every item, in order."""
        return [r.image_id for r in self._records]

    def image_path(self, index: int) -> Path:
        """The image file of item ``index``."""
        return self._records[index].image_path

    def get_target(self, index: int) -> dict[str, Any]:
        """The target dict of item ``index`` without decoding its image."""
        raise NotImplementedError

    def num_boxes(self) -> int:
        """How many boxes the items hold in all (from the annotations; nothing is decoded or probed)."""
        return sum(int(r.boxes.shape[0]) for r in self._records)

    def targets_only(self) -> list[dict[str, Any]]:
        """Every item's target dict, in order, without decoding any image."""
        return [self.get_target(i) for i in range(len(self))]


class RecordDataset(RecordList):
    """Items ``(image, target)`` of a list of :class:`ImageRecord` (a reader fills ``_records``).

    ``image`` is an upright RGB ``uint8`` ``Tensor[3, H, W]``; ``target`` holds ``boxes`` (pixels of that image),
    ``labels``, ``difficult``, ``image_id`` and ``orig_size`` (``[H, W]`` of the file). An image that cannot be
    decoded is skipped (None, with a warning) or raises, as ``on_error`` says.

    Attributes:
        decode_max_side: None, or a longer side that items need no more than (set by a training pipeline): large
            JPEGs are then decoded at a reduced size.
    """

    decode_max_side: int | None = None
    on_error: OnError = "raise"
    _records: list[ImageRecord]

    def image_size(self, index: int) -> tuple[int, int]:
        """``(width, height)`` of the upright image of item ``index`` (from its header; nothing is decoded)."""
        return self._records[index].size

    def get_target(self, index: int) -> dict[str, Any]:
        """The target dict of item ``index`` without decoding its image (the fast path for statistics/evaluation)."""
        r = self._records[index]
        return {
            "boxes": r.boxes.clone(),
            "labels": r.labels.clone(),
            "difficult": r.difficult.clone(),
            "image_id": r.image_id,
            "orig_size": torch.tensor([r.size[1], r.size[0]], dtype=torch.int64),
        }

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]] | None:
        r = self._records[index]
        try:
            image, info = decode_image(r.image_path, self.decode_max_side)  # (3, H, W) uint8, upright
            if info.size != r.size:
                raise OSError(
                    f"{r.image_path}: its header now says {info.size[0]}x{info.size[1]} but it said "
                    f"{r.size[0]}x{r.size[1]} when the dataset was built (was the file replaced?)"
                )
        except OSError as exc:
            return unusable_item(repr(self), index, exc, self.on_error)
        return image, scale_to_decoded(self.get_target(index), r.size, image)
