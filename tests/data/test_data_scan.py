"""scan_dataset reports every problem at once, on a broken fixture and on the shared sets."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from test_data_voc import BOMB

from multibox.data import scan_dataset


def test_scan_reports_everything_at_once(make_voc) -> None:
    root = make_voc(
        [
            {"id": "good", "size": (20, 20), "objects": [("dog", 1, 1, 10, 10)]},
            {"id": "malformed", "size": (8, 8), "objects": [], "xml": "<annotation><object>"},
            {"id": "bomb", "size": (8, 8), "objects": [], "xml": BOMB},
            {"id": "noimage", "size": (8, 8), "image": None, "filename": "noimage.jpg", "objects": []},
            {"id": "unknown", "size": (20, 20), "objects": [("unicorn", 1, 1, 5, 5)]},
            {"id": "degenerate", "size": (20, 20), "objects": [("dog", 5, 5, 4, 9), ("dog", 2, 2, 6, 6)]},
            {"id": "outside", "size": (20, 20), "objects": [("dog", 10, 10, 30, 15)]},
            {"id": "gray", "size": (20, 20), "mode": "L", "objects": [("dog", 1, 1, 20, 20)]},
            {"id": "twin", "size": (20, 20), "image": "twin.jpg", "objects": [("dog", 2, 2, 9, 9)]},
        ]
    )
    (root / "JPEGImages" / "twin.jpg").write_bytes((root / "JPEGImages" / "good.jpg").read_bytes())
    report = scan_dataset(root, classes=["dog"])
    kinds = report.kinds()
    assert kinds["malformed_annotation"] == 2  # the broken XML and the bomb
    assert kinds["missing_image"] == 1 and kinds["unknown_class"] == 1
    assert kinds["degenerate_box"] == 1 and kinds["box_outside"] == 1
    assert kinds["non_rgb_image"] == 1 and kinds["duplicate_image"] == 2
    assert not report.ok and len(report.errors) == 4
    text = str(report)
    for name in ("malformed.xml", "bomb.xml", "noimage.xml", "unknown.xml", "degenerate.xml", "outside.xml"):
        assert name in text
    assert "unicorn" in text and "entities" in text and "good.jpg, twin.jpg (with different boxes)" in text
    assert report.num_boxes == 6  # good 1, unknown 1, degenerate 1 kept, outside 1 clipped, gray 1, twin 1


def test_scan_finds_truncated_images_from_headers_and_corrupt_ones_with_decode(make_voc) -> None:
    root = make_voc(
        [
            {"id": "cut", "size": (64, 64), "objects": [("dog", 1, 1, 9, 9)]},
            {"id": "crc", "size": (64, 64), "mode": "RGBA", "objects": [("dog", 1, 1, 9, 9)]},
        ]
    )
    cut = root / "JPEGImages" / "cut.jpg"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    crc = root / "JPEGImages" / "crc.png"
    data = bytearray(crc.read_bytes())
    data[data.index(b"IEND") - 5] ^= 0xFF  # the last byte of the IDAT chunk's CRC (before IEND's length)
    crc.write_bytes(bytes(data))
    headers = scan_dataset(root)  # the truncated JPEG is found from its last bytes; the CRC is not read
    assert headers.kinds()["unreadable_image"] == 1 and "corrupt_image" not in headers.kinds()
    assert "cut.jpg: cannot read image header: truncated: the JPEG has no end-of-image marker (EOI)" in str(headers)
    decoded = scan_dataset(root, decode=True)
    assert decoded.kinds()["unreadable_image"] == 1 and decoded.kinds()["corrupt_image"] == 1
    assert "crc.png: cannot decode image: corrupt: PNG chunk IDAT at byte 33 has a bad CRC" in str(decoded)
    assert decoded.num_images == 0 and not decoded.ok


def test_scan_coco(tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(images / "a.png")
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 10, "height": 10},
            {"id": 2, "file_name": "missing.png", "width": 10, "height": 10},
        ],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 3]},
            {"image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 2], "iscrowd": 1},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    report = scan_dataset(images, annotation_json=tmp_path / "ann.json")
    kinds = report.kinds()
    assert kinds["missing_image"] == 1 and kinds["degenerate_box"] == 1 and kinds["box_outside"] == 1
    assert kinds["crowd"] == 1 and report.num_images == 1
    (tmp_path / "bad.json").write_text("{")
    bad = scan_dataset(images, annotation_json=tmp_path / "bad.json")
    assert not bad.ok and "malformed JSON" in str(bad)


def test_scan_shared_raccoon(shared_data) -> None:
    report = scan_dataset(shared_data / "raccoon")
    assert report.ok and not report.warnings
    assert report.num_images == 200 and report.num_boxes == 217
    kinds = report.kinds()
    assert kinds["non_rgb_image"] == 3 and kinds["duplicate_image"] == 8  # four byte-identical pairs
    text = str(report)
    for name in ("raccoon-150", "raccoon-152", "raccoon-161", "raccoon-52.jpg, raccoon-74.jpg"):
        assert name in text


def test_scan_shared_cards(shared_data) -> None:
    report = scan_dataset(shared_data / "cards", split="train")
    assert report.ok and report.num_images == 296
    full = scan_dataset(shared_data / "cards")
    assert full.num_images == 363 and full.num_boxes == 670 and len(full.class_counts) == 6
    assert full.image_sizes.keys() == {(378, 504), (960, 540), (480, 270)}
