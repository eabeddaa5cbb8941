"""Opening an image with Pillow so that its size warning names the file.

Pillow warns (``DecompressionBombWarning``) when an image has more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` and
refuses one with more than twice as many (``DecompressionBombError``); its warning does not say which file it
means, which in a folder of thousands is no help. :func:`open_image` replaces that warning with one that does.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from PIL import Image

__all__ = ["open_image"]


@contextmanager
def open_image(fp: BinaryIO, path: str | Path) -> Iterator[Image.Image]:
    """``PIL.Image.open(fp)`` as a context, warning with ``path`` when the image is over Pillow's pixel limit.

    Raises:
        PIL.Image.DecompressionBombError: over twice the limit (Pillow's refusal, unchanged); and whatever
            ``Image.open`` raises.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(fp)
    with img:
        limit, pixels = Image.MAX_IMAGE_PIXELS, img.width * img.height
        if limit is not None and pixels > limit:
            warnings.warn(
                f"{path}: {img.width}x{img.height} = {pixels} pixels, over Pillow's limit of {limit} "
                "(PIL.Image.MAX_IMAGE_PIXELS): decoding it takes much memory; is it a decompression bomb?",
                Image.DecompressionBombWarning,
                stacklevel=4,
            )
        yield img
