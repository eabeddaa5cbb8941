"""Bad dataset files: named pipes, truncated and corrupt images under each error policy, split files with a BOM or
in another encoding, COCO fields of the wrong type, a set without a single box. Each asserts the exception or
warning class and the key words of its message (the file and the reason)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from test_data_coco import IMAGES, _coco, _valid

from multibox.cli import main
from multibox.data import COCODetection, DatasetError, DatasetWarning, VOCDetection, build_loader, collate, scan_dataset
from multibox.data.voc import read_split

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need POSIX")
DOG = [("dog", 2, 2, 9, 9)]


def _flip_idat_crc(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[data.index(b"IEND") - 5] ^= 0xFF  # the last byte of the IDAT chunk's CRC (before IEND's length field)
    path.write_bytes(bytes(data))


def _truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


# --- named pipes -------------------------------------------------------------------------------------------------


@needs_fifo
def test_named_pipe_image_and_annotation_do_not_block_the_reader(make_voc, unjam) -> None:
    root = make_voc([{"id": "good", "size": (20, 20), "objects": DOG}])
    os.mkfifo(root / "JPEGImages" / "x.jpg")
    (root / "Annotations" / "x.xml").write_text("<annotation><filename>x.jpg</filename></annotation>")
    os.mkfifo(root / "Annotations" / "y.xml")
    for fifo in (root / "JPEGImages" / "x.jpg", root / "Annotations" / "y.xml"):
        unjam(fifo)
    with open(root / "ImageSets" / "Main" / "train.txt", "a") as f:
        f.write("x\ny\n")
    with pytest.raises(DatasetError, match=r"x\.jpg: cannot read image header: not a regular file: a named pipe"):
        VOCDetection(root)
    with pytest.warns(DatasetWarning, match=r"skipped 2 unreadable file\(s\)") as record:
        ds = VOCDetection(root, on_error="skip")
    assert ds.image_ids == ["good"]
    message = str(record[0].message)
    assert "y.xml: cannot read annotation: not a regular file: a named pipe (FIFO)" in message
    report = scan_dataset(root)
    assert report.kinds()["unreadable_image"] == 1 and report.kinds()["unreadable_annotation"] == 1
    assert "x.jpg: cannot read image header: not a regular file: a named pipe (FIFO)" in str(report)


@needs_fifo
def test_multibox_scan_on_a_named_pipe_exits_with_a_message(make_voc, unjam) -> None:
    root = make_voc([{"id": "x", "size": (20, 20), "image": None, "filename": "x.jpg", "objects": DOG}])
    os.mkfifo(root / "JPEGImages" / "x.jpg")
    unjam(root / "JPEGImages" / "x.jpg")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "multibox", "scan", str(root), "--decode"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "x.jpg: cannot read image header: not a regular file: a named pipe (FIFO)" in proc.stdout


def test_multibox_scan_decode_flag_finds_a_bad_crc(make_voc, capsys) -> None:
    root = make_voc([{"id": "p", "size": (24, 24), "mode": "RGBA", "objects": DOG}])
    _flip_idat_crc(root / "JPEGImages" / "p.png")
    assert main(["scan", str(root)]) == 0  # the header and the file's ending are intact
    assert "0 error(s), 0 warning(s)" in capsys.readouterr().out
    assert main(["scan", str(root), "--decode"]) == 1
    out = capsys.readouterr().out
    assert "error corrupt_image: 1 in 1 file(s)" in out
    assert "p.png: cannot decode image: corrupt: PNG chunk IDAT at byte 33 has a bad CRC" in out


def test_multibox_scan_reports_truncated_images_without_decode(make_voc, capsys) -> None:
    """The issue's case: scan read headers only and called a cut JPEG or PNG fine; the ending is checked too."""
    items = [{"id": "ok", "size": (48, 32), "objects": DOG}, {"id": "cut", "size": (48, 32), "objects": DOG}]
    root = make_voc([*items, {"id": "p", "size": (24, 24), "mode": "RGBA", "objects": DOG}])
    _truncate(root / "JPEGImages" / "cut.jpg", 0.9)
    (root / "JPEGImages" / "p.png").write_bytes((root / "JPEGImages" / "p.png").read_bytes()[:-12])
    assert main(["scan", str(root)]) == 1
    out = capsys.readouterr().out
    assert "1 images, 1 boxes, 2 error(s)" in out and "error unreadable_image: 2 in 2 file(s)" in out
    assert "cut.jpg: cannot read image header: truncated: the JPEG has no end-of-image marker (EOI)" in out
    assert "p.png: cannot read image header: truncated: the PNG has no IEND chunk" in out


