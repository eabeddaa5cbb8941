"""YOLO-format reader and writer: one ``.txt`` label file per image, a line ``class cx cy w h`` per box.

Layout (the Ultralytics/darknet convention). A dataset is either

- a ``data.yaml`` with ``names`` (a list, or a mapping ``id: name``), an optional ``path`` (the root, relative to
  the YAML's folder) and the splits ``train``/``val``/``test``, each an images folder, a ``.txt`` list of image
  paths, or a list of either (relative to the root); or
- a folder with ``images/`` and ``labels/`` (either flat, one split ``train``, or with one sub-folder per split:
  ``images/train``, ``images/val``...) and a class list, one name a line, in ``classes.txt``, ``obj.names`` or
  ``names.txt``.

An image's label file is found by replacing the last ``images`` folder of its path by ``labels`` and its extension
by ``.txt``. Class ids count from 0 (label ``id + 1`` here: 0 is the background); ``cx cy w h`` are fractions of
the upright image's width and height. Validation follows the VOC reader's policy (:mod:`multibox.data.checks`): a
malformed line (not five numbers, a class id that is not an integer in range) is an error naming the file and the
line, or under ``on_error="skip"`` the image is left out and listed; boxes outside the image are clipped and
degenerate ones dropped, with one warning; images without a label file are read as images without boxes, with one
warning saying how many.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from multibox.data.checks import DatasetError, DatasetWarning, Issue, IssueLog, OnError, check_boxes
from multibox.data.image_io import probe_image
from multibox.data.records import ImageRecord, RecordDataset
from multibox.data.voc import IMAGE_EXTENSIONS
from multibox.io.regular import read_text
from multibox.user_input import parse_yaml

__all__ = [
    "CLASS_LIST_FILES",
    "YOLODataset",
    "YOLODetection",
    "label_path",
    "parse_yolo_labels",
    "read_yolo_dataset",
    "write_yolo",
]

#: Files a plain ``images/`` + ``labels/`` folder may keep its class names in (one name a line).
CLASS_LIST_FILES: tuple[str, ...] = ("classes.txt", "obj.names", "names.txt")


@dataclass(frozen=True)
class YOLODataset:
    """A YOLO dataset description: its class names and the image files of each split.

    Attributes:
        source: the ``data.yaml`` or the folder it was read from.
        classes: the class names (class id ``k`` is ``classes[k]``).
        splits: split name -> image files (sorted).
        root: the folder image ids are relative to.
    """

    source: Path
    classes: tuple[str, ...]
    splits: dict[str, list[Path]]
    root: Path


def label_path(image: Path) -> Path:
    """The label file of ``image``: the last ``images`` folder of its path replaced by ``labels``, suffix ``.txt``."""
    parts = list(image.parts)
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images":
            parts[k] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")  # darknet: the label beside the image


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _split_images(entry: Any, root: Path, where: str) -> list[Path]:
    """The image files an entry of ``data.yaml`` names (a folder, a ``.txt`` list, or a list of those)."""
    if isinstance(entry, list):
        return sorted({p for e in entry for p in _split_images(e, root, where)})
    if not isinstance(entry, str):
        raise DatasetError(f"{where}: expected a folder, a .txt list or a list of them, got {entry!r}")
    path = Path(entry) if Path(entry).is_absolute() else root / entry
    if path.is_dir():
        return _images_in(path)
    if path.is_file() and path.suffix == ".txt":
        lines = [line.strip() for line in read_text(path).splitlines() if line.strip()]
        return [Path(s) if Path(s).is_absolute() else (root / s) for s in lines]
    raise DatasetError(f"{where}: {path} is neither a folder of images nor a .txt list of images")


def _names(raw: Any, where: str) -> tuple[str, ...]:
    if isinstance(raw, dict):
        keys = sorted(raw)
        if keys != list(range(len(keys))):
            raise DatasetError(f"{where}: names must be numbered 0..{len(keys) - 1}, got ids {keys[:10]}")
        raw = [raw[k] for k in keys]
    if not isinstance(raw, list) or not raw or not all(isinstance(n, str | int) for n in raw):
        raise DatasetError(f"{where}: 'names' must be a non-empty list of class names (or a mapping id: name)")
    names = tuple(str(n) for n in raw)
    if len(set(names)) != len(names):
        raise DatasetError(f"{where}: duplicate class names in {list(names)}")
    return names


def _read_yaml(path: Path) -> YOLODataset:
    try:
        tree = parse_yaml(read_text(path), str(path))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read the dataset YAML: {exc}") from exc
    if not isinstance(tree, dict) or "names" not in tree:
        raise DatasetError(f"{path}: not a YOLO data.yaml (a mapping with 'names' and 'train'/'val' entries)")
    root = path.parent / str(tree.get("path") or ".")
    if not root.is_dir():
        root = path.parent  # a 'path' written for another machine: the YAML's own folder
    classes = _names(tree["names"], str(path))
    if "nc" in tree and tree["nc"] != len(classes):
        raise DatasetError(f"{path}: nc is {tree['nc']} but 'names' has {len(classes)} entries")
    splits = {s: _split_images(tree[s], root, f"{path} ({s})") for s in ("train", "val", "test") if tree.get(s)}
    if "train" not in splits:
        raise DatasetError(f"{path}: names no 'train' images")
    images = root / "images"
    return YOLODataset(path, classes, splits, images if images.is_dir() else root)


def _read_folder(root: Path) -> YOLODataset:
    images = root / "images"
    if not images.is_dir() or not (root / "labels").is_dir():
        raise DatasetError(f"{root}: not a YOLO dataset (no data.yaml, and no images/ + labels/ folders)")
    lists = [root / name for name in CLASS_LIST_FILES if (root / name).is_file()]
    if not lists:
        raise DatasetError(f"{root}: a YOLO folder needs its class names: one a line in one of {CLASS_LIST_FILES}")
    classes = _names([line.strip() for line in read_text(lists[0]).splitlines() if line.strip()], str(lists[0]))
    subdirs = {p.name: p for p in images.iterdir() if p.is_dir()}
    named = {s: subdirs[s] for s in ("train", "val", "valid", "test") if s in subdirs}
    if "valid" in named:
        named.setdefault("val", named.pop("valid"))
    splits = {s: _images_in(d) for s, d in named.items()} if "train" in named else {"train": _images_in(images)}
    return YOLODataset(root, classes, splits, images)


def read_yolo_dataset(source: str | Path) -> YOLODataset:
    """Read a YOLO dataset's description from its ``data.yaml`` (or a folder holding one, or an ``images/`` +
    ``labels/`` folder with a class list).

    Raises:
        DatasetError: not a YOLO layout, no class names, a split entry that names nothing (the message names the file).
    """
    path = Path(source)
    if path.is_dir():
        yamls = [path / n for n in ("data.yaml", "dataset.yaml", "data.yml") if (path / n).is_file()]
        return _read_yaml(yamls[0]) if yamls else _read_folder(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such YOLO dataset (file or folder)")
    return _read_yaml(path)


def parse_yolo_labels(path: Path, num_classes: int) -> tuple[Tensor, Tensor]:
    """The boxes of one label file.

    Returns:
        ``(cxcywh Tensor[N, 4] float64 in [0, 1] units, class ids Tensor[N] int64 in 0..num_classes-1)``.

    Raises:
        DatasetError: a line without exactly five numbers, a class id that is not an integer in range, or a
            non-finite value; the message names the file and the line.
    """
    rows, ids = [], []
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            hint = " (a confidence column? labels have no score)" if len(fields) == 6 else ""
            hint = " (a segmentation polygon? only boxes are read)" if len(fields) > 6 else hint
            raise DatasetError(
                f"{path}: line {n} has {len(fields)} values, expected 5 (class cx cy w h){hint}: {line.strip()[:80]!r}"
            )
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise DatasetError(f"{path}: line {n} holds a value that is not a number: {line.strip()[:80]!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise DatasetError(f"{path}: line {n} holds a non-finite value: {line.strip()[:80]!r}")
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < num_classes:
            raise DatasetError(
                f"{path}: line {n}: class id {fields[0]} is not an integer in 0..{num_classes - 1} "
                f"({num_classes} classes)"
            )
        ids.append(int(cls))
        rows.append(values[1:])
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 4), torch.tensor(ids, dtype=torch.int64)


class YOLODetection(RecordDataset):
    """A detection dataset in YOLO format; items as :class:`~multibox.data.VOCDetection`'s.

    Args:
        source: a ``data.yaml``, a folder holding one, or an ``images/`` + ``labels/`` folder with a class list.
        split: ``train``, ``val`` or ``test`` (an entry of the YAML, or a sub-folder of ``images/``).
        classes: the class names, in label order, to read with; default the dataset's own. The dataset's class
            ids must name these classes (it may name fewer).
        on_error: ``"raise"`` on an unusable file or ``"skip"`` it (listed in the one warning).

    Attributes:
        decode_max_side: as :class:`~multibox.data.VOCDetection`'s.
        missing_labels: how many images had no label file (read as images without boxes).
    """

    decode_max_side: int | None = None

    def __init__(
        self,
        source: str | Path,
        split: str = "train",
        classes: Sequence[str] | None = None,
        on_error: OnError = "raise",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        info = read_yolo_dataset(source)
        if split not in info.splits:
            raise DatasetError(f"{info.source}: no split {split!r}; it has {sorted(info.splits)}")
        own = info.classes
        self.classes: tuple[str, ...] = tuple(classes) if classes is not None else own
        unknown = [n for n in own if n not in self.classes]
        if unknown:
            raise DatasetError(f"{info.source}: class(es) {unknown} are not among the classes {list(self.classes)}")
        self._lut = torch.tensor([self.classes.index(n) + 1 for n in own], dtype=torch.int64)
        self.source, self.split, self.on_error, self.root = info.source, split, on_error, info.root
        self.log = IssueLog()
        self.missing_labels = 0
        self._records: list[ImageRecord] = []
        for path in info.splits[split]:
            try:
                self._records.append(self._load_record(path, len(own)))
            except DatasetError as exc:
                if on_error == "raise":
                    raise
                self.log.add(Issue("skipped_file", str(path), str(exc), severity="error"))
        self.log.warn(repr(self))
        if self.missing_labels:
            warnings.warn(
                f"{self!r}: {self.missing_labels} image(s) have no label file; read as images without boxes",
                DatasetWarning,
                stacklevel=2,
            )

    def _load_record(self, path: Path, num_own: int) -> ImageRecord:
        if not path.is_file():
            raise DatasetError(f"{path}: image listed by {self.source} not found")
        try:
            size = probe_image(path).size
        except OSError as exc:
            raise DatasetError(str(exc)) from exc
        labels_file = label_path(path)
        if labels_file.is_file():
            cxcywh, ids = parse_yolo_labels(labels_file, num_own)
        else:
            self.missing_labels += 1
            cxcywh, ids = torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
        w, h = size
        half = cxcywh[:, 2:] / 2
        xyxy = torch.cat((cxcywh[:, :2] - half, cxcywh[:, :2] + half), dim=1)  # (N, 4) cxcywh -> xyxy, [0, 1]
        xyxy = xyxy * torch.tensor([w, h, w, h], dtype=torch.float64)
        check = check_boxes(xyxy, w, h)
        self.log.extend(check.issues(str(labels_file)))
        image_id = (
            path.relative_to(self.root).with_suffix("").as_posix() if path.is_relative_to(self.root) else path.stem
        )
        labels = self._lut[ids][check.keep]
        return ImageRecord(
            image_id, path, size, check.boxes[check.keep], labels, torch.zeros(len(labels), dtype=torch.bool)
        )

    def __repr__(self) -> str:
        return f"YOLODetection(source={str(self.source)!r}, split={self.split!r}, images={len(self._records)})"


def write_yolo(
    dataset: Any, root: str | Path, split: str, classes: Sequence[str] | None = None, ext: str = ".png"
) -> list[str]:
    """Write a dataset's items in YOLO layout: ``images/<split>/<id><ext>``, ``labels/<split>/<id>.txt``, and a
    ``data.yaml`` listing every split written so far (updated).

    Args:
        dataset: items ``(uint8 Tensor[3, H, W], target)`` with pixel ``"boxes"`` and ``"labels"`` in 1..K.
        root: the output folder (created).
        split: the split name.
        classes: label ``k`` is ``classes[k - 1]``; default ``dataset.classes``.
        ext: the image format's suffix (``.png`` lossless, ``.jpg``).

    Returns:
        The ids written, in order.
    """
    import yaml
    from PIL import Image

    names = list(classes if classes is not None else dataset.classes)
    root = Path(root)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    ids = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        image_id = str(target.get("image_id", f"{index:06d}")).replace("/", "_")
        h, w = image.shape[-2:]
        Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(root / "images" / split / f"{image_id}{ext}")
        b = target["boxes"].double()
        cxcywh = torch.stack(((b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
                              (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h), dim=1)  # fmt: skip
        lines = [f"{int(k) - 1} " + " ".join(f"{v:.6f}" for v in row) for k, row in
                 zip(target["labels"].tolist(), cxcywh.tolist(), strict=True)]  # fmt: skip
        (root / "labels" / split / f"{image_id}.txt").write_text("".join(line + "\n" for line in lines))
        ids.append(image_id)
    yaml_path = root / "data.yaml"
    tree = yaml.safe_load(yaml_path.read_text()) if yaml_path.is_file() else {}
    tree = {**(tree or {}), "path": ".", split: f"images/{split}", "names": names}
    yaml_path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return ids
