"""Broken image files are refused with the file and the reason, never read as partial pictures.

Generated bad inputs: JPEG (baseline and progressive) and PNG cut at every length, a PNG whose IDAT CRC is flipped,
a 0-byte file, a non-image, a named pipe and a folder with an image's name; each with Pillow's
``LOAD_TRUNCATED_IMAGES`` at its default and set by other code.
"""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
from PIL import Image, ImageFile

from multibox.data.image_io import decode_image, probe_image, read_image
from multibox.io.integrity import check_ending, image_problem, sniff_format
from multibox.onnx_runtime import read_image_array


def _encode(fmt: str, size: tuple[int, int] = (24, 16), **kwargs) -> tuple[bytes, np.ndarray]:
    """An image of random pixels encoded as ``fmt``, and the pixels Pillow decodes from the complete file."""
    rng = np.random.default_rng(0)
    w, h = size
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, fmt, **kwargs)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as img:
        return data, np.asarray(img.convert("RGB"))


def _idat_crc_flipped(png: bytes) -> bytes:
    data = bytearray(png)
    start = data.index(b"IDAT") - 4  # the chunk's length field
    length = int.from_bytes(data[start : start + 4], "big")
    data[start + 8 + length] ^= 0xFF  # the first byte of its CRC
    return bytes(data)


def _pillow_reads(data: bytes) -> np.ndarray | None:
    """What plain Pillow makes of ``data``: the RGB pixels, or None when it raises."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError):
        return None


def test_pillow_reads_these_broken_pngs_without_a_word() -> None:
    """The premise of multibox.io.integrity: plain Pillow accepts a PNG without its IEND and one with a bad IDAT
    CRC, and decodes cut JPEGs partially once LOAD_TRUNCATED_IMAGES is set."""
    png, pixels = _encode("PNG")
    for broken in (png[:-12], png[:-20], _idat_crc_flipped(png)):
        assert np.array_equal(_pillow_reads(broken), pixels)
    jpeg, _ = _encode("JPEG", (160, 120), quality=90)  # large enough that half the file is scan data
    assert _pillow_reads(jpeg[: len(jpeg) // 2]) is None  # the default: an error
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = True  # restored below; multibox itself never sets it
        assert _pillow_reads(jpeg[: len(jpeg) // 2]) is not None  # a partial picture
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def _cases() -> dict[str, tuple[bytes, str]]:
    jpeg, _ = _encode("JPEG", quality=90)
    progressive, _ = _encode("JPEG", quality=90, progressive=True)
    png, _ = _encode("PNG")
    iend = len(png) - 12
    return {
        "no_eoi.jpg": (jpeg[:-2], "truncated: the JPEG has no end-of-image marker (EOI)"),
        "cut_scan.jpg": (jpeg[:-60], "truncated: the JPEG has no end-of-image marker (EOI)"),
        "cut_header.jpg": (jpeg[:500], "truncated: the JPEG ends inside the segment of marker 0xFFC4 at byte 426"),
        "progressive.jpg": (progressive[:-40], "truncated: the JPEG has no end-of-image marker (EOI)"),
        "no_iend.png": (png[:-12], "truncated: the PNG has no IEND chunk (the file ends after chunk IDAT)"),
        "cut_iend.png": (png[:-1], f"truncated: PNG chunk IEND at byte {iend} is cut short (11 of its 12 bytes)"),
        "cut_idat.png": (png[:-20], "truncated: PNG chunk IDAT at byte 33 is cut short"),
        "half.png": (png[: len(png) // 2], "truncated: PNG chunk IDAT at byte 33 is cut short"),
        "empty.jpg": (b"", "empty file (0 bytes)"),
        "text.jpg": (b"hello, not an image\n", "not an image file Pillow can identify"),
    }


@pytest.mark.parametrize("flag", [False, True], ids=["default", "LOAD_TRUNCATED_IMAGES"])
@pytest.mark.parametrize("name", list(_cases()))
def test_truncated_empty_and_non_images_are_refused_with_the_reason(tmp_path, monkeypatch, name, flag) -> None:
    data, reason = _cases()[name]
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", flag)  # as a user's script might set it
    path = tmp_path / name
    path.write_bytes(data)
    for read, stage in ((probe_image, "cannot read image header"), (decode_image, "cannot decode image")):
        with pytest.raises(OSError) as info:
            read(path)
        message = str(info.value)
        assert message.startswith(f"{path}: {stage}: ") and reason in message, message


def test_bad_idat_crc_is_found_when_decoding(tmp_path) -> None:
    png, _ = _encode("PNG")
    path = tmp_path / "crc.png"
    path.write_bytes(_idat_crc_flipped(png))
    assert probe_image(path).stored_size == (24, 16)  # the header and the file's ending are intact
    with pytest.raises(
        OSError, match=r"crc\.png: cannot decode image: corrupt: PNG chunk IDAT at byte 33 has a bad CRC"
    ):
        read_image(path)


@pytest.mark.parametrize(("fmt", "kwargs"), [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {})])
def test_no_cut_of_a_jpeg_or_png_is_ever_read(tmp_path, monkeypatch, fmt, kwargs) -> None:
    """Every prefix of the file, from 1 byte to all but the last one, is refused by decode_image and probe_image,
    even with LOAD_TRUNCATED_IMAGES set (under which plain Pillow reads most of them as partial pictures)."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data, pixels = _encode(fmt, (12, 8), **kwargs)
    path = tmp_path / "cut"
    read = []
    for n in range(1, len(data)):
        path.write_bytes(data[:n])
        for fn in (probe_image, decode_image):
            try:
                fn(path)
                read.append((fn.__name__, n))
            except OSError:
                pass
    assert read == []
    path.write_bytes(data)
    assert np.array_equal(read_image(path).permute(1, 2, 0).numpy(), pixels)  # (3, H, W) -> (H, W, 3)


