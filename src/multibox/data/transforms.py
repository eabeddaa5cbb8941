"""SSD training and evaluation transforms on ``(image, boxes, labels)`` (paper §2.2 "Data augmentation", §3.6).

Every transform is a callable ``t(image, boxes, labels, generator=None) -> (image, boxes, labels)``:

- ``image``: ``Tensor[3, H, W]``, ``uint8`` or float in 0-255 units (until :class:`Normalize`),
- ``boxes``: ``Tensor[N, 4]`` float xyxy in continuous **pixels** of the current image, until the final
  :class:`ToRelative`, which divides them by the image size: the output of :func:`train_transform` and
  :func:`eval_transform` is in **normalised [0, 1] xyxy**,
- ``labels``: ``Tensor[N]``; transforms that drop boxes drop the same rows of ``labels`` (any per-box tensor
  can travel as ``labels``, see :mod:`multibox.data.loader`),
- ``generator``: a ``torch.Generator`` that every random draw uses (None: torch's global one), so a seeded
  generator reproduces the same augmentation.

An image with no boxes (``Tensor[0, 4]``) passes through every transform.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from multibox.boxes import box_iou
from multibox.data.photometric import PhotometricDistort, _coin, _uniform

__all__ = [
    "Compose",
    "Expand",
    "HorizontalFlip",
    "LimitSize",
    "MinIoURandomCrop",
    "Normalize",
    "PhotometricDistort",
    "Resize",
    "ToFloat",
    "ToRelative",
    "Transform",
    "resize_image",
]

Sample = tuple[Tensor, Tensor, Tensor]


class Transform:
    """Base class: ``__call__(image, boxes, labels, generator=None) -> (image, boxes, labels)``."""

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> Sample:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply ``transforms`` in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence[Transform | PhotometricDistort]) -> None:
        self.transforms = list(transforms)

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> Sample:
        for t in self.transforms:
            image, boxes, labels = t(image, boxes, labels, generator)
        return image, boxes, labels

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


def resize_image(image: Tensor, size: tuple[int, int], antialias: bool = True) -> Tensor:
    """Bilinear resize of ``Tensor[3, H, W]`` to ``size = (H', W')``; the dtype (float or ``uint8``) is kept.

    ``uint8`` images are resized through a channels-last view, torch's vectorised antialiased path on the CPU
    (several times faster than float32); the result then has channels-last strides.
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    x = image.unsqueeze(0)  # (3, H, W) -> (1, 3, H, W) for interpolate
    if not x.is_floating_point():
        x = x.contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)[0]


def _scale_boxes(boxes: Tensor, sx: float, sy: float) -> Tensor:
    return boxes * torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype)


class ToFloat(Transform):
    """``uint8`` image to float32 (still 0-255)."""

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> Sample:
        return (image if image.is_floating_point() else image.float()), boxes.float(), labels


class LimitSize(Transform):
    """Downscale (bilinear, antialiased) so that the longer side is at most ``max_side``; smaller images pass.

    Not in the paper: a speed measure for large photos. With ``max_side >= output_side / min_crop_scale`` no
    detail that survives the final resize is lost.
    """

    def __init__(self, max_side: int) -> None:
        self.max_side = int(max_side)

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> Sample:
        h, w = image.shape[-2:]
        if max(h, w) <= self.max_side:
            return image, boxes, labels
        s = self.max_side / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        return resize_image(image, (nh, nw)), _scale_boxes(boxes, nw / w, nh / h), labels


