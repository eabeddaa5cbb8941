"""Image decoding and EXIF orientation of boxes, checked against Pillow's own exif_transpose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from multibox.data import VOCDetection
from multibox.data.image_io import (
    ImageInfo,
    decode_image,
    orient_boxes,
    probe_image,
    read_image,
    resolve_orientation,
)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_boxes_matches_exif_transpose(tmp_path, orientation) -> None:
    # A white block at stored pixels x 5..11, y 2..4 of a 17x9 black image: box [5, 2, 12, 5].
    array = np.zeros((9, 17, 3), dtype=np.uint8)
    array[2:5, 5:12] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "img.png"
    Image.fromarray(array).save(path, exif=exif)
    with Image.open(path) as img:
        expected = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    image = read_image(path)
    assert np.array_equal(image.permute(1, 2, 0).numpy(), expected)  # (3, H, W) -> (H, W, 3)
    ys, xs = np.nonzero(expected[..., 0] > 127)
    marker = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    info = probe_image(path)
    assert info.orientation == orientation and info.stored_size == (17, 9)
    assert info.size == (image.shape[2], image.shape[1])
    moved = orient_boxes(torch.tensor([[5.0, 2.0, 12.0, 5.0]]), orientation, info.stored_size)
    torch.testing.assert_close(moved, marker)


def test_resolve_orientation_policy() -> None:
    rotated = ImageInfo((40, 20), 6, "RGB")
    assert resolve_orientation(rotated, (40, 20)) is True  # labelImg: the stored grid
    assert resolve_orientation(rotated, (20, 40)) is False  # annotated as displayed
    assert resolve_orientation(rotated, None) is True
    assert resolve_orientation(rotated, (20, 40), "stored") is True
    assert resolve_orientation(rotated, (40, 20), "displayed") is False
    assert resolve_orientation(ImageInfo((40, 20), 1, "RGB"), (40, 20)) is False
    assert resolve_orientation(ImageInfo((30, 30), 8, "RGB"), (30, 30)) is True  # square: ambiguous, stored


def test_sixteen_bit_scaled_not_clipped(tmp_path) -> None:
    array = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(array).save(tmp_path / "g16.png")
    image = read_image(tmp_path / "g16.png")
    assert image[0, 0].tolist() == [0, 1, 128, 255]


def test_unreadable_file_names_it(tmp_path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0garbage")
    with pytest.raises(OSError, match=r"broken\.jpg"):
        read_image(bad)
    with pytest.raises(OSError, match=r"missing\.png"):
        probe_image(tmp_path / "missing.png")


def _smooth_jpeg(path: Path, size: tuple[int, int], exif_orientation: int = 1) -> None:
    """A smooth photo-like JPEG (a 3x4 random image upsampled) of ``size = (width, height)``."""
    low = np.random.default_rng(0).integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize(size, Image.BILINEAR)
    kwargs = {}
    if exif_orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    img.save(path, quality=95, **kwargs)


@pytest.mark.parametrize(("max_side", "decoded"), [(300, (400, 300)), (200, (200, 150)), (900, (1600, 1200))])
def test_decode_image_drafts_large_jpegs_no_smaller_than_asked(tmp_path, max_side, decoded) -> None:
    # 1600x1200: DCT scaling gives 800x600, 400x300 or 200x150; the smallest whose longer side is >= max_side wins
    # (900: 1600 < 2 * 900, decoded whole).
    path = tmp_path / "big.jpg"
    _smooth_jpeg(path, (1600, 1200))
    image, info = decode_image(path, max_side=max_side)
    assert (image.shape[2], image.shape[1]) == decoded and info.size == (1600, 1200)
    full = read_image(path).float()
    small = torch.nn.functional.interpolate(full[None], size=image.shape[1:], mode="bilinear", antialias=True)[0]
    assert (image.float() - small).abs().mean() < 3  # the same picture, smaller
    png = tmp_path / "big.png"
    Image.open(path).save(png)
    assert decode_image(png, max_side=max_side)[0].shape == (3, 1200, 1600)  # only JPEGs are drafted


def test_voc_reader_scales_boxes_to_a_drafted_image(make_voc) -> None:
    root = make_voc([{"id": "a", "size": (1600, 1200), "objects": [("cat", 101, 201, 900, 1000)]},
                     {"id": "b", "size": (1200, 1600), "objects": [("cat", 11, 21, 600, 800)], "exif": 6}])  # fmt: skip
    for image_id, size, exif in (("a", (1600, 1200), 1), ("b", (1200, 1600), 6)):
        _smooth_jpeg(root / "JPEGImages" / f"{image_id}.jpg", size, exif)
    full = VOCDetection(root, split="train")
    drafted = VOCDetection(root, split="train")
    drafted.decode_max_side = 300
    for i in range(2):
        (im_full, t_full), (im_small, t_small) = full[i], drafted[i]
        assert max(im_small.shape[1:]) < max(im_full.shape[1:]) and max(im_small.shape[1:]) >= 300
        rel_full = t_full["boxes"] / torch.tensor([im_full.shape[2], im_full.shape[1]] * 2)
        rel_small = t_small["boxes"] / torch.tensor([im_small.shape[2], im_small.shape[1]] * 2)
        torch.testing.assert_close(rel_small, rel_full)  # the same place on the picture
        assert torch.equal(t_small["orig_size"], t_full["orig_size"])  # still the file's size
