"""Default boxes ("priors") of SSD (Liu et al. 2016, §2.2 "Choosing scales and aspect ratios for default boxes").

Priors are generated from the input size and the feature-map sizes *measured* on the network, never from a
hand-kept list. The order is ssd.pytorch's (and Caffe SSD's): feature map, then row ``i``, then column ``j``,
then per location ``[s_k, sqrt(s_k s_k+1), (a_1), (1/a_1), (a_2), (1/a_2), ...]``, so that heads trained by
ssd.pytorch line up box for box.

Sizes and steps are in input pixels. For a non-square input ``(H, W)`` a prior of size ``s`` and ratio ``a`` is
``s sqrt(a)`` pixels wide and ``s / sqrt(a)`` pixels high, i.e. ``w = s sqrt(a) / W`` and ``h = s / sqrt(a) / H``
in relative units: square priors stay square in pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from multibox.preprocess import to_hw

__all__ = [
    "COCO300",
    "COCO512",
    "PRIOR_PRESETS",
    "VOC300",
    "VOC512",
    "PriorSpec",
    "boxes_per_location",
    "caffe_sizes",
    "default_boxes",
    "paper_scales",
]


def boxes_per_location(aspect_ratios: Sequence[Sequence[float]], with_max_size: bool = True) -> list[int]:
    """Priors per feature-map cell: ``1 (+1 for sqrt(s_k s_k+1)) + 2 per extra aspect ratio`` for each map."""
    return [1 + int(with_max_size) + 2 * len(ratios) for ratios in aspect_ratios]


def paper_scales(num_maps: int, s_min: float = 0.2, s_max: float = 0.9) -> list[float]:
    """The paper's eq. 4: ``s_k = s_min + (s_max - s_min) (k - 1) / (m - 1)``, ``k = 1..m``, as input fractions."""
    if num_maps < 1:
        raise ValueError(f"num_maps must be >= 1, got {num_maps}")
    if num_maps == 1:
        return [s_min]
    return [s_min + (s_max - s_min) * k / (num_maps - 1) for k in range(num_maps)]


