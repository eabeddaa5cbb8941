"""Dataset-format detection: say what a path is (VOC folder, COCO JSON and its images, YOLO dataset, dataset YAML).

:func:`detect_format` returns a :class:`DataSource`, the ``data`` section entries that read the dataset and which
splits it names; :mod:`multibox.engine.owndata` composes a training run from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multibox.data.checks import DatasetError

__all__ = ["DataSource", "detect_format"]


@dataclass(frozen=True)
class DataSource:
    """What :func:`detect_format` found.

    Attributes:
        format: ``voc``, ``coco``, ``yolo`` or ``sources``.
        name: a short name for run folders (the dataset folder's name).
        data: the ``data`` section entries that read it (``kind``, ``root``, splits, COCO files).
        has_val: whether the data names a validation split (else one is held out of train).
        has_test: whether it names a test split.
        description: one line for people.
    """

    format: str
    name: str
    data: dict[str, Any]
    has_val: bool
    has_test: bool
    description: str


def _voc(root: Path) -> DataSource:
    main = root / "ImageSets" / "Main"
    splits = {p.stem for p in main.glob("*.txt")} if main.is_dir() else set()
    data: dict[str, Any] = {"kind": "voc", "root": str(root)}
    if "train" in splits and "val" in splits:
        data.update(train_split="train", val_split="val")
    elif "trainval" in splits:
        data.update(train_split="trainval")
    elif "train" in splits:
        data.update(train_split="train")
    else:
        data.update(train_split=None)  # every annotation file
    if "test" in splits:
        data["test_split"] = "test"
    has_val = "val_split" in data
    named = ", ".join(f"{k.split('_')[0]}={data[k] or 'all'}" for k in ("train_split", "val_split", "test_split")
                      if k in data)  # fmt: skip
    return DataSource("voc", root.name, data, has_val, "test_split" in data, f"Pascal VOC folder {root} ({named})")


def _coco_images(json_path: Path) -> Path:
    """The image folder of a COCO JSON: a sibling named like it (``train2017`` for ``instances_train2017.json``),
    ``images/``, ``images/<stem>``, or the JSON's own folder when it holds images."""
    from multibox.data.voc import IMAGE_EXTENSIONS

    stem = json_path.stem.removeprefix("instances_")
    base = json_path.parent.parent if json_path.parent.name == "annotations" else json_path.parent
    for folder in (base / stem, base / "images" / stem, base / "images", json_path.parent / stem, json_path.parent):
        if folder.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir()):
            return folder
    raise DatasetError(
        f"{json_path}: cannot find its image folder (tried {base / stem}, {base / 'images'}, {json_path.parent}); "
        "name it in a dataset YAML: train: {coco: FILE.json, images: FOLDER}"
    )


def _coco(json_path: Path) -> DataSource:
    data: dict[str, Any] = {"kind": "coco", "train_annotations": str(json_path),
                            "train_images": str(_coco_images(json_path))}  # fmt: skip
    has: dict[str, bool] = {}
    for part, words in (("val", ("val", "valid")), ("test", ("test",))):
        has[part] = False
        for word in words:
            other = json_path.with_name(json_path.name.replace("train", word))
            if "train" in json_path.name and other.is_file():
                data[f"{part}_annotations"], data[f"{part}_images"] = str(other), str(_coco_images(other))
                has[part] = True
                break
    name = json_path.parent.parent.name if json_path.parent.name == "annotations" else json_path.parent.name
    return DataSource("coco", name or json_path.stem, data, has["val"], has["test"],
                      f"COCO JSON {json_path} (images {data['train_images']})")  # fmt: skip


def _yolo(path: Path) -> DataSource:
    from multibox.data.yolo import read_yolo_dataset

    info = read_yolo_dataset(path)
    splits = set(info.splits)
    data: dict[str, Any] = {"kind": "yolo", "root": str(path), "train_split": "train", "val_split": "val"}
    if "test" in splits:
        data["test_split"] = "test"
    name = (path if path.is_dir() else path.parent).name
    desc = f"YOLO dataset {info.source} ({len(info.classes)} classes; splits {', '.join(sorted(splits))})"
    return DataSource("yolo", name, data, "val" in splits, "test" in splits, desc)


def _sources(path: Path) -> DataSource:
    from multibox.data.sources import read_sources

    _, splits = read_sources(path)
    data = {"kind": "sources", "root": str(path), "train_split": "train", "val_split": "val"}
    if "test" in splits:
        data["test_split"] = "test"
    counts = ", ".join(f"{s}: {len(v)} source(s)" for s, v in splits.items())
    return DataSource("sources", path.stem, data, "val" in splits, "test" in splits, f"dataset YAML {path} ({counts})")


def detect_format(path: str | Path) -> DataSource:
    """What the dataset at ``path`` is and which splits it names.

    Recognised: a folder with ``Annotations/`` + ``JPEGImages/`` (VOC); a ``.json`` file (COCO; its image folder is
    looked for beside it); a YOLO ``data.yaml`` or a folder with one or with ``images/`` + ``labels/``; a dataset
    YAML of ours (:mod:`multibox.data.sources`).

    Raises:
        DatasetError: nothing there, or a layout that is none of these (the message says what was looked for).
    """
    from multibox.data.sources import is_sources_yaml

    p = Path(path)
    if p.is_dir():
        if (p / "Annotations").is_dir() and (p / "JPEGImages").is_dir():
            return _voc(p)
        if any((p / n).is_file() for n in ("data.yaml", "dataset.yaml", "data.yml")) or (p / "labels").is_dir():
            return _yolo(p)
        jsons = sorted(p.glob("*.json")) + sorted((p / "annotations").glob("*train*.json"))
        if len(jsons) == 1 or (jsons and "train" in jsons[-1].name):
            return _coco(jsons[-1])
        raise DatasetError(
            f"{p}: not a dataset folder I know: expected Annotations/ + JPEGImages/ (VOC), data.yaml or images/ + "
            "labels/ (YOLO), or a COCO JSON (pass the .json file)"
        )
    if not p.is_file():
        raise DatasetError(f"{p}: no such file or folder")
    if p.suffix.lower() == ".json":
        return _coco(p)
    if p.suffix.lower() in (".yaml", ".yml"):
        return _sources(p) if is_sources_yaml(p) else _yolo(p)
    raise DatasetError(f"{p}: expected a dataset folder, a COCO .json or a dataset .yaml")
