"""Scan a dataset and report every problem at once (the function behind ``multibox scan``).

Where the readers stop at the first unusable file (or skip it), :func:`scan_dataset` keeps going and returns a
:class:`ScanReport`: errors (files a reader would refuse), warnings (boxes it would clip or drop) and notes
(grayscale or EXIF-rotated images, byte-identical duplicates, boxes on the image edge), plus counts.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from multibox.data.checks import DatasetError, Issue, check_boxes
from multibox.data.coco_json import coco_problems, read_coco_json, usable_entries
from multibox.data.image_io import ImageInfo, decode_image, orient_boxes, probe_image, resolve_orientation
from multibox.data.voc import VOCAnnotation, find_image, parse_voc_xml, read_split, voc_to_xyxy
from multibox.io.regular import read_bytes

__all__ = ["ScanReport", "is_yolo_layout", "scan_dataset"]

_EXAMPLES_PER_KIND = 8


@dataclass
class ScanReport:
    """What :func:`scan_dataset` found.

    Attributes:
        root: the dataset scanned.
        format: ``"voc"``, ``"coco"`` or ``"yolo"``.
        num_images: annotated images examined.
        num_boxes: boxes that a reader would keep (after clipping; difficult and crowd included).
        class_counts: boxes per class name.
        image_sizes: ``(width, height)`` of the upright images -> count.
        modes: Pillow image mode -> count.
        issues: every problem and note, in the order found.
    """

    root: str
    format: str
    num_images: int = 0
    num_boxes: int = 0
    class_counts: Counter = field(default_factory=Counter)
    image_sizes: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)
    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when no file would be refused by the readers (warnings and notes allowed)."""
        return not self.errors

    def kinds(self) -> Counter:
        """Issue kind -> total count."""
        out: Counter = Counter()
        for i in self.issues:
            out[i.kind] += i.count
        return out

    def __str__(self) -> str:
        sizes = self.image_sizes
        lines = [
            f"scan of {self.root} ({self.format}): {self.num_images} images, {self.num_boxes} boxes, "
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)",
            "  classes: " + (", ".join(f"{k} {v}" for k, v in sorted(self.class_counts.items())) or "none"),
        ]
        if sizes:
            ws = [w for w, _ in sizes]
            hs = [h for _, h in sizes]
            common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(3))
            lines.append(
                f"  image sizes: {len(sizes)} distinct, width {min(ws)}-{max(ws)}, height {min(hs)}-{max(hs)}; "
                f"most common {common}"
            )
        if self.modes:
            lines.append("  modes: " + ", ".join(f"{m} {n}" for m, n in self.modes.most_common()))
        grouped: dict[tuple[str, str], list[Issue]] = defaultdict(list)
        for issue in self.issues:
            grouped[(issue.severity, issue.kind)].append(issue)
        order = {"error": 0, "warning": 1, "info": 2}
        for (severity, kind), issues in sorted(grouped.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
            total = sum(i.count for i in issues)
            lines.append(f"  {severity} {kind}: {total} in {len(issues)} file(s)")
            lines += [f"    {i}" for i in issues[:_EXAMPLES_PER_KIND]]
            if len(issues) > _EXAMPLES_PER_KIND:
                lines.append(f"    ... and {len(issues) - _EXAMPLES_PER_KIND} more")
        if not self.issues:
            lines.append("  no problems found")
        return "\n".join(lines)


def _usable_image(report: ScanReport, path: Path, decode: bool) -> ImageInfo | None:
    """The image's header, with its notes recorded; None (an error recorded) when it cannot be read."""
    try:
        info = probe_image(path)
    except OSError as exc:
        report.issues.append(Issue("unreadable_image", str(path), str(exc).removeprefix(f"{path}: "), 1, "error"))
        return None
    return info if _image_notes(report, path, info, decode) else None


def _image_notes(report: ScanReport, path: Path, info: ImageInfo, decode: bool) -> bool:
    """Record the image's mode/size/orientation; False when it cannot be decoded (an error is recorded)."""
    report.modes[info.mode] += 1
    report.image_sizes[info.size] += 1
    if info.mode != "RGB":
        report.issues.append(Issue("non_rgb_image", str(path), f"mode {info.mode}, converted to RGB", 1, "info"))
    if info.orientation != 1:
        report.issues.append(
            Issue("exif_rotated", str(path), f"EXIF orientation {info.orientation}, read upright", 1, "info")
        )
    if decode:
        try:
            decode_image(path)
        except OSError as exc:
            report.issues.append(Issue("corrupt_image", str(path), str(exc).removeprefix(f"{path}: "), 1, "error"))
            return False
    return True


def _duplicates(report: ScanReport, paths: Sequence[Path], boxes_of: dict[Path, torch.Tensor]) -> None:
    groups: dict[str, list[Path]] = defaultdict(list)
    for p in paths:
        try:
            groups[hashlib.sha1(read_bytes(p), usedforsecurity=False).hexdigest()].append(p)
        except OSError:
            continue
    for group in groups.values():
        if len(group) > 1:
            names = ", ".join(p.name for p in group)
            first = boxes_of.get(group[0])
            same = all(
                first is not None
                and (b := boxes_of.get(p)) is not None
                and b.shape == first.shape
                and torch.equal(b, first)
                for p in group[1:]
            )
            note = "with identical boxes" if same else "with different boxes"
            report.issues.append(
                Issue("duplicate_image", str(group[0]), f"byte-identical images {names} ({note})", len(group), "info")
            )


def _scan_voc(root: Path, split: str | None, classes: Sequence[str] | None, decode: bool, report: ScanReport) -> None:
    ann_dir, img_dir = root / "Annotations", root / "JPEGImages"
    ids = _voc_ids(root, ann_dir, img_dir, split, report)
    if ids is None:
        return
    listing = {name.lower(): name for name in os.listdir(img_dir)}
    known = set(classes) if classes is not None else None
    used_images, boxes_of, referenced = [], {}, set()
    for image_id in ids:
        file = ann_dir / f"{image_id}.xml"
        ann = _voc_annotation(file, known, report)
        if ann is None:
            continue
        path = find_image(img_dir, ann.filename, image_id, listing)
        if path is None:
            report.issues.append(
                Issue("missing_image", str(file), f"image {ann.filename or image_id!r} not found", 1, "error")
            )
            continue
        referenced.add(path.name)
        info = _usable_image(report, path, decode)
        if info is None:
            continue
        _voc_header_notes(file, ann, path, info, report)
        used_images.append(path)
        boxes_of[path] = _voc_boxes(file, ann, info, report)
    if split is None:
        _unannotated_images(img_dir, listing, referenced, report)
    _duplicates(report, used_images, boxes_of)


def _voc_ids(root: Path, ann_dir: Path, img_dir: Path, split: str | None, report: ScanReport) -> list[str] | None:
    """The image ids to scan (the split's, or every annotation's); None (errors recorded) when the folders or the
    split cannot be read."""
    for d in (ann_dir, img_dir):
        if not d.is_dir():
            report.issues.append(Issue("bad_layout", str(d), "folder missing", 1, "error"))
    if report.errors:
        return None
    if split is None:
        return sorted(p.stem for p in ann_dir.glob("*.xml"))
    try:
        return read_split(root, split)
    except DatasetError as exc:
        report.issues.append(
            Issue("bad_split", str(root / "ImageSets" / "Main" / f"{split}.txt"), str(exc), 1, "error")
        )
        return None


def _voc_annotation(file: Path, known: set[str] | None, report: ScanReport) -> VOCAnnotation | None:
    """The parsed annotation, with unknown class names recorded; None (an error recorded) when missing or
    unreadable."""
    if not file.exists():  # (a FIFO or folder exists: parse_voc_xml says it is not a regular file)
        report.issues.append(Issue("missing_annotation", str(file), "listed in the split but absent", 1, "error"))
        return None
    try:
        ann = parse_voc_xml(file)
    except DatasetError as exc:
        kind = "unreadable_annotation" if isinstance(exc.__cause__, OSError) else "malformed_annotation"
        report.issues.append(Issue(kind, str(file), str(exc).split(": ", 1)[-1], 1, "error"))
        return None
    if known is not None:
        unknown = sorted({n for n in ann.names if n not in known})
        if unknown:
            report.issues.append(Issue("unknown_class", str(file), f"unknown class(es) {unknown}", 1, "error"))
    return ann


def _voc_header_notes(file: Path, ann: VOCAnnotation, path: Path, info: ImageInfo, report: ScanReport) -> None:
    """Record where the annotation's ``<filename>`` or ``<size>`` disagree with the image found."""
    if ann.filename and ann.filename.replace("\\", "/").rsplit("/", 1)[-1] != path.name:
        report.issues.append(
            Issue("filename_differs", str(file), f"<filename> {ann.filename!r} resolved to {path.name}", 1, "info")
        )
    if ann.size is not None and ann.size not in (info.stored_size, info.size):
        report.issues.append(
            Issue("size_mismatch", str(file), f"<size> {ann.size} but the image is {info.size}", 1, "warning")
        )


def _voc_boxes(file: Path, ann: VOCAnnotation, info: ImageInfo, report: ScanReport) -> torch.Tensor:
    """Check the annotation's boxes against the (upright) image, count the kept ones and their classes; returns the
    kept boxes (xyxy pixels)."""
    boxes = voc_to_xyxy(ann.boxes)
    if resolve_orientation(info, ann.size, "auto"):
        boxes = orient_boxes(boxes, info.orientation, info.stored_size)
    degenerate = (ann.boxes[:, 2] <= ann.boxes[:, 0]) | (ann.boxes[:, 3] <= ann.boxes[:, 1])
    check = check_boxes(boxes, *info.size, degenerate=degenerate)
    report.issues += check.issues(str(file))
    kept = check.boxes[check.keep]
    on_edge = int(
        ((kept[:, 0] <= 0) | (kept[:, 1] <= 0) | (kept[:, 2] >= info.size[0]) | (kept[:, 3] >= info.size[1])).sum()
    )
    if on_edge:
        report.issues.append(
            Issue("box_on_edge", str(file), f"{on_edge} box(es) touch the image edge", on_edge, "info")
        )
    n_difficult = int(ann.difficult[check.keep].sum())
    if n_difficult:
        report.issues.append(Issue("difficult", str(file), f"{n_difficult} difficult box(es)", n_difficult, "info"))
    report.num_images += 1
    report.num_boxes += int(check.keep.sum())
    report.class_counts.update(n for n, k in zip(ann.names, check.keep.tolist(), strict=True) if k)
    return kept


def _unannotated_images(img_dir: Path, listing: dict[str, str], referenced: set[str], report: ScanReport) -> None:
    """Note every image of the folder that no annotation refers to."""
    for name in sorted(listing.values()):
        if name not in referenced and Path(name).suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"):
            report.issues.append(
                Issue("unannotated_image", str(img_dir / name), "no annotation refers to it", 1, "info")
            )


def _scan_coco(images_dir: Path, annotation_json: Path, decode: bool, report: ScanReport) -> None:
    try:
        data = read_coco_json(annotation_json)
    except DatasetError as exc:
        kind = "unreadable_annotation" if isinstance(exc.__cause__, OSError) else "malformed_annotation"
        report.issues.append(Issue(kind, str(annotation_json), str(exc).split(": ", 1)[-1], 1, "error"))
        return
    problems = coco_problems(data, annotation_json)
    for p in problems:
        report.issues.append(
            Issue(f"bad_{p.kind}_entry", str(annotation_json), p.message.split(": ", 1)[-1], 1, "error")
        )
    names = {c["id"]: c["name"] for c in data["categories"]}
    images, per_image = usable_entries(data, problems)
    used_images, boxes_of = [], {}
    for img in images:
        path = images_dir / img["file_name"]
        where = f"{annotation_json} (image id {img['id']}, {img['file_name']})"
        if not path.exists():  # (a FIFO or folder exists: probing says it is not a regular file)
            report.issues.append(Issue("missing_image", where, f"image not found in {images_dir}", 1, "error"))
            continue
        info = _usable_image(report, path, decode)
        if info is None:
            continue
        size = (int(img["width"]), int(img["height"]))
        if size not in (info.stored_size, info.size):
            report.issues.append(
                Issue("size_mismatch", where, f"JSON size {size} but the image is {info.size}", 1, "warning")
            )
        anns = per_image[img["id"]]
        if not anns:
            report.issues.append(Issue("no_annotations", where, "no annotations (kept as a negative)", 1, "info"))
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        boxes = torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), dim=1)  # (N, 4) xywh -> xyxy
        check = check_boxes(boxes, *size, degenerate=(xywh[:, 2] <= 0) | (xywh[:, 3] <= 0))
        report.issues += check.issues(where)
        crowd = sum(a.get("iscrowd", 0) == 1 for a in anns)
        if crowd:
            report.issues.append(Issue("crowd", where, f"{crowd} crowd region(s)", crowd, "info"))
        report.num_images += 1
        report.num_boxes += int(check.keep.sum())
        report.class_counts.update(names[a["category_id"]] for a, k in zip(anns, check.keep.tolist(), strict=True) if k)
        used_images.append(path)
        boxes_of[path] = check.boxes[check.keep]
    _duplicates(report, used_images, boxes_of)