class Expand(Transform):
    """Zoom out (paper §3.6): place the image at a random spot of a canvas up to ``max_ratio`` times larger per side.

    The canvas is filled with ``mean`` (0-255 units, per channel). With probability ``1 - p`` nothing happens.

    Args:
        mean: the fill colour, ``(R, G, B)``.
        max_ratio: the side ratio is uniform in ``[1, max_ratio]`` (paper: 16x area, i.e. 4).
        p: the probability of expanding.
    """

    def __init__(self, mean: Sequence[float], max_ratio: float = 4.0, p: float = 0.5) -> None:
        if max_ratio < 1:
            raise ValueError(f"max_ratio must be >= 1, got {max_ratio}")
        self.mean = tuple(float(m) for m in mean)
        self.max_ratio = float(max_ratio)
        self.p = p

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> Sample:
        canvas, boxes, _ = self.expand(image, boxes, generator)
        return canvas, boxes, labels

    def place(self, height: int, width: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
        """Draw the zoom-out of a ``height x width`` image without building it.

        Returns:
            ``(canvas height, canvas width, left, top)``: the photo's offset on the canvas; ``(height, width, 0, 0)``
            when this draw does not zoom out.
        """
        if not _coin(generator, self.p):
            return height, width, 0, 0
        ratio = _uniform(generator, 1.0, self.max_ratio)
        ch, cw = int(height * ratio), int(width * ratio)
        left = int(_uniform(generator, 0.0, cw - width))
        top = int(_uniform(generator, 0.0, ch - height))
        return ch, cw, left, top

    def expand(
        self, image: Tensor, boxes: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, tuple[int, int, int, int]]:
        """The zoom-out; returns the canvas, the moved boxes and the photo's pixel window ``(x1, y1, x2, y2)`` on it."""
        h, w = image.shape[-2:]
        ch, cw, left, top = self.place(h, w, generator)
        if (ch, cw) == (h, w):
            return image, boxes, (0, 0, w, h)
        fill = torch.tensor(self.mean, dtype=torch.float32)
        if not image.is_floating_point():
            fill = fill.round().clamp(0, 255)
        canvas = fill.to(image.dtype).view(3, 1, 1).expand(3, ch, cw).clone()  # (3, ch, cw)
        canvas[:, top : top + h, left : left + w] = image
        moved = boxes + torch.tensor([left, top, left, top], dtype=boxes.dtype)
        return canvas, moved, (left, top, left + w, top + h)


def _centers_inside(boxes: Tensor, windows: Tensor) -> Tensor:
    """``Tensor[T, N]`` bool: the centre of box ``n`` lies strictly inside window ``t`` (both xyxy)."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2  # (N,)
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    wx1, wy1, wx2, wy2 = (windows[:, k : k + 1] for k in range(4))  # (T, 1) each
    return (cx > wx1) & (cx < wx2) & (cy > wy1) & (cy < wy2)


class MinIoURandomCrop(Transform):
    """The paper's patch sampling (§2.2): whole image, a patch with min IoU 0.1/0.3/0.5/0.7/0.9, or any patch.

    A mode is drawn uniformly from ``whole image``, each of ``min_ious`` and ``unconstrained``. For an IoU mode,
    patches of ``[min_scale, 1]`` of each side with aspect ``h/w`` in ``aspect_range`` are drawn (up to
    ``max_trials``) until one has IoU >= the minimum with at least one box whose centre is inside it; boxes whose
    centre lies inside are kept, clipped to the patch. ``unconstrained`` only needs one centre inside. When no
    patch is accepted the whole image is kept. ssd.pytorch silently drops the 0.5 option (and its IoU test never
    rejects); both are as in Caffe SSD here. An image without boxes gets a random patch (any patch is accepted).
    """

    def __init__(
        self,
        min_ious: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
        max_trials: int = 50,
        min_scale: float = 0.3,
        aspect_range: tuple[float, float] = (0.5, 2.0),
    ) -> None:
        self.min_ious = tuple(float(v) for v in min_ious)
        self.max_trials = max_trials
        self.min_scale = min_scale
        self.aspect_range = aspect_range
        # None: whole image; -inf: unconstrained.
        self.modes: tuple[float | None, ...] = (None, *self.min_ious, -math.inf)

    def sample_window(
        self, width: int, height: int, boxes: Tensor, generator: torch.Generator | None = None
    ) -> tuple[tuple[int, int, int, int] | None, float | None]:
        """Draw a mode and a patch.

        Returns:
            ``((x1, y1, x2, y2) integer pixel window, min IoU of the mode)``; the window is None for the whole
            image (the mode drawn, or no patch accepted within ``max_trials``), the IoU None for the whole-image mode.
        """
        mode = self.modes[int(torch.randint(len(self.modes), (), generator=generator))]
        if mode is None:
            return None, None
        # All trials are drawn at once (T = max_trials) and the first acceptable one is taken.
        u = torch.rand(4, self.max_trials, generator=generator, dtype=torch.float64)  # (4, T)
        w = (self.min_scale + (1 - self.min_scale) * u[0]) * width
        h = (self.min_scale + (1 - self.min_scale) * u[1]) * height
        lo, hi = self.aspect_range
        ok = (h / w >= lo) & (h / w <= hi)  # (T,)
        left, top = u[2] * (width - w), u[3] * (height - h)
        x1, y1 = left.floor(), top.floor()
        x2 = torch.maximum((left + w).floor(), x1 + 1).clamp(max=width)
        y2 = torch.maximum((top + h).floor(), y1 + 1).clamp(max=height)
        windows = torch.stack((x1, y1, x2, y2), dim=1)  # (T, 4)
        if boxes.shape[0] > 0:
            inside = _centers_inside(boxes.to(torch.float64), windows)  # (T, N)
            iou = box_iou(windows, boxes.to(torch.float64))  # (T, N)
            ok &= (inside & (iou >= mode)).any(dim=1)
        accepted = ok.nonzero()
        if accepted.numel():
            x1_, y1_, x2_, y2_ = (int(v) for v in windows[int(accepted[0, 0])].tolist())
            return (x1_, y1_, x2_, y2_), mode
        return None, mode

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> Sample:
        image, boxes, labels, _ = self.crop(image, boxes, labels, generator)
        return image, boxes, labels

    def crop(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor, tuple[int, int, int, int]]:
        """The patch sampling; returns the sample and the patch's pixel window ``(x1, y1, x2, y2)``."""
        h, w = image.shape[-2:]
        window, _ = self.sample_window(w, h, boxes, generator)
        if window is None:
            return image, boxes, labels, (0, 0, w, h)
        x1, y1, x2, y2 = window
        kept, kept_labels = self.crop_boxes(boxes, labels, window)
        kept = kept - torch.tensor([x1, y1, x1, y1], dtype=kept.dtype)
        return image[:, y1:y2, x1:x2], kept, kept_labels, window

    @staticmethod
    def crop_boxes(boxes: Tensor, labels: Tensor, window: tuple[int, int, int, int]) -> tuple[Tensor, Tensor]:
        """The boxes whose centre lies inside ``window`` (xyxy pixels), clipped to it (still in image coordinates),
        and their labels."""
        win = torch.tensor([window], dtype=boxes.dtype)  # (1, 4)
        # The same float64 test as in sample_window, so the kept set is the one the window was accepted for.
        inside = _centers_inside(boxes.to(torch.float64), win.to(torch.float64))[0]  # (N,)
        kept = torch.minimum(torch.maximum(boxes[inside], win[:, :2].repeat(1, 2)), win[:, 2:].repeat(1, 2))
        return kept, labels[inside]


class HorizontalFlip(Transform):
    """Mirror left-right with probability ``p``: ``x1' = W - x2``, ``x2' = W - x1``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> Sample:
        if not _coin(generator, self.p):
            return image, boxes, labels
        w = image.shape[-1]
        flipped = torch.stack((w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]), dim=1)
        return image.flip(-1), flipped, labels


class Resize(Transform):
    """Bilinear resize to ``size = (H, W)`` (an int: square), output float32; pixel boxes are scaled along.

    A ``uint8`` image is resized in ``uint8`` (see :func:`resize_image`), i.e. rounded to whole levels, as an image
    resized by Pillow or OpenCV is.

    Args:
        size: the output ``(H, W)``.
        antialias: low-pass when downscaling (torch's antialiased bilinear); False is cv2's plain ``INTER_LINEAR``
            as in ssd.pytorch.
    """

    def __init__(self, size: int | tuple[int, int], antialias: bool = True) -> None:
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.antialias = antialias

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> Sample:
        h, w = image.shape[-2:]
        out = resize_image(image, self.size, self.antialias).float().contiguous()  # uint8 resized as uint8 (fast)
        return out, _scale_boxes(boxes, self.size[1] / w, self.size[0] / h), labels


class Normalize(Transform):
    """``(image - mean) / std`` per channel, ``mean`` and ``std`` in 0-255 units (``(R, G, B)``)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got {self.mean}, {self.std}")

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> Sample:
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (image.float() - mean) / std, boxes, labels


class ToRelative(Transform):
    """Pixel boxes to normalised [0, 1] xyxy (divided by the image's width and height, clamped); the last step."""

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> Sample:
        h, w = image.shape[-2:]
        return image, _scale_boxes(boxes.float(), 1.0 / w, 1.0 / h).clamp_(0.0, 1.0), labels
