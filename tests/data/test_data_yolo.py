"""YOLO reader and writer: round trip, layouts, bad labels, missing label files, scan and anchors."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from multibox.cli import main
from multibox.data import ShapesDataset, scan_dataset
from multibox.data.checks import DatasetError, DatasetWarning
from multibox.data.yolo import YOLODetection, label_path, parse_yolo_labels, write_yolo


def _image(path: Path, w: int = 100, h: int = 50) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (10, 20, 30)).save(path)


def _flat(root: Path, lines: dict[str, str | None], classes: str = "cat\ndog\n") -> Path:
    """A flat images/ + labels/ folder: image name -> label text (None: no label file)."""
    for name, text in lines.items():
        _image(root / "images" / f"{name}.png")
        if text is not None:
            (root / "labels").mkdir(parents=True, exist_ok=True)
            (root / "labels" / f"{name}.txt").write_text(text)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text(classes)
    return root


def test_round_trip_writer_reader(tmp_path) -> None:
    shapes = ShapesDataset(6, (48, 80), seed=5)
    ids = write_yolo(shapes, tmp_path / "y", "train")
    data = YOLODetection(tmp_path / "y" / "data.yaml", "train")
    assert data.classes == tuple(shapes.classes) and len(data) == 6
    assert data.image_ids == [f"train/{i}" for i in ids]
    for i in range(6):
        image, target = data[i]
        ref_image, ref = shapes[i]
        assert torch.equal(image, ref_image)  # PNG: lossless
        torch.testing.assert_close(target["boxes"], ref["boxes"], atol=1e-3, rtol=0)  # 6 decimals of a fraction
        assert torch.equal(target["labels"], ref["labels"])
        assert target["orig_size"].tolist() == [48, 80]


def test_hand_computed_box_and_label(tmp_path) -> None:
    root = _flat(tmp_path, {"a": "1 0.5 0.5 0.2 0.4\n\n0 0.1 0.2 0.2 0.2\n"})
    data = YOLODetection(root)
    t = data.get_target(0)
    # 100x50 image: cx 50, cy 25, w 20, h 20 -> (40, 15, 60, 35); second (0, 5, 20, 15)
    assert t["boxes"].tolist() == [[40.0, 15.0, 60.0, 35.0], [0.0, 5.0, 20.0, 15.0]]
    assert t["labels"].tolist() == [2, 1] and data.classes == ("cat", "dog")


def test_split_folders_and_label_path(tmp_path) -> None:
    assert label_path(Path("d/images/train/x.jpg")) == Path("d/labels/train/x.txt")
    assert label_path(Path("images/a/images/x.png")) == Path("images/a/labels/x.txt")  # the last images/ folder
    assert label_path(Path("d/x.jpg")) == Path("d/x.txt")
    for split in ("train", "val"):
        _image(tmp_path / "images" / split / f"{split}1.png")
        (tmp_path / "labels" / split).mkdir(parents=True)
        (tmp_path / "labels" / split / f"{split}1.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "obj.names").write_text("thing\n")
    assert len(YOLODetection(tmp_path, "val")) == 1 and YOLODetection(tmp_path, "val").classes == ("thing",)
    with pytest.raises(DatasetError, match="no split 'test'"):
        YOLODetection(tmp_path, "test")


def test_names_mapping_and_nc_check(tmp_path) -> None:
    _flat(tmp_path, {"a": "1 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images\nnames: {0: cat, 1: dog}\n")
    assert YOLODetection(tmp_path).classes == ("cat", "dog")
    (tmp_path / "data.yaml").write_text("train: images\nnc: 3\nnames: [cat, dog]\n")
    with pytest.raises(DatasetError, match="nc is 3"):
        YOLODetection(tmp_path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("0 0.5 0.5 0.2 0.2 0.9\n", r"line 1 has 6 values, expected 5 .*confidence"),
        ("0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.1 0.1\n", r"line 2: class id 2 is not an integer in 0\.\.1"),
        ("1.5 0.5 0.5 0.2 0.2\n", "class id 1.5"),
        ("-1 0.5 0.5 0.2 0.2\n", "class id -1"),
        ("0 0.5 abc 0.2 0.2\n", "line 1 holds a value that is not a number"),
        ("0 0.5 nan 0.2 0.2\n", "non-finite"),
    ],
)
def test_bad_labels_name_file_and_line(tmp_path, text, match) -> None:
    root = _flat(tmp_path, {"bad": text, "good": "0 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(DatasetError, match=match) as info:
        YOLODetection(root)
    assert str(root / "labels" / "bad.txt") in str(info.value)
    with pytest.warns(DatasetWarning, match="skipped 1 unreadable file"):
        data = YOLODetection(root, on_error="skip")
    assert data.image_ids == ["good"]


def test_missing_label_files_one_warning_with_the_count(tmp_path) -> None:
    root = _flat(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": None, "c": None, "d": ""})
    with pytest.warns(DatasetWarning, match="2 image\\(s\\) have no label file") as record:
        data = YOLODetection(root)
    assert len([w for w in record if issubclass(w.category, DatasetWarning)]) == 1
    assert data.missing_labels == 2 and data.num_boxes() == 1
    assert [len(data.get_target(i)["labels"]) for i in range(4)] == [1, 0, 0, 0]


def test_boxes_outside_are_clipped_and_degenerate_dropped(tmp_path) -> None:
    root = _flat(tmp_path, {"a": "0 0.95 0.5 0.2 0.2\n0 0.5 0.5 0 0.2\n"})
    with pytest.warns(DatasetWarning) as record:
        data = YOLODetection(root)
    text = " ".join(str(w.message) for w in record)
    assert "clipped 1 box" in text and "dropped 1 degenerate" in text
    assert data.get_target(0)["boxes"].tolist() == [[85.0, 20.0, 100.0, 30.0]]


def test_parse_empty_file(tmp_path) -> None:
    (tmp_path / "e.txt").write_text("")
    boxes, ids = parse_yolo_labels(tmp_path / "e.txt", 3)
    assert boxes.shape == (0, 4) and ids.shape == (0,)


def test_scan_and_anchors_accept_yolo(tmp_path, capsys) -> None:
    root = _flat(tmp_path, {"a": "0 0.5 0.5 0.2 0.4\n1 0.2 0.2 0.2 0.2\n", "b": None, "c": "0 0.5 0.5 0.2 0.2 1\n"})
    report = scan_dataset(root)
    assert report.format == "yolo" and not report.ok and report.num_images == 2 and report.num_boxes == 2
    assert report.kinds()["malformed_label"] == 1 and report.kinds()["missing_label"] == 1
    assert report.class_counts == {"cat": 1, "dog": 1}
    assert main(["scan", str(root)]) == 1
    assert "malformed_label" in capsys.readouterr().out
    (root / "labels" / "c.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        assert main(["anchors", str(root), "--model", "ssd_tiny", "--image-size", "64", "--clusters", "2"]) == 0
    assert "3 images" in capsys.readouterr().out