def caffe_sizes(
    size: int, num_maps: int, min_ratio: int, max_ratio: int, first_ratio: float
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Min and max sizes in pixels as Caffe SSD's ``ssd_pascal.py`` derives them (and ssd.pytorch copies).

    The first map gets ``first_ratio`` percent of the input (``s_1`` of the paper is lowered to 0.1 for conv4_3,
    §3.1 "PASCAL VOC2007"); the other ``m - 1`` maps step linearly from ``min_ratio`` to ``max_ratio`` percent in
    integer steps of ``floor((max_ratio - min_ratio) / (m - 2))``; each map's max size is the next map's min size.

    Returns:
        ``(min_sizes, max_sizes)``, each with ``num_maps`` entries.
    """
    if num_maps < 3:
        raise ValueError(f"caffe_sizes needs at least 3 maps, got {num_maps}")
    step = (max_ratio - min_ratio) // (num_maps - 2)
    ratios = list(range(min_ratio, max_ratio + 1, step))[: num_maps - 1]
    min_sizes = [size * first_ratio / 100] + [size * r / 100 for r in ratios]
    max_sizes = [size * min_ratio / 100] + [size * (r + step) / 100 for r in ratios]
    return tuple(min_sizes), tuple(max_sizes)


def _steps_pair(v: float | Sequence[float]) -> tuple[float, float]:
    """A step as ``(step_y, step_x)``; one number means both."""
    if isinstance(v, int | float):
        return float(v), float(v)
    a, b = v
    return float(a), float(b)


def _check_lengths(
    m: int,
    min_sizes: Sequence[float],
    max_sizes: Sequence[float] | None,
    aspect_ratios: Sequence[Sequence[float]],
    steps: Sequence[float | tuple[float, float]] | None,
) -> None:
    """Raise ValueError unless every per-map list has one entry per feature map (``m`` of them)."""
    if not (len(min_sizes) == len(aspect_ratios) == m) or (max_sizes is not None and len(max_sizes) != m):
        raise ValueError(
            f"got {m} feature maps but {len(min_sizes)} min sizes, "
            f"{'no' if max_sizes is None else len(max_sizes)} max sizes and {len(aspect_ratios)} aspect-ratio lists"
        )
    if steps is not None and len(steps) != m:
        raise ValueError(f"got {m} feature maps but {len(steps)} steps")


def _cell_sizes(s: float, max_size: float | None, ratios: Sequence[float]) -> list[tuple[float, float]]:
    """Sizes ``(w, h)`` in pixels of the priors of one cell, in ssd.pytorch's order."""
    sizes = [(s, s)]
    if max_size is not None:
        s_prime = math.sqrt(s * float(max_size))
        sizes.append((s_prime, s_prime))
    for a in ratios:
        r = math.sqrt(float(a))
        sizes += [(s * r, s / r), (s / r, s * r)]
    return sizes


def default_boxes(
    image_size: int | tuple[int, int],
    feature_maps: Sequence[tuple[int, int]],
    min_sizes: Sequence[float],
    max_sizes: Sequence[float] | None,
    aspect_ratios: Sequence[Sequence[float]],
    steps: Sequence[float | tuple[float, float]] | None = None,
    offset: float = 0.5,
    clip: bool | str = True,
) -> Tensor:
    """Generate the default boxes of all feature maps.

    Args:
        image_size: input ``(H, W)`` in pixels (an int means square).
        feature_maps: ``(h, w)`` of each source feature map, as measured on the network.
        min_sizes: ``s_k`` of each map in pixels.
        max_sizes: ``s_k+1`` of each map in pixels (the extra ratio-1 prior ``sqrt(s_k s_k+1)``), or None for none.
        aspect_ratios: the ratios ``a > 1`` of each map; each adds ``a`` and ``1/a``.
        steps: the pixel distance between cell centres of each map, a number or ``(step_y, step_x)``; None derives
            it as ``(H / h, W / w)``. ssd.pytorch's SSD300 uses ``8, 16, 32, 64, 100, 300``.
        offset: the centre of cell ``(i, j)`` is at ``((j + offset) step_x, (i + offset) step_y)``.
        clip: clamp the cxcywh values into ``[0, 1]`` as ssd.pytorch does (Caffe SSD leaves them unclipped);
            ``"size"`` clamps only the widths and heights, as torchvision's ``DefaultBoxGenerator(clip=True)``
            (so a centre past the border, e.g. ``9.5 * 32 / 300`` on SSD300's 10x10 map, stays as it is).

    Returns:
        ``Tensor[A, 4]`` float32 priors ``(cx, cy, w, h)`` relative to the input size.
    """
    height, width = to_hw(image_size)
    _check_lengths(len(feature_maps), min_sizes, max_sizes, aspect_ratios, steps)
    out = []
    for k, (fh, fw) in enumerate(feature_maps):
        if fh < 1 or fw < 1:
            raise ValueError(f"feature map {k} has size {fh}x{fw}; every map must be at least 1x1")
        step_y, step_x = (height / fh, width / fw) if steps is None else _steps_pair(steps[k])
        sizes = _cell_sizes(float(min_sizes[k]), None if max_sizes is None else max_sizes[k], aspect_ratios[k])
        wh = torch.tensor(sizes, dtype=torch.float64) / torch.tensor([width, height], dtype=torch.float64)  # (K, 2)
        cy = (torch.arange(fh, dtype=torch.float64) + offset) * step_y / height
        cx = (torch.arange(fw, dtype=torch.float64) + offset) * step_x / width
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")  # (fh, fw) each, row i then column j
        centers = torch.stack((grid_x, grid_y), dim=-1).reshape(-1, 1, 2)  # (fh*fw, 1, 2)
        boxes = torch.cat(  # (fh*fw, K, 4) -> (fh*fw*K, 4)
            (centers.expand(-1, wh.shape[0], 2), wh.unsqueeze(0).expand(centers.shape[0], -1, 2)), dim=-1
        ).reshape(-1, 4)
        out.append(boxes)
    priors = torch.cat(out) if out else torch.zeros(0, 4, dtype=torch.float64)
    if clip == "size":
        priors = torch.cat((priors[:, :2], priors[:, 2:].clamp(0.0, 1.0)), dim=1)
    elif clip:
        priors = priors.clamp(0.0, 1.0)
    return priors.to(torch.float32)


@dataclass(frozen=True)
class PriorSpec:
    """A default-box recipe, stated at a square reference input of ``size`` pixels.

    Attributes:
        size: the reference input size the pixel values below refer to.
        min_sizes: ``s_k`` per source map, pixels at ``size``.
        max_sizes: ``s_k+1`` per source map, pixels at ``size`` (None: no ``sqrt(s_k s_k+1)`` prior).
        aspect_ratios: extra ratios per source map (each adds ``a`` and ``1/a``).
        steps: cell pitch per map in pixels at ``size``, or None to derive it from the measured map sizes.
        clip: clamp priors to ``[0, 1]``; ``"size"``: only their widths and heights (torchvision).
        offset: cell-centre offset.
    """

    size: int
    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...] | None
    aspect_ratios: tuple[tuple[float, ...], ...]
    steps: tuple[float, ...] | None = None
    clip: bool | str = True
    offset: float = 0.5

    def __post_init__(self) -> None:
        m = len(self.min_sizes)
        if len(self.aspect_ratios) != m or (self.max_sizes is not None and len(self.max_sizes) != m):
            raise ValueError(f"PriorSpec: min_sizes, max_sizes and aspect_ratios must have one entry per map ({m})")
        if self.steps is not None and len(self.steps) != m:
            raise ValueError(f"PriorSpec: {len(self.steps)} steps for {m} maps")
        if self.clip not in (True, False, "size"):
            raise ValueError(f"PriorSpec: clip must be True, False or 'size', got {self.clip!r}")
        if any(a <= 0 for ratios in self.aspect_ratios for a in ratios):
            raise ValueError(f"PriorSpec: aspect ratios must be positive, got {self.aspect_ratios}")

    @property
    def num_maps(self) -> int:
        return len(self.min_sizes)

    @property
    def boxes_per_location(self) -> list[int]:
        return boxes_per_location(self.aspect_ratios, self.max_sizes is not None)

    def with_(self, **changes: object) -> PriorSpec:
        """A copy with some fields replaced (lists are turned into tuples)."""
        fixed = {k: _as_tuple(v) for k, v in changes.items()}
        return replace(self, **fixed)

    def generate(self, image_size: int | tuple[int, int], feature_maps: Sequence[tuple[int, int]]) -> Tensor:
        """Priors ``Tensor[A, 4]`` cxcywh for an input of ``image_size`` with the measured ``feature_maps``.

        At the reference size the spec is used as written (ssd.pytorch's priors exactly). At another size, the
        pixel sizes are scaled by ``min(H, W) / size`` (the paper's scales are fractions of the input) and the
        steps are derived from the feature maps.
        """
        if len(feature_maps) != self.num_maps:
            raise ValueError(f"the network has {len(feature_maps)} source maps but the prior spec has {self.num_maps}")
        height, width = to_hw(image_size)
        native = height == width == self.size
        scale = 1.0 if native else min(height, width) / self.size
        return default_boxes(
            (height, width),
            feature_maps,
            [s * scale for s in self.min_sizes],
            None if self.max_sizes is None else [s * scale for s in self.max_sizes],
            self.aspect_ratios,
            steps=self.steps if native else None,
            offset=self.offset,
            clip=self.clip,
        )


