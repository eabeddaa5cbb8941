"""COCODetection on hand-made COCO fixtures, including every malformed case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from multibox.data import COCODetection, DatasetError, DatasetWarning


def _coco(
    tmp_path: Path, data: dict | list | str, images: dict[str, tuple[int, int]] | None = None
) -> tuple[Path, Path]:
    images_dir = tmp_path / "images"
    images_dir.mkdir(exist_ok=True)
    for name, (w, h) in (images or {}).items():
        Image.fromarray(np.full((h, w, 3), 100, dtype=np.uint8)).save(images_dir / name)
    ann = tmp_path / "instances.json"
    ann.write_text(data if isinstance(data, str) else json.dumps(data))
    return images_dir, ann


def _valid() -> dict:
    return {
        "images": [
            {"id": 7, "file_name": "b.png", "width": 30, "height": 20},
            {"id": 3, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 9, "file_name": "empty.png", "width": 10, "height": 10},
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 5, "name": "plane"}],
        "annotations": [
            {"id": 1, "image_id": 3, "category_id": 18, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 3, "category_id": 1, "bbox": [0, 0, 40, 30], "iscrowd": 1},
            {"id": 3, "image_id": 7, "category_id": 5, "bbox": [1.5, 2.5, 3, 4]},
        ],
    }


IMAGES = {"a.png": (40, 30), "b.png": (30, 20), "empty.png": (10, 10)}


def test_labels_categories_crowd_and_negatives(tmp_path) -> None:
    ds = COCODetection(*_coco(tmp_path, _valid(), IMAGES))
    assert ds.classes == ("person", "plane", "dog")  # sorted by category id
    assert ds.category_id_to_label == {1: 1, 5: 2, 18: 3} and ds.label_to_category_id == {1: 1, 2: 5, 3: 18}
    assert ds.category_ids(torch.tensor([3, 1, 2])).tolist() == [18, 1, 5]
    assert ds.labels_from_category_ids(torch.tensor([[5, 18]])).tolist() == [[2, 3]]
    assert ds.image_ids == [3, 7, 9] and len(ds) == 3  # the image without annotations is kept
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.uint8
    torch.testing.assert_close(target["boxes"], torch.tensor([[10.0, 5.0, 30.0, 15.0]]))  # xywh -> xyxy
    assert target["labels"].tolist() == [3] and target["iscrowd"].tolist() == [False]  # crowd excluded
    assert target["image_id"] == 3 and target["orig_size"].tolist() == [30, 40]
    torch.testing.assert_close(ds[1][1]["boxes"], torch.tensor([[1.5, 2.5, 4.5, 6.5]]))
    _, empty = ds[2]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_include_crowd_for_evaluation(tmp_path) -> None:
    ds = COCODetection(*_coco(tmp_path, _valid(), IMAGES), include_crowd=True)
    target = ds.get_target(0)
    assert target["iscrowd"].tolist() == [False, True] and target["labels"].tolist() == [3, 1]
    assert [len(t["boxes"]) for t in ds.targets_only()] == [2, 1, 0]


def test_degenerate_and_outside_boxes_one_warning(tmp_path) -> None:
    data = _valid()
    data["annotations"] += [
        {"id": 4, "image_id": 3, "category_id": 1, "bbox": [5, 5, 0, 10]},
        {"id": 5, "image_id": 3, "category_id": 1, "bbox": [30, 20, 20, 20]},
    ]
    with pytest.warns(DatasetWarning) as record:
        ds = COCODetection(*_coco(tmp_path, data, IMAGES))
    assert len(record) == 1
    message = str(record[0].message)
    assert "dropped 1 degenerate box(es)" in message and "clipped 1 box(es)" in message and "image id 3" in message
    assert ds.get_target(0)["boxes"].tolist() == [[10.0, 5.0, 30.0, 15.0], [30.0, 20.0, 40.0, 30.0]]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: "{ not json", r"instances\.json: malformed JSON"),
        (lambda d: {k: v for k, v in d.items() if k != "images"}, r"the top level is missing key\(s\) \['images'\]"),
        (
            lambda d: d["annotations"][0].pop("bbox") and d,
            r"annotation id 1 \(annotations\[0\]\): missing key\(s\) \['bbox'\]",
        ),
        (lambda d: d["images"][1].pop("file_name") and d, r"images\[1\] \(id 3\): missing key\(s\) \['file_name'\]"),
        (lambda d: d["categories"][0].pop("name") and d, r"categories\[0\] is missing key\(s\) \['name'\]"),
        (
            lambda d: d["annotations"][2].update(bbox=[1, 2, 3]) or d,
            r"annotation id 3 \(annotations\[2\]\): 'bbox' must be 4 numbers",
        ),
        (lambda d: d["annotations"][0].update(image_id=99) or d, r"refers to image id 99"),
        (lambda d: d["annotations"][0].update(category_id=2) or d, r"refers to category id 2"),
        (lambda d: d.update(images={}) or d, r"'images' must be a list"),
        (lambda d: [1, 2], r"the top level is not a JSON object"),
    ],
)
def test_malformed_json_names_file_and_entry(tmp_path, mutate, match) -> None:
    data = mutate(_valid())
    with pytest.raises(DatasetError, match=match):
        COCODetection(*_coco(tmp_path, data, IMAGES))


def test_missing_image_is_an_error_or_skipped(tmp_path) -> None:
    images = dict(IMAGES)
    del images["b.png"]
    images_dir, ann = _coco(tmp_path, _valid(), images)
    with pytest.raises(DatasetError, match=r"image 'b\.png' \(id 7\) not found"):
        COCODetection(images_dir, ann)
    with pytest.warns(DatasetWarning, match=r"skipped 1 unreadable file"):
        ds = COCODetection(images_dir, ann, on_error="skip")
    assert ds.image_ids == [3, 9]
