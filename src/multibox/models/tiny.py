"""``ssd_tiny``: a small multi-scale SSD that trains on a laptop CPU in minutes (d2l.ai "Single Shot Multibox
Detection", after Liu et al. 2016).

The network is a chain of down-sampling blocks, each ``2 x [conv3x3, BatchNorm, ReLU]`` then a 2x2 max pool
(halving the map). Three narrow blocks form the base (widths ``w, 2w, 4w``); three wider blocks (``8w``) follow,
then a global max pool to 1x1. The default ``w = 8`` (8, 16, 32, then 64) is half d2l's widths: the full-resolution
blocks dominate the cost, and at ``w = 8`` a training step (forward + backward) on a batch of 32 images of
128x128 takes about 0.23 s on 2 CPU cores (``w = 16``: about 0.6 s; 256x256 inputs cost about 6x).

The default boxes follow the paper's eq. 4 (§2.2): ``s_k`` from 0.2 to 0.9 of the shorter side over the five maps,
the extra square prior ``sqrt(s_k s_k+1)`` with ``s_6 = 1.075`` for the last map, aspect ratios 2 and 1/2
everywhere (4 priors per cell), cell pitch from the measured map sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

from multibox.models.ssd import SSD
from multibox.models.zoo import register_model, resolve_prior_spec
from multibox.preprocess import IMAGENET_MEAN, IMAGENET_STD
from multibox.priors import PriorSpec, paper_scales

__all__ = ["TinyBackbone", "down_block", "ssd_tiny", "tiny_prior_spec"]


def tiny_prior_spec(num_maps: int = 5, size: int = 256, s_min: float = 0.2, s_max: float = 0.9) -> PriorSpec:
    """Default boxes after the paper's eq. 4 (§2.2), as pixels at a ``size`` x ``size`` reference input.

    ``s_k = s_min + (s_max - s_min)(k - 1)/(m - 1)``; the max size of map ``k`` is ``s_k+1`` (one step past
    ``s_max`` for the last map); aspect ratios ``{1, 2, 1/2}`` plus ``sqrt(s_k s_k+1)``: 4 priors per cell.
    The spec scales with the shorter input side, so one spec serves every input size.
    """
    scales = paper_scales(num_maps, s_min, s_max)
    step = scales[1] - scales[0] if num_maps > 1 else 0.0
    next_scales = [*scales[1:], scales[-1] + step]
    return PriorSpec(
        size=size,
        min_sizes=tuple(s * size for s in scales),
        max_sizes=tuple(s * size for s in next_scales),
        aspect_ratios=((2.0,),) * num_maps,
        steps=None,
    )


def down_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """``2 x [conv3x3, BatchNorm, ReLU]`` then a 2x2/s2 max pool: ``(B, C_in, H, W) -> (B, C_out, H/2, W/2)``."""
    layers: list[nn.Module] = []
    for c in (in_channels, out_channels):
        layers += [nn.Conv2d(c, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(True)]
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class TinyBackbone(nn.Module):
    """Base blocks, wide blocks and a global max pool; returns ``1 + len(wide) + 1`` source maps.

    Args:
        base_widths: channels of the base blocks (the first source map is the last one's output); d2l's by default.
        wide_widths: channels of the following blocks, each one a source map.

    Attributes:
        base: ``nn.Sequential`` of the base blocks.
        blocks: ``nn.ModuleList`` of the wide blocks.
        pool: global max pool to 1x1.
    """

    def __init__(self, base_widths: Sequence[int] = (16, 32, 64), wide_widths: Sequence[int] = (128, 128, 128)):
        super().__init__()
        widths = [3, *base_widths]
        self.base = nn.Sequential(*(down_block(a, b) for a, b in pairwise(widths)))
        widths = [widths[-1], *wide_widths]
        self.blocks = nn.ModuleList(down_block(a, b) for a, b in pairwise(widths))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.init_weights()

    def init_weights(self) -> None:
        """Kaiming-normal convs (fan out, ReLU), BatchNorm weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``Tensor[B, 3, H, W]`` -> maps at strides ``2^len(base)``, then x2 per wide block, then 1x1."""
        x = self.base(x)
        sources = [x]
        for block in self.blocks:
            x = block(x)
            sources.append(x)
        sources.append(self.pool(x))  # (B, C, h, w) -> (B, C, 1, 1)
        return sources


@register_model
def ssd_tiny(
    num_classes: int,
    image_size: int | tuple[int, int] = 256,
    width: int = 8,
    prior_spec: PriorSpec | str | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> SSD:
    """A small SSD for quick experiments on CPU (5 source maps, 4 priors per cell).

    Args:
        num_classes: classes including the background.
        image_size: input size, int or ``(H, W)``; at least 64 on each side (six 2x poolings).
        width: channels of the first block; the base has ``w, 2w, 4w``, the wide blocks ``8w`` each (16 gives
            d2l's widths 16, 32, 64, 128 at about three times the cost).
        prior_spec: default boxes; None for :func:`tiny_prior_spec` (eq. 4 scales 0.2..0.9).
        mean: RGB mean in 0-255 units.
        std: RGB std in 0-255 units.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")
    backbone = TinyBackbone((width, 2 * width, 4 * width), (8 * width,) * 3)
    spec = tiny_prior_spec() if prior_spec is None else resolve_prior_spec(prior_spec)
    return SSD(backbone, num_classes, image_size, spec, mean=mean, std=std)