@needs_fifo
def test_named_pipe_split_and_coco_file_are_refused(make_voc, tmp_path, unjam) -> None:
    root = make_voc([{"id": "a", "size": (20, 20), "objects": DOG}])
    os.mkfifo(root / "ImageSets" / "Main" / "pipe.txt")
    os.mkfifo(tmp_path / "pipe.json")
    for fifo in (root / "ImageSets" / "Main" / "pipe.txt", tmp_path / "pipe.json"):
        unjam(fifo)
    with pytest.raises(DatasetError, match=r"pipe\.txt: cannot read split file: not a regular file: a named pipe"):
        read_split(root, "pipe")
    with pytest.raises(DatasetError, match=r"pipe\.json: cannot read annotation file: not a regular file"):
        COCODetection(tmp_path, tmp_path / "pipe.json")


# --- truncated and corrupt images under the error policy ----------------------------------------------------------


def test_truncated_image_is_refused_or_skipped_when_the_dataset_is_built(make_voc) -> None:
    root = make_voc([{"id": "good", "size": (32, 32), "objects": DOG}, {"id": "cut", "size": (32, 32), "objects": DOG}])
    _truncate(root / "JPEGImages" / "cut.jpg")
    reason = r"cut\.jpg: cannot read image header: truncated: the JPEG"
    with pytest.raises(DatasetError, match=reason):
        VOCDetection(root)
    with pytest.warns(DatasetWarning, match=r"skipped 1 unreadable file\(s\) in 1 file\(s\): \S+" + reason):
        ds = VOCDetection(root, on_error="skip")
    assert ds.image_ids == ["good"]


def test_corrupt_image_found_when_read_raises_or_is_left_out_of_its_batch(make_voc) -> None:
    """A bad PNG CRC passes the header test; decoding finds it. ``raise``: a DatasetError naming the file; ``skip``:
    the item is None with a warning naming the file and the reason, and the loader's batches leave it out."""
    items = [{"id": f"p{k}", "size": (24, 24), "mode": "RGBA", "objects": DOG} for k in range(5)]
    root = make_voc(items)
    _flip_idat_crc(root / "JPEGImages" / "p1.png")
    _flip_idat_crc(root / "JPEGImages" / "p4.png")
    strict = VOCDetection(root)
    assert len(strict) == 5  # the headers are fine
    with pytest.raises(
        DatasetError, match=r"p1\.png: cannot decode image: corrupt: PNG chunk IDAT at byte 33 has a bad"
    ):
        strict[1]
    lenient = VOCDetection(root, on_error="skip")
    with pytest.warns(
        DatasetWarning, match=r"skipped item 1: \S+p1\.png: cannot decode image: corrupt: PNG chunk IDAT"
    ):
        assert lenient[1] is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = [[t["image_id"] for t in targets] for _, targets in build_loader(lenient, batch_size=2)]
    assert batches == [["p0"], ["p2", "p3"]]  # p1 left out of the first batch; the last batch (p4 alone) not yielded
    skipped = sorted(str(w.message).split("skipped item ")[1][:1] for w in caught if w.category is DatasetWarning)
    assert skipped == ["1", "4"]


_WORKER_SCRIPT = """
import sys
from multibox.data import VOCDetection, build_loader
loader = build_loader(VOCDetection(sys.argv[1], on_error="skip"), batch_size=2, num_workers=2)
print([[t["image_id"] for t in targets] for _, targets in loader])
"""


