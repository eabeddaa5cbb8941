"""Reading images as upright RGB ``uint8`` tensors, and the EXIF orientation of boxes.

Every reader in :mod:`multibox.data` decodes through :func:`read_image`, so that grayscale, palette, RGBA, CMYK,
16-bit and EXIF-rotated files all come out the same way: ``Tensor[3, H, W]`` ``uint8`` RGB, upright as a viewer
displays them.

EXIF orientation and annotations. A photo from a phone is often stored sideways with an EXIF ``Orientation`` tag
that tells viewers to rotate it. Whether a box annotation refers to the *stored* pixel grid or to the *displayed*
(rotated) image depends on the tool: labelImg shows images through Qt's ``QImage``, which does not apply the tag,
so its boxes and its ``<size>`` refer to the stored grid. :func:`resolve_orientation` decides per image:

- ``"auto"`` (default): the boxes refer to the displayed image when the annotated size equals the displayed size
  and differs from the stored size (a 90-degree tag on a non-square image); otherwise (same size, square image,
  flip-only tags, size missing) they refer to the stored grid, as labelImg records them.
- ``"stored"`` / ``"displayed"``: force one interpretation.

Either way the boxes are moved into the coordinates of the upright image that :func:`read_image` returns.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch import Tensor

from multibox.io.integrity import check_ending, image_problem, sniff_format
from multibox.io.pillow_open import open_image
from multibox.io.regular import open_regular, read_bytes

__all__ = [
    "ExifPolicy",
    "ImageInfo",
    "decode_image",
    "decode_image_bytes",
    "orient_boxes",
    "probe_image",
    "read_image",
    "resolve_orientation",
    "scale_to_decoded",
]

ExifPolicy = Literal["auto", "stored", "displayed"]

_ORIENTATION_TAG = 0x0112
# Orientations 5-8 turn the image by 90 degrees: the displayed width is the stored height.
_SWAPS_AXES = frozenset({5, 6, 7, 8})

# Allow large photos but keep Pillow's decompression-bomb guard on (its default limit is ~89 Mpx).
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, 180_000_000)

_TRUNCATED_SETTING_WARNING = (
    "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by some code in this process): a truncated {fmt} file would be "
    "read as a partial picture without an error (JPEG and PNG files are still checked)"
)


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says, without decoding the pixels.

    Attributes:
        stored_size: ``(width, height)`` of the stored pixel grid.
        orientation: the EXIF orientation tag, 1 (upright) when absent or invalid.
        mode: Pillow's mode of the stored image (``"RGB"``, ``"L"``, ``"CMYK"``, ``"I;16"``, ...).
    """

    stored_size: tuple[int, int]
    orientation: int
    mode: str

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the upright image, as :func:`read_image` returns it."""
        w, h = self.stored_size
        return (h, w) if self.orientation in _SWAPS_AXES else (w, h)


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a corrupt EXIF block must not make the image unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def probe_image(path: str | Path) -> ImageInfo:
    """Read the header of an image file (size, EXIF orientation, mode) without decoding its pixels.

    Only regular files are opened (:mod:`multibox.io.regular`), and a JPEG or PNG must end as a complete file does
    (:func:`multibox.io.integrity.check_ending`, a read of its last bytes), so truncated files are found here.

    Raises:
        OSError: the file is missing, not a regular file, empty, truncated, or not an image Pillow can identify (the
            message names the file and the reason).
    """
    try:
        with open_regular(path) as f:
            problem = check_ending(f)
            if problem is not None:
                raise OSError(problem)
            f.seek(0)
            with open_image(f, path) as img:
                return ImageInfo((int(img.width), int(img.height)), _orientation(img), img.mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise OSError(f"{path}: cannot read image header: {_reason(path, exc)}") from exc


def _reason(path: str | Path, exc: BaseException) -> str:
    """Pillow's error in words that do not repeat the path (an empty file gets its own reason)."""
    if isinstance(exc, UnidentifiedImageError):
        try:
            empty = os.stat(path).st_size == 0
        except OSError:
            empty = False
        return "empty file (0 bytes)" if empty else "not an image file Pillow can identify"
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return exc.strerror  # "No such file or directory" without the path again
    return str(exc)


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB array from an image of any Pillow mode."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit int) grayscale: scale the 16-bit range to 8 bits; Pillow's own convert clips instead.
        a = np.asarray(img).astype(np.int64)
        a = (np.clip(a, 0, 65535) * 255 + 32767) // 65535
        a = a.astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        scale = 255.0 if np.nanmax(a, initial=0.0) <= 1.0 else 1.0
        a = np.clip(np.nan_to_num(a) * scale, 0, 255).round().astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if mode != "RGB":
        # L, LA, 1, P, RGBA (alpha dropped), CMYK (Pillow's conversion), YCbCr, LAB, HSV ...
        img = img.convert("RGB")
    return np.asarray(img)