def test_data_after_the_end_marker_is_allowed(tmp_path) -> None:
    """Cameras append trailers after a JPEG's EOI (e.g. a motion photo's video) or a PNG's IEND: still complete."""
    for fmt in ("JPEG", "PNG"):
        data, pixels = _encode(fmt)
        path = tmp_path / f"trailer.{fmt.lower()}"
        path.write_bytes(data + b"\xff\xd8trailer without an end marker")
        assert np.array_equal(read_image(path).permute(1, 2, 0).numpy(), pixels)
        assert probe_image(path).stored_size == (24, 16)


def test_image_problem_and_check_ending_by_hand() -> None:
    jpeg, _ = _encode("JPEG")
    png, _ = _encode("PNG")
    assert image_problem(jpeg) is None and image_problem(png) is None
    assert sniff_format(jpeg) == "JPEG" and sniff_format(png) == "PNG" and sniff_format(b"GIF89a") is None
    assert image_problem(b"GIF89a...") is None  # other formats: Pillow's own checks
    # A JPEG segment length that runs past the end: the first segment after SOI (APP0, 16 bytes) is cut.
    assert image_problem(jpeg[:10]) == "truncated: the JPEG ends inside the segment of marker 0xFFE0 at byte 2"
    assert image_problem(png[:10]) == "truncated: the PNG has no IEND chunk (the file ends after the signature)"
    assert check_ending(io.BytesIO(png)) is None  # the last 12 bytes are the IEND chunk
    assert check_ending(io.BytesIO(_idat_crc_flipped(png))) is None  # not read by the cheap test
    assert check_ending(io.BytesIO(png[:-3])).startswith("truncated: PNG chunk IEND")
    assert check_ending(io.BytesIO(b"BM" + bytes(60))) is None


def test_a_truncated_bmp_is_refused_and_the_setting_is_named(tmp_path, monkeypatch) -> None:
    """Other formats rely on Pillow's truncation error; with LOAD_TRUNCATED_IMAGES set, a warning says so."""
    data, _ = _encode("BMP")
    path = tmp_path / "cut.bmp"
    path.write_bytes(data[:-100])
    with pytest.raises(OSError, match=r"cut\.bmp: cannot decode image: image file is truncated"):
        decode_image(path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.warns(UserWarning, match=r"LOAD_TRUNCATED_IMAGES is True .* a truncated BMP file would be read"):
        decode_image(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need POSIX")
def test_named_pipe_and_folder_are_not_opened(tmp_path, unjam) -> None:
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    unjam(fifo)
    folder = tmp_path / "y.png"
    folder.mkdir()
    for path, what in ((fifo, "a named pipe (FIFO)"), (folder, "a directory")):
        for fn in (probe_image, decode_image):
            with pytest.raises(OSError, match=rf"{path.name}: .*: not a regular file: {re.escape(what)}"):
                fn(path)


def test_real_photos_read_completely(shared_data) -> None:
    """Every photo of both shared sets passes the completeness checks (their JPEGs end with EOI)."""
    files = sorted((shared_data / "cards" / "JPEGImages").iterdir()) + sorted(
        (shared_data / "raccoon" / "JPEGImages").iterdir()
    )
    assert len(files) == 563
    for path in files:
        data = path.read_bytes()
        assert sniff_format(data) == "JPEG" and image_problem(data) is None, path
        assert check_ending(io.BytesIO(data)) is None
        assert probe_image(path).mode in ("RGB", "L")


def test_an_image_over_pillows_pixel_limit_is_named_and_one_over_twice_it_refused(tmp_path, monkeypatch) -> None:
    """Pillow's size warning names no file; multibox's names it. Over twice the limit: refused, naming the file."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    big, huge = tmp_path / "big.png", tmp_path / "huge.png"
    Image.new("RGB", (40, 30)).save(big)  # 1200 pixels: over the limit, under twice it
    Image.new("RGB", (40, 60)).save(huge)  # 2400 pixels
    warned = rf"^{re.escape(str(big))}: 40x30 = 1200 pixels, over Pillow's limit of 1000 \(PIL\.Image\.MAX_IMAGE_"
    for read in (probe_image, decode_image, read_image, read_image_array):
        with pytest.warns(Image.DecompressionBombWarning, match=warned) as record:
            read(big)
        assert len(record) == 1, read.__name__  # Pillow's own warning (no file named) is not shown as well
        with pytest.raises(OSError, match=rf"^{re.escape(str(huge))}: cannot (read image header|decode image): Image "):
            read(huge)
