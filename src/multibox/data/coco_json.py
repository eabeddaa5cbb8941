"""Reading a COCO annotation file and checking the type of every field, without coercing any.

A value of the wrong type is reported, never converted: ``"iscrowd": "0"`` (a string) is not crowd and not
"not crowd", it is an error (``bool("0")`` is True, which would silently drop the box from training). Checked:

- images: ``id`` an int, ``file_name`` a non-empty string, ``width``/``height`` positive integers (an integral
  float such as ``640.0`` is accepted);
- annotations: ``id`` (optional) an int, ``image_id`` an int naming a listed image, ``category_id`` an int naming a
  listed category, ``bbox`` 4 numbers ``[x, y, w, h]``, ``iscrowd`` (optional) 0 or 1 as an int or a bool,
  ``area`` (optional) a number; booleans are not numbers here;
- categories: ``id`` an int (unique), ``name`` a string.

The top level and the categories are what every image depends on, so a problem there always raises
(:func:`read_coco_json`). A problem in an image or annotation entry concerns one image: :func:`coco_problems` lists
them all, for the reader's error policy (raise, or skip that image with a warning) and for ``multibox scan``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from multibox.data.checks import DatasetError
from multibox.io.regular import read_text

__all__ = ["CocoProblem", "coco_problems", "load_coco_json", "read_coco_json", "usable_entries"]

_JSON_NAMES = {str: "a string", int: "an int", float: "a float", bool: "a bool", list: "a list", dict: "an object"}


def _got(value: Any) -> str:
    """``value`` as written (shortened) and its JSON type, for a message."""
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{text} ({_JSON_NAMES.get(type(value), 'null' if value is None else type(value).__name__)})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _require(entry: Any, keys: tuple[str, ...], file: Path, where: str) -> None:
    if not isinstance(entry, dict):
        raise DatasetError(f"{file}: {where} is not a JSON object")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise DatasetError(f"{file}: {where} is missing key(s) {missing}")


def read_coco_json(path: str | Path) -> dict[str, Any]:
    """Read a COCO annotation file and check its top level and categories (entries: :func:`coco_problems`).

    ``images`` and ``categories`` are required lists, ``annotations`` an optional list (image-info files have
    none; it is then set to ``[]``). The file is UTF-8, with or without a byte-order mark, and only a regular file
    is read.

    Raises:
        DatasetError: the file is unreadable, not UTF-8, not JSON, not COCO-shaped at the top level, a category is
            malformed, or category or image ids repeat; the message names the file and the entry.
    """
    file = Path(path)
    try:
        data = json.loads(read_text(file))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{file}: malformed JSON: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{file}: cannot read annotation file: {exc}") from exc
    _require(data, ("images", "categories"), file, "the top level")
    data.setdefault("annotations", [])
    for key in ("images", "categories", "annotations"):
        if not isinstance(data[key], list):
            raise DatasetError(f"{file}: {key!r} must be a list, got {type(data[key]).__name__}")
    for k, cat in enumerate(data["categories"]):
        _require(cat, ("id", "name"), file, f"categories[{k}]")
        if not _is_int(cat["id"]) or not isinstance(cat["name"], str):
            raise DatasetError(
                f"{file}: categories[{k}] needs an int 'id' and a string 'name', got {_got(cat['id'])} and "
                f"{_got(cat['name'])}"
            )
    if len({cat["id"] for cat in data["categories"]}) != len(data["categories"]):
        raise DatasetError(f"{file}: duplicate category ids in 'categories'")
    ids = [img["id"] for img in data["images"] if isinstance(img, dict) and _is_int(img.get("id"))]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{file}: duplicate image ids in 'images'")
    return data


@dataclass(frozen=True)
class CocoProblem:
    """An image or annotation entry of a COCO file that cannot be used.

    Attributes:
        message: what is wrong, naming the file and the entry (``"<file>: annotation id 17 (annotations[3]):
            'iscrowd' must be 0 or 1 ..."``).
        kind: ``"image"`` or ``"annotation"``, the list the entry is in.
        index: the entry's position in that list.
        image_id: the image the entry makes unusable; None when it names no listed image (it is then dropped alone).
    """

    message: str
    kind: Literal["image", "annotation"]
    index: int
    image_id: int | None


def _image_reasons(img: Any) -> list[str]:
    if not isinstance(img, dict):
        return ["not a JSON object"]
    missing = [k for k in ("id", "file_name", "width", "height") if k not in img]
    if missing:
        return [f"missing key(s) {missing}"]
    reasons = []
    if not _is_int(img["id"]):
        reasons.append(f"'id' must be an int, got {_got(img['id'])}")
    if not isinstance(img["file_name"], str) or not img["file_name"]:
        reasons.append(f"'file_name' must be a non-empty string, got {_got(img['file_name'])}")
    for key in ("width", "height"):
        v = img[key]
        if not (_is_number(v) and v > 0 and float(v).is_integer()):
            reasons.append(f"{key!r} must be a positive integer, got {_got(v)}")
    return reasons


def _annotation_reasons(ann: dict[str, Any], image_ids: set[int], cat_ids: set[int]) -> list[str]:
    missing = [k for k in ("image_id", "category_id", "bbox") if k not in ann]
    if missing:
        return [f"missing key(s) {missing}"]
    reasons = []
    if "id" in ann and not _is_int(ann["id"]):
        reasons.append(f"'id' must be an int, got {_got(ann['id'])}")
    if not _is_int(ann["image_id"]):
        reasons.append(f"'image_id' must be an int, got {_got(ann['image_id'])}")
    elif ann["image_id"] not in image_ids:
        reasons.append(f"refers to image id {ann['image_id']!r}, which is not in 'images'")
    if not _is_int(ann["category_id"]):
        reasons.append(f"'category_id' must be an int, got {_got(ann['category_id'])}")
    elif ann["category_id"] not in cat_ids:
        reasons.append(f"refers to category id {ann['category_id']!r}, which is not in 'categories'")
    bbox = ann["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        reasons.append(f"'bbox' must be 4 numbers [x, y, w, h], got {_got(bbox)}")
    if "iscrowd" in ann and not (isinstance(ann["iscrowd"], int) and ann["iscrowd"] in (0, 1)):
        reasons.append(f"'iscrowd' must be 0 or 1 (an int or a bool), got {_got(ann['iscrowd'])}")
    if "area" in ann and not _is_number(ann["area"]):
        reasons.append(f"'area' must be a number, got {_got(ann['area'])}")
    return reasons


def coco_problems(data: dict[str, Any], file: str | Path) -> list[CocoProblem]:
    """Every image and annotation entry of a :func:`read_coco_json` result whose fields have wrong types or refer
    to nothing, in file order (images first)."""
    problems = []
    for k, img in enumerate(data["images"]):
        reasons = _image_reasons(img)
        if reasons:
            image_id = img["id"] if isinstance(img, dict) and _is_int(img.get("id")) else None
            where = f"images[{k}]" + (f" (id {image_id})" if image_id is not None else "")
            problems.append(CocoProblem(f"{file}: {where}: {'; '.join(reasons)}", "image", k, image_id))
    image_ids = {img["id"] for img in data["images"] if isinstance(img, dict) and _is_int(img.get("id"))}
    cat_ids = {cat["id"] for cat in data["categories"]}
    for k, ann in enumerate(data["annotations"]):
        reasons = _annotation_reasons(ann, image_ids, cat_ids) if isinstance(ann, dict) else ["not a JSON object"]
        if reasons:
            ann_id = ann.get("id") if isinstance(ann, dict) and _is_int(ann.get("id")) else None
            where = f"annotation id {ann_id} (annotations[{k}])" if ann_id is not None else f"annotations[{k}]"
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            image_id = image_id if _is_int(image_id) and image_id in image_ids else None
            problems.append(CocoProblem(f"{file}: {where}: {'; '.join(reasons)}", "annotation", k, image_id))
    return problems


def usable_entries(
    data: dict[str, Any], problems: list[CocoProblem]
) -> tuple[list[dict[str, Any]], dict[int, list[dict[str, Any]]]]:
    """The images that no problem concerns, sorted by id, and the annotations of each (``{image id: [...]}``)."""
    bad_images = {p.index for p in problems if p.kind == "image"}
    bad_ids = {p.image_id for p in problems if p.image_id is not None}
    bad_annotations = {p.index for p in problems if p.kind == "annotation"}
    images = [img for k, img in enumerate(data["images"]) if k not in bad_images and img["id"] not in bad_ids]
    per_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for k, ann in enumerate(data["annotations"]):
        if k not in bad_annotations:
            per_image[ann["image_id"]].append(ann)
    return sorted(images, key=lambda img: img["id"]), {img["id"]: per_image.get(img["id"], []) for img in images}


def load_coco_json(path: str | Path) -> dict[str, Any]:
    """Read a COCO annotation file and require every entry to be usable (:func:`read_coco_json`, :func:`coco_problems`).

    Raises:
        DatasetError: the first problem found; the message names the file and the entry.
    """
    data = read_coco_json(path)
    problems = coco_problems(data, path)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise DatasetError(problems[0].message + more)
    return data