def _draft(img: Image.Image, max_side: int) -> None:
    """Let the JPEG decoder scale its output down by 2, 4 or 8 (DCT scaling) while the longer side stays >= max_side."""
    longer = max(img.width, img.height)
    if img.format != "JPEG" or longer < 2 * max_side:
        return
    scale = max_side / longer
    img.draft(img.mode, (math.ceil(img.width * scale), math.ceil(img.height * scale)))


def decode_image(path: str | Path, max_side: int | None = None) -> tuple[Tensor, ImageInfo]:
    """Decode an image file as :func:`read_image` does, and also return its header (:class:`ImageInfo`).

    A JPEG or PNG is first checked from its bytes (:func:`multibox.io.integrity.image_problem`): a truncated or
    CRC-corrupted file is refused, never read as a partial picture, whatever ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``
    says. Other formats rely on Pillow's own truncation error, which that setting turns off (a warning says so).

    Args:
        path: the image file.
        max_side: if set, a JPEG at least twice as large is decoded at 1/2, 1/4 or 1/8 of its size by the JPEG
            decoder itself (Pillow's ``draft``; several times faster than decoding it whole), never with a longer
            side below ``max_side``. The returned :class:`ImageInfo` still holds the file's full size; scale pixel
            boxes by the decoded size over ``info.size``.
    """
    try:
        data = read_bytes(path)  # regular files only
    except OSError as exc:
        raise OSError(f"{path}: cannot decode image: {_reason(path, exc)}") from exc
    return decode_image_bytes(data, str(path), max_side)


