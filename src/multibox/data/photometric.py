"""Photometric distortion of SSD training (paper §2.2 "Data augmentation", following Howard 2013), vectorised in torch.

The recipe is ssd.pytorch's ``PhotometricDistort``: random brightness, then either contrast before the HSV part
(saturation, hue) or after it, then a random channel order; every step applies with probability 0.5. Unlike
ssd.pytorch (which lets values run outside the 8-bit range), values are clamped to ``[0, 255]`` after each step, as
a saved-and-reloaded image would be.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["PhotometricDistort", "PhotometricParams", "adjust_saturation_hue", "hsv_to_rgb", "rgb_to_hsv"]

# The 6 channel orders ssd.pytorch's RandomLightingNoise picks from (the identity included).
_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def rgb_to_hsv(image: Tensor) -> Tensor:
    """RGB ``Tensor[3, H, W]`` in [0, 1] to HSV ``Tensor[3, H, W]``: hue in [0, 1) (one turn), S and V in [0, 1]."""
    r, g, b = image.unbind(0)
    maxc = image.amax(0)
    minc = image.amin(0)
    delta = maxc - minc
    gray = delta == 0
    s = delta / torch.where(gray, torch.ones_like(maxc), maxc)
    d = torch.where(gray, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    h = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(gray, torch.zeros_like(h), h)
    h = torch.remainder(h / 6.0, 1.0)
    return torch.stack((h, s, maxc))


def hsv_to_rgb(image: Tensor) -> Tensor:
    """HSV ``Tensor[3, H, W]`` (hue in turns, S and V in [0, 1]) to RGB ``Tensor[3, H, W]`` in [0, 1].

    Uses the closed form ``c_n = V - V S clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6 H) mod 6`` for ``n = 5, 3, 1``.
    """
    h, s, v = image.unbind(0)
    n = torch.tensor([5.0, 3.0, 1.0], dtype=image.dtype, device=image.device).view(3, 1, 1)
    k = torch.remainder(n + h.unsqueeze(0) * 6.0, 6.0)  # (3, H, W)
    return v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def adjust_saturation_hue(image: Tensor, saturation: float | None, hue: float | None) -> Tensor:
    """Scale the HSV saturation by ``saturation`` (clamped at 1) and turn the hue by ``hue`` degrees, in one pass.

    Equal to ``hsv_to_rgb`` of the modified ``rgb_to_hsv(image)`` without building the HSV image: with ``V = max``,
    chroma ``C = max - min`` (``= V S``) and hue ``h`` in sextants, a channel is ``V - C clamp(min(k, 4 - k), 0, 1)``
    with ``k = (n + h) mod 6``; scaling S scales C (up to ``V``); a saturation-only change is the cheaper
    ``V - (V - x) min(a, V / C)``, which keeps the hue.

    Args:
        image: RGB ``Tensor[3, H, W]`` float, any non-negative scale (0-1 or 0-255).
        saturation: the saturation multiplier, or None.
        hue: the hue shift in degrees, or None.

    Returns:
        ``Tensor[3, H, W]`` in the same scale.
    """
    if saturation is None and hue is None:
        return image
    v = image.amax(0)  # (H, W)
    chroma = v - image.amin(0)
    tiny = torch.finfo(image.dtype).tiny
    if hue is None:
        factor = (v / chroma.clamp(min=tiny)).clamp_(max=float(saturation))
        return (image - v).mul_(factor).add_(v)  # V - (V - x) min(a, V / C)
    # Hue in sextants [0, 6) + the shift: (g - b) / C if red is the max, 2 + (b - r) / C if green, 4 + (r - g) / C.
    r, g, b = image.unbind(0)
    inv = 1.0 / chroma.clamp(min=tiny)
    h6 = torch.where(r == v, (g - b) * inv, torch.where(g == v, 2.0 + (b - r) * inv, 4.0 + (r - g) * inv))
    h6 = h6 + hue / 60.0
    if saturation is not None:
        chroma = torch.minimum(chroma * saturation, v)
    n = torch.tensor([5.0, 3.0, 1.0], dtype=image.dtype, device=image.device).view(3, 1, 1)
    k = n + h6.unsqueeze(0)  # (3, H, W)
    k.sub_(torch.floor(k / 6.0).mul_(6.0))  # mod 6, cheaper than torch.remainder
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return ramp.mul_(-chroma).add_(v)  # V - C clamp(min(k, 4 - k), 0, 1)


def _coin(generator: torch.Generator | None, p: float = 0.5) -> bool:
    return bool(torch.rand((), generator=generator) < p)


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


class PhotometricParams(NamedTuple):
    """One draw of :class:`PhotometricDistort` (None: the step is skipped)."""

    brightness: float | None
    contrast_first: bool
    contrast: float | None
    saturation: float | None
    hue: float | None
    perm: tuple[int, int, int] | None


class PhotometricDistort:
    """Random brightness, contrast, saturation, hue and channel order on a float ``Tensor[3, H, W]`` in 0-255 units.

    Args:
        brightness: the additive shift is uniform in ``[-brightness, brightness]`` (ssd.pytorch: 32).
        contrast: the multiplier is uniform in ``contrast`` (ssd.pytorch: ``(0.5, 1.5)``).
        saturation: the saturation multiplier range (``(0.5, 1.5)``).
        hue: the hue shift is uniform in ``[-hue, hue]`` degrees (18).
        p: the probability of each step, including the channel shuffle (0.5).

    Boxes and labels pass through unchanged; a ``uint8`` image is converted to float32 first.
    """

    def __init__(
        self,
        brightness: float = 32.0,
        contrast: tuple[float, float] = (0.5, 1.5),
        saturation: tuple[float, float] = (0.5, 1.5),
        hue: float = 18.0,
        p: float = 0.5,
    ) -> None:
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.p = p

    def sample(self, generator: torch.Generator | None = None) -> PhotometricParams:
        """Draw the random choices of one distortion (in the order :meth:`__call__` draws them)."""
        g = generator
        brightness = _uniform(g, -self.brightness, self.brightness) if _coin(g, self.p) else None
        contrast_first = _coin(g, 0.5)  # contrast, then saturation/hue; or saturation/hue, then contrast

        def contrast() -> float | None:
            return _uniform(g, *self.contrast) if _coin(g, self.p) else None

        def hsv() -> tuple[float | None, float | None]:
            sat = _uniform(g, *self.saturation) if _coin(g, self.p) else None
            return sat, (_uniform(g, -self.hue, self.hue) if _coin(g, self.p) else None)

        if contrast_first:
            factor = contrast()
            sat, hue = hsv()
        else:
            sat, hue = hsv()
            factor = contrast()
        perm = _PERMUTATIONS[int(torch.randint(len(_PERMUTATIONS), (), generator=g))] if _coin(g, self.p) else None
        return PhotometricParams(brightness, contrast_first, factor, sat, hue, perm)

    @staticmethod
    def apply(image: Tensor, params: PhotometricParams) -> Tensor:
        """The distortion ``params`` describe, on a copy of ``image`` (float32 0-255, every step per pixel)."""
        image = image.float() if not image.is_floating_point() else image.clone()
        if params.brightness is not None:
            image = image.add_(params.brightness).clamp_(0.0, 255.0)

        def contrast(x: Tensor) -> Tensor:
            return x if params.contrast is None else (x * params.contrast).clamp_(0.0, 255.0)

        def hsv(x: Tensor) -> Tensor:
            return adjust_saturation_hue(x, params.saturation, params.hue).clamp_(0.0, 255.0)

        image = hsv(contrast(image)) if params.contrast_first else contrast(hsv(image))
        if params.perm is not None:
            image = image[list(params.perm)]
        return image

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        return self.apply(image, self.sample(generator)), boxes, labels

    def __repr__(self) -> str:
        return (
            f"PhotometricDistort(brightness={self.brightness}, contrast={self.contrast}, "
            f"saturation={self.saturation}, hue={self.hue}, p={self.p})"
        )
