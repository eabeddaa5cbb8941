"""PASCAL VOC layout reader (``Annotations/*.xml``, ``JPEGImages/*``, ``ImageSets/Main/<split>.txt``).

Coordinate convention. VOC (and labelImg) store 1-based, inclusive integer pixel indices: a box covering the
first column has ``xmin = 1`` and one covering the whole width has ``xmax = W``. :class:`VOCDetection` returns
continuous pixel coordinates in ``[0, W] x [0, H]`` (the corners of pixel edges):

    ``x1 = xmin - 1``, ``y1 = ymin - 1``, ``x2 = xmax``, ``y2 = ymax``

so a box's width is ``xmax - xmin + 1`` pixels and a box over the whole image is ``[0, 0, W, H]``.
:func:`xyxy_to_voc` is the exact inverse, used when writing VOC files. A box with ``xmax <= xmin`` or
``ymax <= ymin`` in the file is degenerate and dropped (with a warning); one that extends outside the image is
clipped.

EXIF orientation: see :mod:`multibox.data.image_io`; images come out upright and boxes follow them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import torch
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as defused_fromstring
from torch import Tensor

from multibox.data.checks import DatasetError, Issue, IssueLog, OnError, check_boxes
from multibox.data.image_io import (
    ExifPolicy,
    ImageInfo,
    orient_boxes,
    probe_image,
    resolve_orientation,
)
from multibox.data.records import ImageRecord, RecordDataset
from multibox.io.regular import read_bytes, read_text, xml_encoding_hint

__all__ = [
    "IMAGE_EXTENSIONS",
    "VOC_CLASSES",
    "VOCAnnotation",
    "VOCDetection",
    "find_image",
    "parse_voc_xml",
    "read_split",
    "voc_to_xyxy",
    "xyxy_to_voc",
]

#: The 20 PASCAL VOC classes in the order of the devkit (labels 1..20; 0 is the background).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

#: Extensions tried (case-insensitively) when ``<filename>`` does not name an existing file.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


@dataclass(frozen=True)
class VOCAnnotation:
    """The content of one VOC XML file, as written (no conversion, no validation of boxes).

    Attributes:
        file: the XML file.
        filename: ``<filename>``, or None when absent.
        size: ``(width, height)`` from ``<size>``, or None when absent or zero.
        names: ``<name>`` of each object (whitespace stripped).
        boxes: ``Tensor[N, 4]`` float64 ``(xmin, ymin, xmax, ymax)`` as written (1-based, inclusive).
        difficult: ``Tensor[N]`` bool ``<difficult>`` flags (absent means 0).
    """

    file: Path
    filename: str | None
    size: tuple[int, int] | None
    names: list[str]
    boxes: Tensor
    difficult: Tensor


def voc_to_xyxy(boxes: Tensor) -> Tensor:
    """VOC 1-based inclusive ``(xmin, ymin, xmax, ymax)`` ``Tensor[N, 4]`` to continuous pixel xyxy."""
    return boxes - torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=boxes.dtype)


def xyxy_to_voc(boxes: Tensor) -> Tensor:
    """Continuous pixel xyxy ``Tensor[N, 4]`` to VOC 1-based inclusive corners (the inverse of :func:`voc_to_xyxy`)."""
    return boxes + torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=boxes.dtype)


def _text(node: Element, tag: str, file: Path, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DatasetError(f"{file}: {where} has no <{tag}>")
    return child.text.strip()


def _number(node: Element, tag: str, file: Path, where: str) -> float:
    text = _text(node, tag, file, where)
    try:
        return float(text)
    except ValueError:
        raise DatasetError(f"{file}: {where} <{tag}> is not a number: {text!r}") from None


def parse_voc_xml(path: str | Path) -> VOCAnnotation:
    """Parse one VOC annotation file with defusedxml (entity expansion, i.e. XML bombs, is refused).

    Only a regular file is read (a named pipe would block the parser); the encoding is the XML declaration's, else
    UTF-8.

    Raises:
        DatasetError: the file is unreadable or not a regular file, not well-formed XML (or not in its encoding),
            declares entities, or lacks a required element (``<name>``, ``<bndbox>`` and its four numeric corners);
            the message names the file.
    """
    file = Path(path)
    try:
        data = read_bytes(file)  # regular files only: a FIFO would block the parser forever
    except OSError as exc:
        raise DatasetError(f"{file}: cannot read annotation: {exc}") from exc
    try:
        root = defused_fromstring(data)
    except DefusedXmlException as exc:
        raise DatasetError(f"{file}: refused to parse, the XML declares entities or a DTD ({exc!r})") from exc
    except ParseError as exc:
        raise DatasetError(f"{file}: malformed XML: {exc}{xml_encoding_hint(data)}") from exc
    if root.tag != "annotation":
        raise DatasetError(f"{file}: root element is <{root.tag}>, expected <annotation>")
    filename = root.findtext("filename")
    filename = filename.strip() if filename and filename.strip() else None
    size = None
    size_node = root.find("size")
    if size_node is not None and size_node.find("width") is not None and size_node.find("height") is not None:
        width = int(_number(size_node, "width", file, "<size>"))
        height = int(_number(size_node, "height", file, "<size>"))
        size = (width, height) if width > 0 and height > 0 else None
    names, boxes, difficult = [], [], []
    for k, obj in enumerate(root.iter("object")):
        where = f"object {k}"
        names.append(_text(obj, "name", file, where))
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DatasetError(f"{file}: {where} ({names[-1]!r}) has no <bndbox>")
        boxes.append([_number(bnd, t, file, f"{where} <bndbox>") for t in ("xmin", "ymin", "xmax", "ymax")])
        flag = (obj.findtext("difficult") or "0").strip()
        difficult.append(flag not in ("0", "", "false", "False"))
    return VOCAnnotation(
        file,
        filename,
        size,
        names,
        torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
        torch.tensor(difficult, dtype=torch.bool),
    )


def read_split(root: str | Path, split: str) -> list[str]:
    """Image ids listed in ``ImageSets/Main/<split>.txt`` (first column; blank lines ignored).

    The file is UTF-8, with or without a byte-order mark (Windows Notepad writes one).

    Raises:
        DatasetError: the file is missing, not a regular file, or not UTF-8; the message names the file and, for an
            encoding problem, the first bad byte with its line and column.
    """
    path = Path(root) / "ImageSets" / "Main" / f"{split}.txt"
    try:
        lines = read_text(path).splitlines()
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read split file: {exc}") from exc
    return [line.split()[0] for line in lines if line.strip()]


def find_image(images_dir: Path, filename: str | None, image_id: str, listing: dict[str, str]) -> Path | None:
    """Locate the image of an annotation.

    Tries ``<filename>`` as written, then ``<filename>`` case-insensitively, then ``<image_id>`` with each of
    :data:`IMAGE_EXTENSIONS` case-insensitively (``.JPG``, ``.jpeg`` ...).

    Args:
        images_dir: the ``JPEGImages`` folder.
        filename: the annotation's ``<filename>`` (a path's last component is used), or None.
        image_id: the file stem from the split list.
        listing: ``{name.lower(): name}`` of the files in ``images_dir``.

    Returns:
        The path, or None when nothing matches.
    """
    candidates = []
    if filename:
        candidates.append(filename.replace("\\", "/").rsplit("/", 1)[-1])
    candidates += [image_id + ext for ext in IMAGE_EXTENSIONS]
    for name in candidates:
        if (images_dir / name).is_file():  # exact spelling first: a folder may hold both a.JPG and a.jpg
            return images_dir / name
        found = listing.get(name.lower())
        if found is not None:
            return images_dir / found
    return None


class VOCDetection(RecordDataset):
    """A detection dataset in PASCAL VOC layout.

    Items are ``(image, target)``: ``image`` is an upright RGB ``uint8`` ``Tensor[3, H, W]`` and ``target`` a dict

    - ``"boxes"``: ``Tensor[N, 4]`` float32 xyxy in continuous pixels (see the module docstring),
    - ``"labels"``: ``Tensor[N]`` int64 in ``1..K`` for ``classes[0..K-1]`` (0 is the background),
    - ``"difficult"``: ``Tensor[N]`` bool (all False unless ``keep_difficult``),
    - ``"image_id"``: the id from the split list (``str``),
    - ``"orig_size"``: ``Tensor[2]`` int64 ``(H, W)`` of the image.

    All annotations of the split are parsed and validated when the dataset is built, and every image's header is
    read (which also finds truncated JPEG and PNG files from their last bytes); images are decoded only by
    ``__getitem__``. Error policy (``on_error``; see :mod:`multibox.data.checks`):

    - when the dataset is built, a file that cannot be used (malformed or missing annotation, unknown class,
      missing, unreadable or truncated image, a named pipe...) raises :class:`DatasetError` naming the file, or
      under ``"skip"`` is left out and listed with its reason in the dataset's one :class:`DatasetWarning`
      (``self.log`` keeps them all);
    - when an item is read, an image that turns out not to decode (corrupt data, bad CRC, replaced file) raises
      :class:`DatasetError` naming the file and the reason, or under ``"skip"`` gives ``None`` with a
      :class:`DatasetWarning` naming them: :func:`multibox.data.collate` leaves such items out of their batch.
      Nothing is substituted for a bad image.

    Args:
        root: the folder holding ``Annotations/``, ``JPEGImages/`` and ``ImageSets/Main/``.
        split: the split file's stem (``"train"``, ``"test"``, ``"trainval"``...), or None for every XML file in
            ``Annotations/``.
        classes: the class names (label ``k + 1`` is ``classes[k]``); an object of another class is an error.
            None collects the names of every file in ``Annotations/`` (not only the split's, so that every split
            of a root gets the same labels), sorted; when no file has an object this is an error that says so.
        keep_difficult: keep objects marked ``difficult`` (needed by VOC evaluation, which ignores them).
        on_error: ``"raise"`` on a file that cannot be used, or ``"skip"`` it with a warning (see above).
        exif: how boxes relate to EXIF-rotated images (``"auto"``, ``"stored"``, ``"displayed"``; see
            :mod:`multibox.data.image_io`).

    Attributes:
        decode_max_side: None, or a longer side that items need no more than (set by a training pipeline): large
            JPEGs are then decoded at 1/2, 1/4 or 1/8 size (:func:`~multibox.data.image_io.decode_image`) with
            their boxes scaled along (``orig_size`` stays the file's size).
    """

    decode_max_side: int | None = None

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        classes: Sequence[str] | None = None,
        keep_difficult: bool = False,
        on_error: OnError = "raise",
        exif: ExifPolicy = "auto",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.root = Path(root)
        self.split = split
        self.keep_difficult = keep_difficult
        self.on_error: OnError = on_error
        ann_dir, img_dir = self.root / "Annotations", self.root / "JPEGImages"
        for d in (ann_dir, img_dir):
            if not d.is_dir():
                raise DatasetError(f"{self.root}: not a VOC layout, {d.name}/ is missing")
        ids = read_split(self.root, split) if split is not None else sorted(p.stem for p in ann_dir.glob("*.xml"))
        parsed: dict[str, VOCAnnotation | DatasetError] = {}

        def parse(image_id: str) -> VOCAnnotation | DatasetError:
            if image_id not in parsed:
                try:
                    parsed[image_id] = parse_voc_xml(ann_dir / f"{image_id}.xml")
                except DatasetError as exc:
                    parsed[image_id] = exc
            return parsed[image_id]

        collect = classes is None
        if collect:
            names = set()
            for p in sorted(ann_dir.glob("*.xml")):
                ann = parse(p.stem)
                if isinstance(ann, VOCAnnotation):
                    names.update(ann.names)
            classes = sorted(names)
        self.classes: tuple[str, ...] = tuple(classes)
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes has duplicates: {list(self.classes)}")
        self.class_to_label = {name: k + 1 for k, name in enumerate(self.classes)}
        listing = {name.lower(): name for name in os.listdir(img_dir)}
        self.log = IssueLog()
        self._records: list[ImageRecord] = []
        for image_id in ids:
            try:
                record = self._load_record(image_id, parse(image_id), img_dir, listing, exif)
            except DatasetError as exc:
                if on_error == "raise":
                    raise
                self.log.add(Issue("skipped_file", f"{image_id}", str(exc), severity="error"))
                continue
            self._records.append(record)
        self.log.warn(repr(self))
        if collect and not self.classes:
            where = f"{self.root} (split {split!r})" if split is not None else str(self.root)
            raise DatasetError(
                f"no image in {where} has a box: {len(self._records)} image(s) read, and no annotation file in "
                "Annotations/ has an <object>, so there are no classes to learn; pass classes=[...] to read the "
                "images as negatives"
            )

    def _load_record(
        self,
        image_id: str,
        ann: VOCAnnotation | DatasetError,
        img_dir: Path,
        listing: dict[str, str],
        exif: ExifPolicy,
    ) -> ImageRecord:
        if isinstance(ann, DatasetError):
            raise ann
        for k, name in enumerate(ann.names):
            if name not in self.class_to_label:
                raise DatasetError(
                    f"{ann.file}: object {k} has class {name!r}, which is not one of the classes {list(self.classes)}"
                )
        path = find_image(img_dir, ann.filename, image_id, listing)
        if path is None:
            raise DatasetError(f"{ann.file}: image {ann.filename or image_id!r} not found in {img_dir}")
        try:
            info = probe_image(path)
        except OSError as exc:
            raise DatasetError(str(exc)) from exc
        boxes, size = self._upright_boxes(ann, info, exif)
        degenerate = (ann.boxes[:, 2] <= ann.boxes[:, 0]) | (ann.boxes[:, 3] <= ann.boxes[:, 1])
        check = check_boxes(boxes, *size, degenerate=degenerate)
        self.log.extend(check.issues(str(ann.file)))
        keep = check.keep if self.keep_difficult else check.keep & ~ann.difficult
        labels = torch.tensor([self.class_to_label[n] for n in ann.names], dtype=torch.int64)
        return ImageRecord(image_id, path, size, check.boxes[keep], labels[keep], ann.difficult[keep])

    def _upright_boxes(self, ann: VOCAnnotation, info: ImageInfo, exif: ExifPolicy) -> tuple[Tensor, tuple[int, int]]:
        """Boxes in continuous pixels of the upright image, and its ``(width, height)``."""
        boxes = voc_to_xyxy(ann.boxes)
        if ann.size is not None and ann.size not in (info.stored_size, info.size):
            self.log.add(
                Issue(
                    "size_mismatch",
                    str(ann.file),
                    f"<size> says {ann.size[0]}x{ann.size[1]} but the image is {info.size[0]}x{info.size[1]}; "
                    "boxes taken as pixels of the image",
                )
            )
        if resolve_orientation(info, ann.size, exif):
            boxes = orient_boxes(boxes, info.orientation, info.stored_size)
        return boxes, info.size

    def __repr__(self) -> str:
        return f"VOCDetection(root={str(self.root)!r}, split={self.split!r}, images={len(self._records)})"
