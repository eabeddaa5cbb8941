"""VOCDetection on hand-made fixtures (every malformed case) and on the shared cards and raccoon sets."""

from __future__ import annotations

import warnings

import pytest
import torch

from multibox.data import VOC_CLASSES, DatasetError, DatasetWarning, VOCDetection
from multibox.data import records as records_module
from multibox.data.voc import voc_to_xyxy, xyxy_to_voc

BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><filename>&lol9;</filename></annotation>
"""


def _read_all(ds: VOCDetection) -> list:
    return [ds[i] for i in range(len(ds))]


def test_voc_classes_constant() -> None:
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tvmonitor"


def test_item_format_and_pixel_convention(make_voc) -> None:
    root = make_voc(
        [
            {"id": "a", "size": (40, 30), "objects": [("dog", 1, 1, 40, 30), ("cat", 11, 6, 20, 15)]},
            {"id": "b", "size": (20, 10), "objects": []},
        ]
    )
    ds = VOCDetection(root, "train")
    assert ds.classes == ("cat", "dog")  # collected, sorted
    assert len(ds) == 2 and ds.image_ids == ["a", "b"]
    image, target = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 30, 40)
    # 1-based inclusive corners -> continuous pixels: x1 = xmin - 1, x2 = xmax.
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 0.0, 40.0, 30.0], [10.0, 5.0, 20.0, 15.0]]))
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["labels"].tolist() == [2, 1]
    assert target["difficult"].tolist() == [False, False]
    assert target["image_id"] == "a" and target["orig_size"].tolist() == [30, 40]
    image, target = ds[1]  # an image without objects is a valid negative
    assert image.shape == (3, 10, 20) and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_voc_coordinate_round_trip() -> None:
    boxes = torch.tensor([[1.0, 1.0, 10.0, 20.0], [5.0, 7.0, 5.5, 9.0]])
    torch.testing.assert_close(xyxy_to_voc(voc_to_xyxy(boxes)), boxes)


def test_given_classes_define_labels_and_unknown_class_is_an_error(make_voc) -> None:
    root = make_voc([{"id": "a", "size": (20, 20), "objects": [("dog", 2, 2, 10, 10), ("cat", 3, 3, 9, 9)]}])
    ds = VOCDetection(root, "train", classes=["dog", "cat", "bird"])
    assert ds[0][1]["labels"].tolist() == [1, 2]
    with pytest.raises(DatasetError, match=r"a\.xml.*'cat'.*not one of the classes"):
        VOCDetection(root, "train", classes=["dog"])


def test_keep_difficult(make_voc) -> None:
    root = make_voc([{"id": "a", "size": (20, 20), "objects": [("dog", 2, 2, 10, 10, 1), ("dog", 3, 3, 9, 9, 0)]}])
    assert VOCDetection(root)[0][1]["boxes"].shape == (1, 4)
    target = VOCDetection(root, keep_difficult=True)[0][1]
    assert target["difficult"].tolist() == [True, False] and target["boxes"].shape == (2, 4)


def test_image_found_through_filename_with_mixed_case_extensions(make_voc) -> None:
    root = make_voc(
        [
            {"id": "upper", "size": (8, 8), "image": "upper.JPG", "objects": [("x", 1, 1, 4, 4)]},
            {"id": "wrongcase", "size": (8, 8), "image": "wrongcase.JPG", "filename": "wrongcase.jpg", "objects": []},
            {"id": "nofilename", "size": (8, 8), "image": "nofilename.Jpeg", "filename": None, "objects": []},
            {"id": "renamed", "size": (8, 8), "image": "other_name.png", "filename": "other_name.png", "objects": []},
        ]
    )
    ds = VOCDetection(root)
    assert [ds.image_path(i).name for i in range(4)] == [
        "upper.JPG",
        "wrongcase.JPG",
        "nofilename.Jpeg",
        "other_name.png",
    ]
    assert all(image.shape == (3, 8, 8) for image, _ in _read_all(ds))


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16", "LA"])
def test_any_image_mode_comes_out_rgb_uint8(make_voc, mode) -> None:
    root = make_voc([{"id": "m", "size": (12, 9), "mode": mode, "objects": [("x", 2, 2, 6, 6)]}])
    image, _ = VOCDetection(root)[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 9, 12)
    if mode in ("L", "I;16", "LA"):
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_exif_rotated_image_is_upright_and_boxes_follow(make_voc) -> None:
    # Stored 40x20, EXIF 6 (rotate 90 degrees clockwise to display): upright is 20x40.
    root = make_voc(
        [
            {"id": "stored", "size": (40, 20), "exif": 6, "objects": [("x", 1, 1, 10, 5)]},  # labelImg: stored grid
            {"id": "shown", "size": (40, 20), "ann_size": (20, 40), "exif": 6, "objects": [("x", 1, 1, 10, 5)]},
        ]
    )
    ds = VOCDetection(root)
    image, target = ds[0]
    assert image.shape == (3, 40, 20)
    # The stored box [0, 0, 10, 5] turns with the image: x' = H - y, y' = x.
    torch.testing.assert_close(target["boxes"], torch.tensor([[15.0, 0.0, 20.0, 10.0]]))
    image, target = ds[1]  # annotated on the displayed image: boxes unchanged
    assert image.shape == (3, 40, 20)
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 0.0, 10.0, 5.0]]))
    assert ds.get_target(0)["orig_size"].tolist() == [40, 20]


def test_targets_only_does_not_decode(make_voc, monkeypatch) -> None:
    root = make_voc([{"id": f"i{k}", "size": (16, 12), "objects": [("x", 1, 1, 5 + k, 6)]} for k in range(3)])
    ds = VOCDetection(root)
    expected = [t for _, t in _read_all(ds)]

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded an image")

    monkeypatch.setattr(records_module, "decode_image", no_decode)
    got = ds.targets_only()
    for a, b in zip(got, expected, strict=True):
        assert a["image_id"] == b["image_id"] and torch.equal(a["boxes"], b["boxes"])
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["orig_size"], b["orig_size"])


def test_split_none_reads_every_annotation(make_voc) -> None:
    root = make_voc([{"id": "a", "size": (8, 8), "objects": [("dog", 1, 1, 4, 4)]}], split="train")
    make_voc([{"id": "b", "size": (8, 8), "objects": []}], split="test", root=root)
    assert VOCDetection(root, None).image_ids == ["a", "b"]
    assert VOCDetection(root, "test").image_ids == ["b"]


def test_degenerate_and_outside_boxes_one_warning(make_voc) -> None:
    root = make_voc(
        [
            {"id": "deg", "size": (20, 20), "objects": [("x", 5, 5, 5, 10), ("x", 5, 9, 8, 3), ("x", 1, 1, 4, 4)]},
            {"id": "out", "size": (20, 20), "objects": [("x", -3, 2, 25, 10), ("x", 30, 30, 40, 40)]},
            {"id": "fine", "size": (20, 20), "objects": [("x", 1, 1, 20, 20)]},
        ]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = VOCDetection(root)
    ours = [w for w in caught if issubclass(w.category, DatasetWarning)]
    assert len(ours) == 1
    message = str(ours[0].message)
    assert "dropped 2 degenerate box(es)" in message and "deg.xml" in message
    assert "clipped 1 box(es)" in message and "out.xml" in message
    assert "dropped 1 box(es) entirely outside" in message
    assert ds[0][1]["boxes"].tolist() == [[0.0, 0.0, 4.0, 4.0]]
    assert ds[1][1]["boxes"].tolist() == [[0.0, 1.0, 20.0, 10.0]]


@pytest.mark.parametrize(
    ("xml", "match"),
    [
        ("<annotation><object><name>x</name>", r"bad\.xml: malformed XML"),
        (BOMB, r"bad\.xml: refused to parse, the XML declares entities"),
        ("<annotation><object><name>x</name></object></annotation>", r"bad\.xml: object 0 \('x'\) has no <bndbox>"),
        (
            "<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox>"
            "</object></annotation>",
            r"bad\.xml: object 0 has no <name>",
        ),
        (
            "<annotation><object><name>x</name><bndbox><xmin>1</xmin><ymin>one</ymin><xmax>2</xmax><ymax>2</ymax>"
            "</bndbox></object></annotation>",
            r"bad\.xml: object 0 <bndbox> <ymin> is not a number: 'one'",
        ),
        ("<notvoc/>", r"root element is <notvoc>"),
    ],
)
def test_malformed_annotation_names_the_file(make_voc, xml, match) -> None:
    root = make_voc([{"id": "bad", "size": (8, 8), "objects": [], "xml": xml}])
    with pytest.raises(DatasetError, match=match):
        VOCDetection(root)


def test_missing_image_is_an_error_or_skipped(make_voc) -> None:
    root = make_voc(
        [
            {"id": "gone", "size": (8, 8), "image": None, "filename": "gone.jpg", "objects": []},
            {"id": "here", "size": (8, 8), "objects": [("dog", 1, 1, 4, 4)]},
        ]
    )
    with pytest.raises(DatasetError, match=r"gone\.xml: image 'gone\.jpg' not found"):
        VOCDetection(root)
    with pytest.warns(
        DatasetWarning,
        match=r"skipped 1 unreadable file\(s\) in 1 file\(s\): \S+gone\.xml: image 'gone\.jpg' not found",
    ):
        ds = VOCDetection(root, on_error="skip")
    assert ds.image_ids == ["here"]


def test_unreadable_image_and_missing_folders(make_voc, tmp_path) -> None:
    root = make_voc([{"id": "junk", "size": (8, 8), "image": "junk.jpg", "objects": []}])
    (root / "JPEGImages" / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"junk\.jpg: cannot read image header"):
        VOCDetection(root)
    with pytest.raises(DatasetError, match="JPEGImages/ is missing"):
        (tmp_path / "empty" / "Annotations").mkdir(parents=True)
        VOCDetection(tmp_path / "empty")
    with pytest.raises(DatasetError, match=r"nosuch\.txt: cannot read split file"):
        VOCDetection(root, "nosuch")


# --- the shared real datasets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "splits", "num_boxes", "classes"),
    [
        ("cards", {"train": 296, "test": 67}, 670, ("ace", "jack", "king", "nine", "queen", "ten")),
        ("raccoon", {"train": 160, "test": 40}, 217, ("raccoon",)),
    ],
)
def test_shared_dataset_reads_completely(shared_data, name, splits, num_boxes, classes) -> None:
    total_boxes = 0
    for split, count in splits.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error", DatasetWarning)  # the shared sets need no repair
            ds = VOCDetection(shared_data / name, split)
        assert ds.classes == classes and len(ds) == count
        for i in range(len(ds)):  # decode every image once: upright RGB uint8 matching the header
            image, target = ds[i]
            assert image.dtype == torch.uint8 and image.shape[0] == 3
            assert target["orig_size"].tolist() == list(image.shape[1:])
            boxes = target["boxes"]
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            assert (
                (boxes >= 0).all() and (boxes[:, 2] <= image.shape[2]).all() and (boxes[:, 3] <= image.shape[1]).all()
            )
            total_boxes += len(boxes)
    assert total_boxes == num_boxes


def test_raccoon_grayscale_images_come_out_rgb(shared_data) -> None:
    ds = VOCDetection(shared_data / "raccoon", None)
    assert len(ds) == 200
    for image_id in ("raccoon-150", "raccoon-152", "raccoon-161"):
        image, _ = ds[ds.image_ids.index(image_id)]
        assert image.shape[0] == 3 and torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])


def test_cards_mixed_case_extensions(shared_data) -> None:
    ds = VOCDetection(shared_data / "cards", None)
    suffixes = [ds.image_path(i).suffix for i in range(len(ds))]
    assert suffixes.count(".JPG") == 311 and suffixes.count(".jpg") == 52
    assert sum(len(t["boxes"]) for t in ds.targets_only()) == 670
