"""Image decoding and EXIF orientation of boxes, checked against Pillow's own exif_transpose."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from multibox.data.image_io import ImageInfo, orient_boxes, probe_image, read_image, resolve_orientation


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