def test_worker_process_skips_a_corrupt_image_and_says_so(make_voc) -> None:
    """Run as a user would (pytest's warning capture would swallow a worker's warning): the worker prints the warning
    on the inherited stderr and the batches leave the image out; under ``raise`` the error names the file."""
    items = [{"id": f"p{k}", "size": (24, 24), "mode": "RGBA", "objects": DOG} for k in range(4)]
    root = make_voc(items)
    _flip_idat_crc(root / "JPEGImages" / "p2.png")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-c", _WORKER_SCRIPT, str(root)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[['p0', 'p1'], ['p3']]"
    assert "DatasetWarning" in proc.stderr and "skipped item 2:" in proc.stderr
    assert "p2.png: cannot decode image: corrupt: PNG chunk IDAT at byte 33 has a bad CRC" in proc.stderr
    with pytest.raises(DatasetError, match=r"p2\.png: cannot decode image: corrupt"):
        list(build_loader(VOCDetection(root), batch_size=2, num_workers=2))


def test_collate_leaves_out_skipped_items() -> None:
    a = (torch.zeros(3, 4, 4, dtype=torch.uint8), {"image_id": "a"})
    b = (torch.ones(3, 4, 4, dtype=torch.uint8), {"image_id": "b"})
    images, targets = collate([a, None, b])
    assert images.shape == (2, 3, 4, 4) and [t["image_id"] for t in targets] == ["a", "b"]
    assert torch.equal(images[1], b[0])
    assert collate([None, None]) is None


def test_coco_corrupt_image_follows_the_policy(tmp_path) -> None:
    images_dir, ann = _coco(tmp_path, _valid(), IMAGES)
    _flip_idat_crc(images_dir / "a.png")
    index = COCODetection(images_dir, ann).image_ids.index(3)
    with pytest.raises(DatasetError, match=r"a\.png: cannot decode image: corrupt: PNG chunk IDAT"):
        COCODetection(images_dir, ann)[index]
    with pytest.warns(DatasetWarning, match=r"skipped item 0: \S+a\.png: cannot decode image: corrupt"):
        assert COCODetection(images_dir, ann, on_error="skip")[index] is None


def test_coco_target_of_an_unreadable_image_follows_the_policy(tmp_path) -> None:
    # get_target reads only the header (for EXIF): a truncated file fails there; under skip the annotation's own
    # boxes stand (statistics such as prior fitting go on), and the item itself is skipped when read.
    images_dir, ann = _coco(tmp_path, _valid(), IMAGES)
    (images_dir / "a.png").write_bytes((images_dir / "a.png").read_bytes()[:40])
    index = COCODetection(images_dir, ann).image_ids.index(3)
    with pytest.raises(DatasetError, match=r"a\.png: .*truncated"):
        COCODetection(images_dir, ann).get_target(index)
    skipping = COCODetection(images_dir, ann, on_error="skip")
    with pytest.warns(DatasetWarning, match=r"a\.png: .*truncated.*taken from the annotation as written"):
        target = skipping.get_target(index)
    torch.testing.assert_close(target["boxes"], torch.tensor([[10.0, 5.0, 30.0, 15.0]]))
    assert target["orig_size"].tolist() == [30, 40]


# --- text encodings -------------------------------------------------------------------------------------------------


def test_split_file_with_a_byte_order_mark_is_read(make_voc) -> None:
    root = make_voc([{"id": "a", "size": (20, 20), "objects": DOG}, {"id": "b", "size": (20, 20), "objects": DOG}])
    (root / "ImageSets" / "Main" / "notepad.txt").write_bytes(b"\xef\xbb\xbfa\r\nb\r\n")
    assert read_split(root, "notepad") == ["a", "b"]
    assert VOCDetection(root, "notepad").image_ids == ["a", "b"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("a\ncafé\n".encode("latin-1"), r"not UTF-8 text: byte 0xe9 at line 2, column 4 \(invalid continuation byte\)"),
        ("a\nb\n".encode("utf-16"), r"not UTF-8 text \(it starts with a UTF-16 byte-order mark: the file is UTF-16\)"),
    ],
)
def test_split_file_not_in_utf8_names_the_file_and_the_byte(make_voc, data, reason) -> None:
    root = make_voc([{"id": "a", "size": (20, 20), "objects": DOG}])
    (root / "ImageSets" / "Main" / "legacy.txt").write_bytes(data)
    with pytest.raises(DatasetError, match=r"legacy\.txt: cannot read split file: " + reason):
        VOCDetection(root, "legacy")
    report = scan_dataset(root, split="legacy")
    assert report.kinds()["bad_split"] == 1 and "legacy.txt" in str(report)


