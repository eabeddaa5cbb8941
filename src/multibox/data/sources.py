"""A dataset YAML of ours that names the sources of each split, several roots and formats allowed.

.. code-block:: yaml

    classes: [aeroplane, bicycle, ...]       # optional: default, every training source's names in order
    train:                                   # one source or a list (the paper's 07+12)
      - {voc: VOCdevkit/VOC2007, split: trainval}
      - {voc: VOCdevkit/VOC2012, split: trainval}
    val: {voc: VOCdevkit/VOC2007, split: test}   # optional: none -> a held-out split of train
    test: {coco: annotations/test.json, images: images/test}   # optional

A source is ``voc: ROOT`` (``split``: an ``ImageSets/Main`` name, default: every annotation), ``coco: JSON`` with
``images: FOLDER``, or ``yolo: DATA_YAML_OR_FOLDER`` (``split``: default the key's name). Relative paths are relative
to the YAML's folder. Items of several sources are concatenated with one class list
(:class:`~multibox.data.combine.DetectionConcat`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from multibox.data.checks import DatasetError, OnError
from multibox.io.regular import read_text
from multibox.user_input import parse_yaml

__all__ = ["SOURCE_KINDS", "build_sources", "is_sources_yaml", "read_sources"]

#: The formats a source may be in.
SOURCE_KINDS: tuple[str, ...] = ("voc", "coco", "yolo")
_SPLITS = ("train", "val", "test")


def _load(path: Path) -> Any:
    try:
        return parse_yaml(read_text(path), str(path))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read the dataset YAML: {exc}") from exc


def is_sources_yaml(path: str | Path) -> bool:
    """Whether ``path`` is a dataset YAML of ours (a mapping whose ``train`` names sources)."""
    tree = _load(Path(path))
    if not isinstance(tree, dict) or "train" not in tree:
        return False
    entries = tree["train"] if isinstance(tree["train"], list) else [tree["train"]]
    return all(isinstance(e, dict) and any(k in e for k in SOURCE_KINDS) for e in entries)


def _source(entry: Any, base: Path, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: a source must be a mapping like {{voc: ROOT, split: trainval}}, got {entry!r}")
    kinds = [k for k in SOURCE_KINDS if k in entry]
    if len(kinds) != 1:
        raise DatasetError(f"{where}: a source names exactly one of {list(SOURCE_KINDS)}, got keys {sorted(entry)}")
    kind = kinds[0]
    allowed = {kind, "split", "images"} if kind == "coco" else {kind, "split"}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise DatasetError(f"{where}: unknown key(s) {unknown} in a {kind} source; known: {sorted(allowed)}")
    path = Path(str(entry[kind]))
    out = {"kind": kind, "path": path if path.is_absolute() else base / path, "split": entry.get("split")}
    if kind == "coco":
        if "images" not in entry:
            raise DatasetError(f"{where}: a coco source needs 'images: FOLDER' beside the JSON")
        images = Path(str(entry["images"]))
        out["images"] = images if images.is_absolute() else base / images
    return out


def read_sources(path: str | Path) -> tuple[tuple[str, ...] | None, dict[str, list[dict[str, Any]]]]:
    """Read a dataset YAML: ``(classes or None, {split: [source dicts]})``.

    Raises:
        DatasetError: not such a YAML, an unknown key, a source without exactly one format (the message names the file).
    """
    path = Path(path)
    tree = _load(path)
    if not isinstance(tree, dict) or "train" not in tree:
        raise DatasetError(f"{path}: a dataset YAML is a mapping with 'train' (and optionally 'val', 'test') sources")
    unknown = sorted(set(tree) - {"classes", *_SPLITS})
    if unknown:
        raise DatasetError(f"{path}: unknown key(s) {unknown}; known: classes, train, val, test")
    classes = tree.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise DatasetError(f"{path}: 'classes' must be a list of names")
    splits = {}
    for split in _SPLITS:
        if tree.get(split):
            entries = tree[split] if isinstance(tree[split], list) else [tree[split]]
            splits[split] = [_source(e, path.parent, f"{path} ({split})") for e in entries]
    return (tuple(classes) if classes else None), splits


def _reader(src: dict[str, Any], split: str, keep_difficult: bool, on_error: OnError) -> Any:
    from multibox.data.coco import COCODetection
    from multibox.data.voc import VOCDetection
    from multibox.data.yolo import YOLODetection

    if src["kind"] == "voc":
        return VOCDetection(src["path"], split=src["split"], keep_difficult=keep_difficult, on_error=on_error)
    if src["kind"] == "coco":
        return COCODetection(src["images"], src["path"], include_crowd=split != "train", on_error=on_error)
    return YOLODetection(src["path"], split=src["split"] or split, on_error=on_error)


def build_sources(
    path: str | Path,
    split: str,
    classes: Sequence[str] | None = None,
    keep_difficult: bool = False,
    on_error: OnError = "raise",
) -> Any:
    """The dataset of ``split`` (``train``, ``val`` or ``test``) of a dataset YAML: one reader, or their
    :class:`~multibox.data.combine.DetectionConcat`.

    Args:
        path: the dataset YAML.
        split: which of its splits.
        classes: the class list to number labels by (default the YAML's ``classes``, else the sources' names).
        keep_difficult: keep VOC ``difficult`` objects.
        on_error: the readers' policy for unusable files.

    Raises:
        DatasetError: the YAML has no such split, or a source's reader fails (naming its file).
    """
    from multibox.data.combine import DetectionConcat

    own, splits = read_sources(path)
    if split not in splits:
        raise DatasetError(f"{path}: names no {split!r} sources")
    readers = [_reader(s, split, keep_difficult, on_error) for s in splits[split]]
    names = classes if classes is not None else own
    if len(readers) == 1 and (names is None or tuple(names) == tuple(readers[0].classes)):
        return readers[0]
    return DetectionConcat(readers, names)
