"""The training and evaluation pipelines of SSD: from a decoded photo and pixel boxes to the network's input.

Both map ``(uint8 Tensor[3, h, w], pixel boxes Tensor[N, 4], labels)`` to ``(float32 Tensor[3, H, W] normalised,
[0, 1] xyxy boxes, labels)``; see :mod:`multibox.data.transforms` for the conventions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from multibox.data.photometric import PhotometricDistort
from multibox.data.transforms import (
    Compose,
    Expand,
    HorizontalFlip,
    MinIoURandomCrop,
    Normalize,
    Resize,
    ToRelative,
    Transform,
)
from multibox.data.zoom_crop import ZoomCropResize
from multibox.preprocess import to_hw

__all__ = ["eval_transform", "train_decode_side", "train_transform"]


def train_decode_side(image_size: int | Sequence[int], min_scale: float = 0.3) -> int:
    """The longest side a training photo needs for :func:`train_transform` at ``image_size``: its smallest patch
    (``min_scale`` of a side, :class:`~multibox.data.MinIoURandomCrop`) still has the output's resolution.

    Readers decode large JPEGs down to it (their ``decode_max_side``) without losing any detail the network sees.
    """
    h, w = to_hw(image_size)
    return math.ceil(max(h, w) / min_scale)


def train_transform(
    image_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    expand_ratio: float = 4.0,
    min_ious: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    flip_p: float = 0.5,
    photometric: bool = True,
    antialias: bool = True,
) -> Compose:
    """The SSD training pipeline (§2.2, §3.6): photometric distortion, zoom out, min-IoU crop, resize, flip, normalise.

    The first four run as one :class:`~multibox.data.zoom_crop.ZoomCropResize` (no zoom-out canvas is built; the
    distortion runs on the output's pixels).

    Args:
        image_size: the network input ``(H, W)`` (an int: square).
        mean: per-channel mean in 0-255 units (also the zoom-out fill), e.g. ``(123, 117, 104)``.
        std: per-channel std in 0-255 units (``(1, 1, 1)`` for the Caffe VGG convention).
        expand_ratio: the zoom-out's maximum side ratio (1 disables it; the paper's 4).
        min_ious: the crop's IoU modes.
        flip_p: the horizontal-flip probability.
        photometric: include :class:`~multibox.data.PhotometricDistort`.
        antialias: antialiased downscaling in the resize.

    Returns:
        A :class:`~multibox.data.transforms.Compose` from ``(uint8 [3, h, w], pixel boxes, labels)`` to
        ``(float [3, H, W] normalised, [0, 1] xyxy boxes, labels)``.
    """
    h, w = to_hw(image_size)
    steps: list[Transform] = [
        ZoomCropResize(
            PhotometricDistort() if photometric else None,
            Expand(mean, expand_ratio) if expand_ratio > 1 else None,
            MinIoURandomCrop(min_ious),
            size=(h, w),
            antialias=antialias,
        ),
        HorizontalFlip(flip_p),  # after the resize (they commute exactly): fewer pixels to move
        Normalize(mean, std),
        ToRelative(),
    ]
    return Compose(steps)


def eval_transform(
    image_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float], *, antialias: bool = True
) -> Compose:
    """Evaluation pipeline: resize to ``image_size`` ``(H, W)``, normalise, boxes to [0, 1] xyxy (no randomness)."""
    return Compose([Resize(to_hw(image_size), antialias), Normalize(mean, std), ToRelative()])
