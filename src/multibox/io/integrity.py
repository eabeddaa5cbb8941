"""Whether a JPEG or PNG file is complete: the truncation and corruption that Pillow lets through.

What Pillow does with broken files (measured by cutting JPEG, progressive JPEG, PNG, BMP, TIFF, WebP and GIF files
at every length, and by flipping CRC bytes; ``tests/data/test_reliability_images.py`` keeps the cases):

- With ``ImageFile.LOAD_TRUNCATED_IMAGES`` False (Pillow's default), a JPEG cut anywhere raises "image file is
  truncated"; so do BMP, TIFF and WebP. A PNG cut within its last ~20 bytes (the ``IEND`` chunk, the last ``IDAT``
  CRC, zlib's Adler-32) reads *without a word*, and the CRCs of ``IDAT`` and later chunks are never checked, so a
  corrupt CRC there reads silently too (chunks before ``IDAT`` are checked). A GIF without its 1-byte trailer reads
  complete pixels.
- With ``LOAD_TRUNCATED_IMAGES`` True (a setting many scripts copy), a JPEG cut by 1-3 bytes reads without error
  and any longer cut decodes partially (grey below the cut); so do PNG, BMP, TIFF and GIF.

So JPEG and PNG files (told by their signatures), nearly every dataset's images, are checked here from their bytes,
whatever that global says (this module never sets it): a JPEG must reach its end-of-image marker (``EOI``; an MPO's
first image ends there too), a PNG its ``IEND`` chunk with a correct CRC on every chunk. :func:`check_ending` is
the cheap test of the last bytes, used when a header is read; :func:`image_problem` walks the whole file and is
used before pixels are decoded.
"""

from __future__ import annotations

import os
import re
import zlib
from typing import BinaryIO

__all__ = ["check_ending", "image_problem", "sniff_format"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The IEND chunk: length 0, type, and its (constant) CRC (PNG spec, section 11.2.5).
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"
# A JPEG marker: 0xFF then a code that is not a stuffed zero, a restart marker (RST0-7) or a fill byte (ITU T.81 B.1.1).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Markers without a length field (T.81 table B.1): TEM, SOI, EOI (RSTn never match _JPEG_MARKER).
_JPEG_STANDALONE = frozenset({0x01, 0xD8, 0xD9})


def _jpeg_problem(data: bytes) -> str | None:
    """Walk the marker segments (skipped by their lengths) and entropy-coded data up to the first EOI."""
    n = len(data)
    pos = 2  # after SOI
    while True:
        m = _JPEG_MARKER.search(data, pos)
        if m is None:
            return "truncated: the JPEG has no end-of-image marker (EOI)"
        code, pos = data[m.start() + 1], m.end()
        if code == 0xD9:
            return None
        if code in _JPEG_STANDALONE:
            continue
        if pos + 2 > n:
            return f"truncated: the JPEG ends inside marker 0xFF{code:02X}"
        length = int.from_bytes(data[pos : pos + 2], "big")
        if pos + length > n:
            return f"truncated: the JPEG ends inside the segment of marker 0xFF{code:02X} at byte {m.start()}"
        pos += length  # after SOS (0xDA) the scan's entropy-coded data follows; the search skips it


def _png_problem(data: bytes) -> str | None:
    """Walk the chunks up to ``IEND``, checking each one's length and CRC (PNG spec, section 5.3)."""
    view, n = memoryview(data), len(data)
    pos, last = len(_PNG_SIGNATURE), "the signature"
    while True:
        if pos + 8 > n:
            return f"truncated: the PNG has no IEND chunk (the file ends after {last})"
        length = int.from_bytes(view[pos : pos + 4], "big")
        name = bytes(view[pos + 4 : pos + 8]).decode("latin-1")
        end = pos + 12 + length
        if end > n:
            return f"truncated: PNG chunk {name} at byte {pos} is cut short ({n - pos} of its {length + 12} bytes)"
        if zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(view[end - 4 : end], "big"):
            return f"corrupt: PNG chunk {name} at byte {pos} has a bad CRC"
        if name == "IEND":
            return None
        pos, last = end, f"chunk {name}"


def sniff_format(head: bytes) -> str | None:
    """``"JPEG"`` or ``"PNG"`` from a file's first bytes (its signature), else None (a format not checked here)."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(_PNG_SIGNATURE):
        return "PNG"
    return None


def image_problem(data: bytes) -> str | None:
    """What makes a JPEG or PNG file incomplete or corrupt, from all its bytes; None when nothing is found.

    The format is told by the file's signature (:func:`sniff_format`), so a file cut inside its header, which
    Pillow cannot even open, gets the same reason.

    Args:
        data: the whole file.

    Returns:
        A reason such as ``"truncated: the JPEG has no end-of-image marker (EOI)"``, ``"truncated: the PNG has no
        IEND chunk (...)"`` or ``"corrupt: PNG chunk IDAT at byte 33 has a bad CRC"``; None for a complete file or
        another format. Data after a JPEG's first EOI or after a PNG's IEND (camera trailers) is allowed.
    """
    fmt = sniff_format(data[:8])
    if fmt == "JPEG":
        return _jpeg_problem(data)
    if fmt == "PNG":
        return _png_problem(data)
    return None


def check_ending(f: BinaryIO) -> str | None:
    """The cheap completeness test of an open file: does it end as a complete JPEG (``EOI``) or PNG (``IEND``) does?

    Only the first 8 and the last 12 bytes are read; a JPEG or PNG that ends otherwise (e.g. a trailer after the
    image) is walked in full by :func:`image_problem`. Chunk CRCs before the end are not checked here (decoding
    checks them).

    Args:
        f: the file, opened in binary mode and seekable; its position is changed.

    Returns:
        The reason the file is incomplete, or None (also for formats other than JPEG and PNG).
    """
    f.seek(0)
    fmt = sniff_format(f.read(8))
    if fmt is None:
        return None
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - len(_PNG_IEND)))
    if f.read().endswith(_PNG_IEND if fmt == "PNG" else _JPEG_EOI):
        return None
    f.seek(0)
    return image_problem(f.read())