def test_annotation_xml_encodings(make_voc) -> None:
    xml = "<annotation><filename>a.jpg</filename><object><name>chèvre</name><bndbox><xmin>2</xmin><ymin>2</ymin>"
    xml += "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
    root = make_voc([{"id": "a", "size": (20, 20), "objects": []}])
    declared = '<?xml version="1.0" encoding="ISO-8859-1"?>\n' + xml
    (root / "Annotations" / "a.xml").write_bytes(declared.encode("latin-1"))
    assert VOCDetection(root).classes == ("chèvre",)  # the declared encoding is honoured
    (root / "Annotations" / "a.xml").write_bytes(b"\xef\xbb\xbf" + xml.encode())  # UTF-8 with a BOM
    assert VOCDetection(root).classes == ("chèvre",)
    (root / "Annotations" / "a.xml").write_bytes(xml.encode("latin-1"))  # latin-1 without a declaration
    with pytest.raises(DatasetError, match=r"a\.xml: malformed XML: .*it declares no encoding, so it must be UTF-8, "):
        VOCDetection(root, classes=["chèvre"])


def test_coco_json_with_a_bom_and_in_latin1(tmp_path) -> None:
    images_dir, ann = _coco(tmp_path, _valid(), IMAGES)
    ann.write_bytes(b"\xef\xbb\xbf" + ann.read_bytes())
    assert COCODetection(images_dir, ann).image_ids == [3, 7, 9]
    data = _valid()
    data["categories"][0]["name"] = "chèvre"
    ann.write_bytes(json.dumps(data, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(DatasetError, match=r"instances\.json: cannot read annotation file: not UTF-8 text: byte 0xe8"):
        COCODetection(images_dir, ann)


# --- COCO field types ----------------------------------------------------------------------------------------------


def _set(entry: str, k: int, **fields):
    def mutate(d: dict) -> dict:
        d[entry][k].update(fields)
        return d

    return mutate


A0, I1 = "annotation id 1 (annotations[0])", "images[1] (id 3)"
CROWD = "'iscrowd' must be 0 or 1 (an int or a bool), got "


@pytest.mark.parametrize(
    ("mutate", "where", "reason"),
    [
        (_set("annotations", 0, iscrowd="0"), A0, CROWD + "'0' (a string)"),
        (_set("annotations", 0, iscrowd=2), A0, CROWD + "2 (an int)"),
        (_set("annotations", 0, iscrowd=0.0), A0, CROWD + "0.0 (a float)"),
        (_set("annotations", 0, bbox=["10", 5, 20, 10]), A0, "'bbox' must be 4 numbers [x, y, w, h], got ['10', 5, "),
        (_set("annotations", 0, bbox=[True, 5, 20, 10]), A0, "'bbox' must be 4 numbers"),
        (_set("annotations", 0, bbox=[10, 5, 20]), A0, "'bbox' must be 4 numbers"),
        (_set("annotations", 0, category_id="18"), A0, "'category_id' must be an int, got '18' (a string)"),
        (_set("annotations", 0, category_id=18.0), A0, "'category_id' must be an int, got 18.0 (a float)"),
        (_set("annotations", 0, area="big"), A0, "'area' must be a number, got 'big' (a string)"),
        (_set("annotations", 0, id="1"), "annotations[0]", "'id' must be an int, got '1' (a string)"),
        (_set("images", 1, width="40"), I1, "'width' must be a positive integer, got '40' (a string)"),
        (_set("images", 1, height=0), I1, "'height' must be a positive integer, got 0 (an int)"),
    ],
)
def test_coco_field_types_are_checked_not_coerced(tmp_path, mutate, where, reason) -> None:
    """Each bad field concerns image 3 (a.png): ``raise`` names the file, the entry and the field; ``skip`` drops
    image 3 with a warning that says so and keeps the others."""
    images_dir, ann = _coco(tmp_path, mutate(_valid()), IMAGES)
    with pytest.raises(DatasetError) as info:
        COCODetection(images_dir, ann)
    assert str(info.value).startswith(f"{ann}: {where}: {reason}")
    with pytest.warns(DatasetWarning, match=r"skipped 1 image\(s\) with an unusable entry") as record:
        ds = COCODetection(images_dir, ann, on_error="skip")
    assert ds.image_ids == [7, 9] and f"{where}: {reason}" in str(record[0].message)
    report = scan_dataset(images_dir, annotation_json=ann)
    assert not report.ok and report.num_images == 2 and reason in str(report)


def test_coco_bad_image_id_is_an_error_and_an_orphan_annotation_is_dropped(tmp_path) -> None:
    images_dir, ann = _coco(tmp_path, _set("images", 0, id="7")(_valid()), IMAGES)
    with pytest.raises(DatasetError, match=r"images\[0\]: 'id' must be an int, got '7' \(a string\) \(and 1 more"):
        COCODetection(images_dir, ann)  # annotation 3 then refers to image id 7, which no longer exists
    with pytest.warns(DatasetWarning) as record:
        ds = COCODetection(images_dir, ann, on_error="skip")
    assert ds.image_ids == [3, 9]
    message = str(record[0].message)
    assert "skipped 1 image(s) with an unusable entry" in message
    assert "dropped 1 annotation(s) that belong to no usable image" in message
    assert "annotation id 3 (annotations[2]): refers to image id 7, which is not in 'images'" in message


def test_coco_crowd_flags_as_int_or_bool(tmp_path) -> None:
    data = _valid()
    data["annotations"][0]["iscrowd"] = False
    data["annotations"][1]["iscrowd"] = True
    images_dir, ann = _coco(tmp_path, data, IMAGES)
    ds = COCODetection(images_dir, ann, include_crowd=True)
    target = ds.get_target(ds.image_ids.index(3))
    assert target["iscrowd"].tolist() == [False, True]
    assert COCODetection(images_dir, ann).get_target(0)["labels"].tolist() == [3]  # dog (id 18); the crowd box left out


# --- non-finite coordinates -------------------------------------------------------------------------------------


def test_non_finite_box_coordinates_are_dropped_and_named_as_such(make_voc, tmp_path) -> None:
    """'nan', 'inf' and '1e400' in a VOC <bndbox>, NaN and Infinity in COCO JSON (Python's json reads them): dropped
    with a warning that says why (they were counted as 'degenerate (xmax <= xmin ...)', which NaN is not)."""
    objects = [("dog", "nan", 2, 9, 9), ("dog", 1, 2, "inf", 9), ("dog", 1, "1e400", 9, 9), ("dog", 5, 2, 3, 9)]
    root = make_voc([{"id": "a", "size": (20, 20), "objects": [*objects, *DOG]}])
    with pytest.warns(DatasetWarning) as record:
        ds = VOCDetection(root)
    assert ds.get_target(0)["boxes"].tolist() == [[1.0, 1.0, 9.0, 9.0]]  # VOC is 1-based: (2, 2, 9, 9)
    message = str(record[0].message)
    assert "dropped 3 box(es) with a NaN or infinite coordinate in 1 file(s): " in message
    assert "dropped 1 degenerate box(es) (xmax <= xmin or ymax <= ymin) in 1 file(s)" in message
    data = json.dumps(_valid()).replace("[1.5, 2.5, 3, 4]", "[NaN, 2.5, 3, 4]").replace("[10, 5", "[Infinity, 5")
    images_dir, ann = _coco(tmp_path, data, IMAGES)
    with pytest.warns(DatasetWarning, match=r"dropped 2 box\(es\) with a NaN or infinite coordinate in 2 file"):
        ds = COCODetection(images_dir, ann)
    assert ds.num_boxes() == 0
    report = scan_dataset(images_dir, annotation_json=ann)
    assert report.kinds()["non_finite_box"] == 2 and "NaN or infinite coordinate" in str(report)


# --- a set without a single box ------------------------------------------------------------------------------------


def test_voc_set_without_any_box_says_so(make_voc, tmp_path, capsys) -> None:
    root = make_voc([{"id": f"n{k}", "size": (20, 20), "objects": []} for k in range(3)])
    message = r"no image in \S+voc \(split 'train'\) has a box: 3 image\(s\) read, and no annotation file in "
    with pytest.raises(DatasetError, match=message + r"Annotations/ has an <object>"):
        VOCDetection(root)
    assert len(VOCDetection(root, classes=["dog"])) == 3  # given classes: a set of negatives is readable
    argv = ["train", "ssd_tiny_shapes", "--set", "data.kind=voc", "--set", f"data.root={root}", "--no-progress"]
    argv += ["--set", f"train.out_dir={tmp_path / 'run'}", "--set", "train.max_iters=1"]
    assert main(argv) == 3  # a dataset problem: the exit code of bad input files
    err = capsys.readouterr().err
    assert "has a box: 3 image(s) read" in err and "num_classes" not in err


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf\r\n\n"], ids=["empty", "bom_and_blank_lines"])
def test_an_empty_training_split_says_so(make_voc, tmp_path, capsys, content) -> None:
    root = make_voc([{"id": "a", "size": (20, 20), "objects": DOG}])
    (root / "ImageSets" / "Main" / "none.txt").write_bytes(content)
    argv = ["train", "ssd_tiny_shapes", "--set", "data.kind=voc", "--set", f"data.root={root}"]
    argv += ["--set", "data.train_split=none", "--set", f"train.out_dir={tmp_path / 'run'}"]
    assert main(argv) == 3
    assert capsys.readouterr().err == (
        f"multibox train: error: the training set VOCDetection(root='{root}', split='none', images=0) has no image "
        "(an empty split file, or every file skipped?)\n"
    )


@pytest.mark.parametrize("crowd", [False, True], ids=["no_annotations", "only_crowd"])
def test_coco_set_without_any_box_says_so(tmp_path, capsys, crowd) -> None:
    """No annotation at all, or only crowd regions (not training targets): refused before training, exit 3."""
    data = _valid()
    data["annotations"] = [dict(data["annotations"][1], iscrowd=1)] if crowd else []
    images_dir, ann = _coco(tmp_path, data, IMAGES)
    argv = [
        "train",
        "ssd_tiny_shapes",
        "--no-progress",
        "--set",
        "data.kind=coco",
        "--set",
        f"train.out_dir={tmp_path}",
    ]
    argv += ["--set", f"data.train_images={images_dir}", "--set", f"data.train_annotations={ann}"]
    assert main(argv) == 3
    assert capsys.readouterr().err == (
        f"multibox train: error: no image of the training set COCODetection(images_dir='{images_dir}', images=3) "
        "has a box: there is nothing to learn\n"
    )
    assert not (tmp_path / "last.pt").exists()


def test_scan_reports_bad_coco_entries_and_keeps_going(tmp_path) -> None:
    data = _valid()
    data["annotations"][0]["iscrowd"] = "0"
    data["annotations"][2]["bbox"] = [1, 2, 3]
    images_dir, ann = _coco(tmp_path, data, IMAGES)
    report = scan_dataset(images_dir, annotation_json=ann)
    assert report.kinds()["bad_annotation_entry"] == 2 and report.num_images == 1  # only empty.png is usable
    text = str(report)
    assert "annotation id 1 (annotations[0]): 'iscrowd' must be 0 or 1" in text
    assert "annotation id 3 (annotations[2]): 'bbox' must be 4 numbers" in text


def test_real_sets_have_no_problem_after_the_checks(shared_data) -> None:
    for name in ("cards", "raccoon"):
        report = scan_dataset(shared_data / name, decode=True)
        assert report.ok and not report.kinds().get("corrupt_image"), str(report)
