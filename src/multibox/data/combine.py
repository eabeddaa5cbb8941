"""Views over detection readers: a subset of one (a held-out split) and the concatenation of several (VOC2007 +
VOC2012, the paper's 07+12), with the readers' no-decode helpers (``get_target``, ``num_boxes``, ``image_path``)
kept, so that prior fitting, evaluation and reports work on them as on a reader.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["DetectionConcat", "DetectionSubset", "image_keys"]


def image_keys(dataset: Any) -> list[str]:
    """A string key per item that names its image (the reader's ids, else the item index), for split files."""
    ids = getattr(dataset, "image_ids", None)
    if ids is None:
        return [str(i) for i in range(len(dataset))]
    return [str(i) for i in ids]


class _View(Dataset):
    """What subsets and concatenations share: they delegate to an item-level ``_locate(index) -> (reader, i)``."""

    classes: tuple[str, ...]

    def _locate(self, index: int) -> tuple[Any, int, Tensor | None]:
        raise NotImplementedError

    @staticmethod
    def _relabel(target: dict[str, Any], lut: Tensor | None) -> dict[str, Any]:
        if lut is not None:
            target["labels"] = lut[target["labels"]]
        return target

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]] | None:
        reader, i, lut = self._locate(index)
        item = reader[i]
        if item is None:  # unreadable image, skipped by the reader (it warned)
            return None
        image, target = item
        return image, self._relabel(target, lut)

    def get_target(self, index: int) -> dict[str, Any]:
        """The item's target without decoding its image (when the reader can)."""
        reader, i, lut = self._locate(index)
        if hasattr(reader, "get_target"):
            return self._relabel(reader.get_target(i), lut)
        return self._relabel(reader[i][1], lut)

    def image_path(self, index: int) -> Path:
        reader, i, _ = self._locate(index)
        return reader.image_path(i)

    @property
    def image_ids(self) -> list[Any]:
        return [self.get_target(i)["image_id"] for i in range(len(self))]

    def targets_only(self) -> list[dict[str, Any]]:
        return [self.get_target(i) for i in range(len(self))]

    def num_boxes(self) -> int:
        return sum(int(t["boxes"].shape[0]) for t in self.targets_only())


class DetectionSubset(_View):
    """Items ``indices`` of ``dataset``, in that order.

    Args:
        dataset: a detection reader (or view).
        indices: the items to keep.
    """

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        n = len(dataset)
        bad = [i for i in indices if not 0 <= int(i) < n]
        if bad:
            raise IndexError(f"subset indices {bad[:5]} out of range for a dataset of {n} items")
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.classes = tuple(dataset.classes)

    @property
    def decode_max_side(self) -> int | None:
        return getattr(self.dataset, "decode_max_side", None)

    @decode_max_side.setter
    def decode_max_side(self, value: int | None) -> None:
        if hasattr(self.dataset, "decode_max_side"):
            self.dataset.decode_max_side = value

    @property
    def image_ids(self) -> list[Any]:
        ids = getattr(self.dataset, "image_ids", None)
        return [ids[i] for i in self.indices] if ids is not None else [str(i) for i in self.indices]

    def _locate(self, index: int) -> tuple[Any, int, Tensor | None]:
        return self.dataset, self.indices[index], None

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"DetectionSubset({self.dataset!r}, images={len(self)})"


class DetectionConcat(_View):
    """The items of several datasets one after the other, with one class list.

    Labels are renumbered by class name: label ``k`` of the result is ``classes[k - 1]`` whichever source an item
    comes from. Image ids become ``"<source number>:<id>"`` so that they stay unique.

    Args:
        datasets: detection readers, each with ``classes``.
        classes: the class list; default: every source's names in order of first appearance.

    Raises:
        ValueError: no dataset, or a source has a class that ``classes`` lacks.
    """

    def __init__(self, datasets: Sequence[Any], classes: Sequence[str] | None = None) -> None:
        if not datasets:
            raise ValueError("DetectionConcat needs at least one dataset")
        self.datasets = list(datasets)
        if classes is None:
            classes = list(dict.fromkeys(name for d in self.datasets for name in d.classes))
        self.classes = tuple(classes)
        index = {name: k + 1 for k, name in enumerate(self.classes)}
        self._luts: list[Tensor | None] = []
        for d in self.datasets:
            missing = [name for name in d.classes if name not in index]
            if missing:
                raise ValueError(f"{d!r} has class(es) {missing} that are not in {list(self.classes)}")
            lut = torch.tensor([0, *(index[name] for name in d.classes)], dtype=torch.int64)
            identity = tuple(d.classes) == self.classes[: len(d.classes)]
            self._luts.append(None if identity else lut)
        self._ends = []
        total = 0
        for d in self.datasets:
            total += len(d)
            self._ends.append(total)

    @property
    def decode_max_side(self) -> int | None:
        return getattr(self.datasets[0], "decode_max_side", None)

    @decode_max_side.setter
    def decode_max_side(self, value: int | None) -> None:
        for d in self.datasets:
            if hasattr(d, "decode_max_side"):
                d.decode_max_side = value

    def _locate(self, index: int) -> tuple[Any, int, Tensor | None]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        k = bisect.bisect_right(self._ends, index)
        start = self._ends[k - 1] if k else 0
        return self.datasets[k], index - start, self._luts[k]

    @property
    def image_ids(self) -> list[str]:
        out = []
        for k, d in enumerate(self.datasets):
            ids = getattr(d, "image_ids", None) or [str(i) for i in range(len(d))]
            out += [f"{k}:{i}" for i in ids]
        return out

    def get_target(self, index: int) -> dict[str, Any]:
        target = super().get_target(index)
        target["image_id"] = f"{bisect.bisect_right(self._ends, index)}:{target['image_id']}"
        return target

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]] | None:
        item = super().__getitem__(index)
        if item is not None:
            item[1]["image_id"] = f"{bisect.bisect_right(self._ends, index)}:{item[1]['image_id']}"
        return item

    def __len__(self) -> int:
        return self._ends[-1]

    def __repr__(self) -> str:
        return f"DetectionConcat({', '.join(repr(d) for d in self.datasets)})"