def decode_image_bytes(data: bytes, source: str, max_side: int | None = None) -> tuple[Tensor, ImageInfo]:
    """Decode an image held in memory (an upload, an archive member) as :func:`decode_image` decodes a file.

    Args:
        data: the encoded image.
        source: what the bytes are, for messages (a file name, ``"the request body"``).
        max_side: as :func:`decode_image`'s.

    Raises:
        OSError: the bytes are empty, truncated, corrupt or not an image (the message names ``source`` and the
            reason).
    """
    try:
        if not data:
            raise OSError("empty file (0 bytes)")
        problem = image_problem(data)
        if problem is not None:
            raise OSError(problem)
        with open_image(io.BytesIO(data), source) as img:
            if ImageFile.LOAD_TRUNCATED_IMAGES and sniff_format(data[:8]) is None:
                warnings.warn(_TRUNCATED_SETTING_WARNING.format(fmt=img.format), stacklevel=3)
            info = ImageInfo((int(img.width), int(img.height)), _orientation(img), img.mode)
            if max_side is not None:
                _draft(img, max_side)
            img.load()
            if info.orientation != 1:
                img = ImageOps.exif_transpose(img)
            array = _to_rgb_array(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise OSError(f"{source}: cannot decode image: {_reason(source, exc)}") from exc
    if not array.flags.writeable:  # Pillow's own buffer: a copy, so that the tensor owns writable memory
        array = array.copy()
    # (H, W, 3) -> (3, H, W) as a view: channels-last strides, the layout of torch's fast uint8 resize.
    return torch.from_numpy(array).permute(2, 0, 1), info


def scale_to_decoded(target: dict, size: tuple[int, int], image: Tensor) -> dict:
    """``target`` with its pixel ``"boxes"`` moved from an image of ``size = (width, height)`` onto ``image``
    ``Tensor[3, h, w]`` (decoded smaller by :func:`decode_image`'s ``max_side``); unchanged when the sizes agree."""
    h, w = image.shape[-2:]
    if (w, h) == tuple(size):
        return target
    scale = torch.tensor([w / size[0], h / size[1]] * 2, dtype=target["boxes"].dtype)
    return {**target, "boxes": target["boxes"] * scale}


def read_image(path: str | Path) -> Tensor:
    """Decode an image file as an upright RGB ``uint8`` ``Tensor[3, H, W]``.

    The tensor is a view of the decoded ``[H, W, 3]`` pixels (channels-last strides, as Pillow lays them out):
    call ``.contiguous()`` where a plain ``[3, H, W]`` layout is needed.

    EXIF orientation is applied (the result is the image as displayed), grayscale and palette images are
    replicated to three channels, an alpha channel is dropped, CMYK goes through Pillow's conversion and 16-bit
    images are scaled to 8 bits.

    Raises:
        OSError: the file is missing, not a regular file, empty, truncated, corrupt or not an image (the message
            names the file and the reason).
    """
    return decode_image(path)[0]


def resolve_orientation(info: ImageInfo, annotated_size: tuple[int, int] | None, policy: ExifPolicy = "auto") -> bool:
    """Whether boxes annotated on an image must be moved by its EXIF orientation (see the module docstring).

    Args:
        info: the image's header.
        annotated_size: ``(width, height)`` the annotation states, or None when it states none (or zeros).
        policy: ``"auto"``, ``"stored"`` (boxes refer to the stored grid) or ``"displayed"``.

    Returns:
        True when the boxes refer to the stored grid of an image whose orientation is not upright, i.e. they
        must go through :func:`orient_boxes`.
    """
    if info.orientation == 1 or policy == "displayed":
        return False
    if policy == "stored":
        return True
    if annotated_size is not None and info.orientation in _SWAPS_AXES:
        displayed = info.size
        if tuple(annotated_size) == displayed and displayed != info.stored_size:
            return False
    return True


def orient_boxes(boxes: Tensor, orientation: int, stored_size: tuple[int, int]) -> Tensor:
    """Move xyxy pixel boxes from the stored grid into the upright image, as ``ImageOps.exif_transpose`` moves pixels.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy in continuous pixel coordinates of the stored grid.
        orientation: EXIF orientation tag 1..8.
        stored_size: ``(width, height)`` of the stored grid.

    Returns:
        ``Tensor[N, 4]`` xyxy in the upright image (``(height, width)`` of the stored grid for tags 5-8).
    """
    if orientation == 1 or boxes.numel() == 0:
        return boxes.clone()
    w, h = float(stored_size[0]), float(stored_size[1])
    x1, y1, x2, y2 = boxes.unbind(-1)
    # Where a stored point (x, y) lands in the upright image, for each tag (PIL's exif_transpose methods:
    # 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise).
    maps = {
        2: lambda x, y: (w - x, y),
        3: lambda x, y: (w - x, h - y),
        4: lambda x, y: (x, h - y),
        5: lambda x, y: (y, x),
        6: lambda x, y: (h - y, x),
        7: lambda x, y: (h - y, w - x),
        8: lambda x, y: (y, w - x),
    }
    if orientation not in maps:
        raise ValueError(f"EXIF orientation must be in 1..8, got {orientation}")
    ax, ay = maps[orientation](x1, y1)
    bx, by = maps[orientation](x2, y2)
    return torch.stack((torch.minimum(ax, bx), torch.minimum(ay, by), torch.maximum(ax, bx), torch.maximum(ay, by)), -1)
