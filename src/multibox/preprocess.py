"""Preprocessing values: the RGB mean and std (0-255 units) that pretrained weights expect, and input sizes.

A model's :class:`~multibox.models.ssd.Preprocess` (size, mean, std) travels with its weights in the checkpoint;
these are the values the builders default to, one per family of pretrained weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LITE_MEAN", "LITE_STD", "VGG_MEAN", "VGG_STD", "to_hw"]

#: ImageNet RGB statistics in 0-255 units (torchvision's classifiers: ``(0.485, 0.456, 0.406)`` x 255, ...).
IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

#: RGB mean in 0-255 units: ssd.pytorch's ``MEANS = (104, 117, 123)`` is BGR; our images are RGB.
VGG_MEAN: tuple[float, float, float] = (123.0, 117.0, 104.0)
#: Caffe VGG16 inputs are not divided by a std.
VGG_STD: tuple[float, float, float] = (1.0, 1.0, 1.0)

#: RGB mean and std in 0-255 units of the EfficientNet-Lite checkpoints (``efficientnet_lite_builder.py``: 127
#: and 128, "inception-style for better post-quantization").
LITE_MEAN: tuple[float, float, float] = (127.0, 127.0, 127.0)
LITE_STD: tuple[float, float, float] = (128.0, 128.0, 128.0)


def to_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """An input size as ``(H, W)``; an int means a square input.

    Raises:
        ValueError: unless the size is one positive int or two.
    """
    if isinstance(image_size, bool):
        raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}")
    if isinstance(image_size, int):
        hw: tuple[Any, ...] = (image_size, image_size)
    else:
        try:
            hw = tuple(image_size)
        except TypeError:
            raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}") from None
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw):
        raise ValueError(f"image_size must be a positive int or a pair (H, W) of positive ints, got {image_size!r}")
    return int(hw[0]), int(hw[1])