def _scan_yolo(source: Path, split: str | None, decode: bool, report: ScanReport) -> None:
    from multibox.data.yolo import label_path, parse_yolo_labels, read_yolo_dataset

    info = read_yolo_dataset(source)
    if split is not None and split not in info.splits:
        raise DatasetError(f"{info.source}: no split {split!r}; it has {sorted(info.splits)}")
    paths = sorted({p for s, ps in info.splits.items() if split in (None, s) for p in ps})
    used_images, boxes_of = [], {}
    for path in paths:
        if not path.exists():
            report.issues.append(
                Issue("missing_image", str(path), f"listed by {info.source} but not found", 1, "error")
            )
            continue
        image = _usable_image(report, path, decode)
        if image is None:
            continue
        labels = label_path(path)
        if not labels.is_file():
            report.issues.append(Issue("missing_label", str(path), "no label file (read as no boxes)", 1, "warning"))
            cxcywh, ids = torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
        else:
            try:
                cxcywh, ids = parse_yolo_labels(labels, len(info.classes))
            except DatasetError as exc:
                report.issues.append(Issue("malformed_label", str(labels), str(exc).split(": ", 1)[-1], 1, "error"))
                continue
        w, h = image.size
        half = cxcywh[:, 2:] / 2
        boxes = torch.cat((cxcywh[:, :2] - half, cxcywh[:, :2] + half), 1) * torch.tensor([w, h, w, h])  # cxcywh->xyxy
        check = check_boxes(boxes, w, h)
        report.issues += check.issues(str(labels))
        report.num_images += 1
        report.num_boxes += int(check.keep.sum())
        report.class_counts.update(info.classes[k] for k in ids[check.keep].tolist())
        used_images.append(path)
        boxes_of[path] = check.boxes[check.keep]
    _duplicates(report, used_images, boxes_of)


