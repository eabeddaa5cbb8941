"""What a request may send to ``POST /v1/detect``, and turning an accepted body into pixels.

Limits are checked in the order that spends the least on a bad request: the declared and the received body size
(read in chunks, stopped at the limit), the format from the first bytes (JPEG, PNG or WebP), the pixel count from
the image's header (so that a decompression bomb, a small file declaring a huge image, is refused before any pixel
is decoded), and only then the decoding itself, which checks JPEG and PNG files for truncation and corruption
(:func:`multibox.data.image_io.decode_image_bytes`).
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

from torch import Tensor

__all__ = [
    "ACCEPTED_FORMATS",
    "UploadError",
    "UploadLimits",
    "check_header",
    "decode_upload",
    "header_size",
    "read_limited",
    "sniff_image_format",
]

ACCEPTED_FORMATS = ("JPEG", "PNG", "WebP")


class UploadError(Exception):
    """A request the server refuses: ``status`` is the HTTP status, the message says why (for the client)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    """What one request may send.

    Attributes:
        max_body_bytes: the largest request body (an image, or a multipart form holding one).
        max_pixels: the largest width x height an image's header may declare.
    """

    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000


async def read_limited(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    """A request body, refused as soon as it is known to be larger than ``limit`` bytes.

    Args:
        chunks: the body as it arrives.
        declared: the ``Content-Length`` header, if any (a larger one is refused before anything is read).
        limit: the largest body accepted.

    Raises:
        UploadError: 413 over the limit, 400 for a malformed ``Content-Length``, 400 for an empty body.
    """
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise UploadError(400, "malformed Content-Length header") from None
        if size > limit:
            raise UploadError(413, f"request body of {size} bytes is larger than the limit of {limit} bytes")
    parts, received = [], 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise UploadError(413, f"request body is larger than the limit of {limit} bytes")
        parts.append(chunk)
    body = b"".join(parts)
    if not body:
        raise UploadError(400, "empty request body: send the image's bytes (or a multipart form with an image file)")
    return body


def sniff_image_format(head: bytes) -> str | None:
    """``"JPEG"``, ``"PNG"`` or ``"WebP"`` from the first bytes (the signatures), else None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return None


# SOF markers carry the frame size; 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) share the range but are not frames.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the marker segments to the first start-of-frame (ITU T.81 B.2.2: P, Y, X after the length)."""
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        code = data[pos + 1]
        if code == 0xFF:  # fill byte
            pos += 1
            continue
        if code in (0x01, *range(0xD0, 0xDA)):  # standalone markers (TEM, RSTn, SOI, EOI)
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if code in _JPEG_SOF:
            if pos + 9 > n:
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas size of a WebP file from its first chunk (VP8, VP8L or VP8X; Google's container spec)."""
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def header_size(data: bytes) -> tuple[str, tuple[int, int] | None]:
    """``(format, (width, height))`` from an image's header alone, the size None when the header is cut short or
    malformed; the format None when it is none of :data:`ACCEPTED_FORMATS`."""
    fmt = sniff_image_format(data[:12])
    if fmt == "PNG":
        ok = len(data) >= 24 and data[12:16] == b"IHDR"
        return fmt, struct.unpack(">II", data[16:24]) if ok else None
    if fmt == "JPEG":
        return fmt, _jpeg_size(data)
    if fmt == "WebP":
        return fmt, _webp_size(data)
    return None, None  # type: ignore[return-value]


def check_header(data: bytes, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """The format and size an image declares, refused before decoding when unusable.

    Raises:
        UploadError: 415 not a JPEG, PNG or WebP image; 400 a header too short or malformed to give the size; 413
            more pixels than ``max_pixels``.
    """
    fmt, size = header_size(data)
    if fmt is None:
        raise UploadError(415, f"the body is not a {', '.join(ACCEPTED_FORMATS[:-1])} or {ACCEPTED_FORMATS[-1]} image")
    if size is None:
        raise UploadError(400, f"cannot decode image: the {fmt} header is truncated or malformed (no image size)")
    width, height = size
    if width < 1 or height < 1:
        raise UploadError(400, f"cannot decode image: the {fmt} header declares an empty image ({width}x{height})")
    if width * height > max_pixels:
        raise UploadError(
            413,
            f"image of {width}x{height} = {width * height} pixels is larger than the limit of {max_pixels} pixels "
            f"(refused before decoding)",
        )
    return fmt, size


def decode_upload(data: bytes, limits: UploadLimits) -> Tensor:
    """An accepted image body as an upright RGB ``uint8 Tensor[3, H, W]`` (channels-last strides).

    Raises:
        UploadError: as :func:`check_header`, or 400 naming what is wrong with the pixels (truncated, corrupt).
    """
    from multibox.data.image_io import decode_image_bytes

    check_header(data, limits.max_pixels)
    try:
        image, _ = decode_image_bytes(data, "image")
    except OSError as e:
        raise UploadError(400, str(e).removeprefix("image: ")) from None
    h, w = image.shape[-2:]
    if h * w > limits.max_pixels:  # an EXIF rotation never changes the count; a header that lied would
        raise UploadError(413, f"decoded image of {w}x{h} pixels is larger than the limit of {limits.max_pixels}")
    return image
