"""The paper's training-time sampling in one step, without building the zoom-out canvas (paper §2.2, §3.6).

SSD's augmentation distorts the photo's colours, zooms out by placing it on a canvas up to 4x larger per side filled
with the mean colour, samples a patch with a minimum IoU to some object, and resizes the patch to the network's
input. Done literally, the canvas of a 960x540 photo at 4x has 25 million values, and the patch is then resized from
a large image. :class:`ZoomCropResize` draws the same random numbers in the same order
(:class:`~multibox.data.PhotometricDistort`, :class:`~multibox.data.Expand`, :class:`~multibox.data.MinIoURandomCrop`)
and builds only the output: a canvas of the output size filled with the mean, onto which the part of the photo that
the patch keeps is resized (in ``uint8``, channels-last, torch's fast antialiased path) and pasted, and then
distorts only those photo pixels. Boxes are exactly those of the literal sequence (scaled to the output); pixels
differ only at the photo's border, which is snapped to whole output pixels instead of blended with the fill, and by
the resize happening before the distortion (the distortion's clamping and HSV steps do not commute exactly with the
resampling; the same random distortion of the same content, on a fraction of the pixels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from multibox.data.photometric import PhotometricDistort, PhotometricParams
from multibox.data.transforms import Expand, MinIoURandomCrop, Transform, resize_image

__all__ = ["ZoomCropResize", "resize_region"]


def resize_region(image: Tensor, size: tuple[int, int], antialias: bool = True) -> Tensor:
    """:func:`~multibox.data.transforms.resize_image` of ``Tensor[3, h, w]`` (any strides) as contiguous float32."""
    return resize_image(image, size, antialias).float().contiguous()


class ZoomCropResize(Transform):
    """Photometric distortion, zoom-out, min-IoU crop and resize to ``size`` as one step (see the module docstring).

    Args:
        photometric: the distortion (None: skipped).
        expand: the zoom-out (None: skipped); its ``max_side`` does not apply (no canvas is built).
        crop: the patch sampling.
        size: the output ``(H, W)``.
        antialias: antialiased downscaling.

    Returns (when called):
        ``(float32 Tensor[3, H, W] in 0-255 units, boxes in output pixels, labels)``.
    """

    def __init__(
        self,
        photometric: PhotometricDistort | None,
        expand: Expand | None,
        crop: MinIoURandomCrop,
        size: tuple[int, int],
        antialias: bool = True,
    ) -> None:
        self.photometric = photometric
        self.expand = expand
        self.crop = crop
        self.size = (int(size[0]), int(size[1]))
        self.antialias = antialias

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        params = self.photometric.sample(generator) if self.photometric is not None else None
        h, w = image.shape[-2:]
        ch, cw, left, top = self.expand.place(h, w, generator) if self.expand is not None else (h, w, 0, 0)
        boxes = boxes + torch.tensor([left, top, left, top], dtype=boxes.dtype)
        window, _ = self.crop.sample_window(cw, ch, boxes, generator)
        if window is None:
            window = (0, 0, cw, ch)
        else:
            boxes, labels = self.crop.crop_boxes(boxes, labels, window)
        x1, y1, x2, y2 = window
        oh, ow = self.size
        sx, sy = ow / (x2 - x1), oh / (y2 - y1)
        out, region = self._compose(image, (left, top), window, sx, sy)
        if params is not None:
            out = _distort_region(out, params, region)
        if boxes.shape[0]:
            boxes = boxes - torch.tensor([x1, y1, x1, y1], dtype=boxes.dtype)
        return out, boxes * torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype), labels

    def _compose(
        self, image: Tensor, origin: tuple[int, int], window: tuple[int, int, int, int], sx: float, sy: float
    ) -> tuple[Tensor, tuple[int, int, int, int]]:
        """The output canvas and the photo's pixel region on it (xyxy, possibly empty)."""
        h, w = image.shape[-2:]
        left, top = origin
        x1, y1, x2, y2 = window
        ix1, iy1, ix2, iy2 = max(left, x1), max(top, y1), min(left + w, x2), min(top + h, y2)  # photo ∩ patch
        oh, ow = self.size
        if (ix1, iy1, ix2, iy2) == (x1, y1, x2, y2):  # the patch lies inside the photo: no fill
            part = image[:, iy1 - top : iy2 - top, ix1 - left : ix2 - left]
            return resize_region(part, (oh, ow), self.antialias), (0, 0, ow, oh)
        mean = self.expand.mean if self.expand is not None else (0.0, 0.0, 0.0)
        out = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1).expand(3, oh, ow).clone()  # (3, H, W) fill
        if ix2 <= ix1 or iy2 <= iy1:  # the patch holds only fill
            return out, (0, 0, 0, 0)
        part = image[:, iy1 - top : iy2 - top, ix1 - left : ix2 - left]
        # Resized at the patch's exact scale (so the photo is not stretched), placed at its rounded position.
        resized = _rescale(part, sy, sx, self.antialias)
        rx1, ry1 = round((ix1 - x1) * sx), round((iy1 - y1) * sy)
        rx2, ry2 = min(ow, rx1 + resized.shape[-1]), min(oh, ry1 + resized.shape[-2])
        if rx2 <= rx1 or ry2 <= ry1:
            return out, (0, 0, 0, 0)
        out[:, ry1:ry2, rx1:rx2] = resized[:, : ry2 - ry1, : rx2 - rx1]
        return out, (rx1, ry1, rx2, ry2)


def _rescale(image: Tensor, sy: float, sx: float, antialias: bool) -> Tensor:
    """``Tensor[3, h, w]`` resized by the scale factors (``floor(h sy) x floor(w sx)`` pixels) as float32."""
    x = image.unsqueeze(0)  # (3, h, w) -> (1, 3, h, w)
    if not x.is_floating_point():
        x = x.contiguous(memory_format=torch.channels_last)  # torch's vectorised uint8 path
    size_ok = int(image.shape[-2] * sy) >= 1 and int(image.shape[-1] * sx) >= 1
    if not size_ok:
        return torch.zeros(3, 0, 0)
    out = F.interpolate(
        x,
        scale_factor=(sy, sx),
        mode="bilinear",
        align_corners=False,
        antialias=antialias,
        recompute_scale_factor=False,
    )[0]
    return out.float()


def _distort_region(image: Tensor, params: PhotometricParams, region: tuple[int, int, int, int]) -> Tensor:
    """``PhotometricDistort.apply`` on the pixels of ``region`` (xyxy) of a float image this step owns."""
    x1, y1, x2, y2 = region
    if (x1, y1, x2, y2) == (0, 0, image.shape[-1], image.shape[-2]):
        return PhotometricDistort.apply(image, params)
    if x2 > x1 and y2 > y1:
        image[:, y1:y2, x1:x2] = PhotometricDistort.apply(image[:, y1:y2, x1:x2], params)
    return image