def is_yolo_layout(root: str | Path) -> bool:
    """Whether ``root`` looks like a YOLO dataset: a ``.yaml`` file, or a folder with ``data.yaml`` or ``labels/``."""
    root = Path(root)
    if root.is_file():
        return root.suffix.lower() in (".yaml", ".yml")
    return (root / "data.yaml").is_file() or ((root / "labels").is_dir() and (root / "images").is_dir())


def scan_dataset(
    root: str | Path,
    *,
    split: str | None = None,
    annotation_json: str | Path | None = None,
    classes: Sequence[str] | None = None,
    decode: bool = False,
) -> ScanReport:
    """Check a VOC-layout folder (or a COCO images folder + JSON, or a YOLO dataset) and report every problem at once.

    Args:
        root: the VOC root (``Annotations/``, ``JPEGImages/``...), the COCO images folder, or a YOLO ``data.yaml``
            or folder (:func:`is_yolo_layout`).
        split: a VOC or YOLO split to scan (default: every annotation file / every split).
        annotation_json: a COCO annotation file; when given, ``root`` is read as COCO's images folder.
        classes: the expected class names (VOC); other names are reported as errors.
        decode: also decode every image (finds truncated files; slower). Headers are always read.

    Returns:
        A :class:`ScanReport`; ``str(report)`` is a readable summary, ``report.ok`` says whether the readers
        would accept every file.
    """
    root = Path(root)
    if annotation_json is not None:
        report = ScanReport(str(annotation_json), "coco")
        _scan_coco(root, Path(annotation_json), decode, report)
    elif is_yolo_layout(root):
        report = ScanReport(str(root), "yolo")
        _scan_yolo(root, split, decode, report)
    else:
        report = ScanReport(str(root), "voc")
        _scan_voc(root, split, classes, decode, report)
    return report