def _as_tuple(v: object) -> object:
    if isinstance(v, list | tuple):
        return tuple(_as_tuple(x) for x in v)
    return v


_R300 = ((2.0,), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,))
_R512 = ((2.0,), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,))

#: ssd.pytorch ``voc`` config / Caffe ``ssd_pascal.py``: min 30,60,111,162,213,264; max 60,...,315.
VOC300 = PriorSpec(300, *caffe_sizes(300, 6, 20, 90, 10), _R300, steps=(8, 16, 32, 64, 100, 300))
#: ssd.pytorch ``coco`` config / Caffe ``ssd_coco.py``: min 21,45,99,153,207,261; max 45,...,315.
COCO300 = PriorSpec(300, *caffe_sizes(300, 6, 15, 90, 7), _R300, steps=(8, 16, 32, 64, 100, 300))
#: Caffe ``ssd_pascal_512.py``: min 35.84, 76.8, 153.6, ..., 460.8; max 76.8, ..., 537.6.
VOC512 = PriorSpec(512, *caffe_sizes(512, 7, 15, 90, 7), _R512, steps=(8, 16, 32, 64, 128, 256, 512))
#: Caffe ``ssd_coco_512.py``: min 20.48, 51.2, 133.12, ..., 460.8; max 51.2, ..., 542.72.
COCO512 = PriorSpec(512, *caffe_sizes(512, 7, 10, 90, 4), _R512, steps=(8, 16, 32, 64, 128, 256, 512))

PRIOR_PRESETS: dict[str, PriorSpec] = {"voc300": VOC300, "coco300": COCO300, "voc512": VOC512, "coco512": COCO512}
