"""SSDLite320 on MobileNetV3-Large (Howard et al. 2019, "Searching for MobileNetV3", arXiv:1905.02244, §6.3).

The backbone is MobileNetV3-Large (Table 1) with torchvision's module layout, so that torchvision's ImageNet
weights load by name (:func:`multibox.weights.imagenet.load_torchvision_mobilenet_v3_large`):

==================================  ===========================================================================
key                                 what
==================================  ===========================================================================
``features.0.{0,1}``                stem: 3x3/s2 conv (16) + BatchNorm (+ hard-swish)
``features.N.block.M.{0,1}``        bneck ``N = 1..15`` (Table 1 rows): ``M`` runs over the 1x1 expansion (absent
                                    when it would not widen, i.e. in ``N = 1``), the depthwise kxk conv, the
                                    squeeze-and-excite ``block.M.fc1``/``fc2`` (where Table 1 has SE) and the
                                    linear 1x1 projection; ``.0`` is the conv, ``.1`` its BatchNorm
``features.16.{0,1}``               the last 1x1 conv (C5, 960 channels; 480 with ``reduce_tail``) + BatchNorm
``extras.K.{0,1,2}.{0,1}``          the four SSDLite extra blocks (not in torchvision's classifier)
==================================  ===========================================================================

§6.3 attaches SSDLite's first layer to the last stride-16 layer of the network, C4, which for MobileNetV3-Large is
the expansion layer of the 13th bottleneck, and its second layer to the last stride-32 layer, C5, the layer just
before the pooling. So the first source map is the output of ``features[13].block[0]`` (1x1 expansion + BatchNorm
+ hard-swish, 672 channels, stride 16: 20x20 at 320) and the second that of ``features[16]`` (stride 32, 10x10),
as torchvision's ``SSDLiteFeatureExtractorMobileNet`` splits the network. Four extra blocks follow
(1x1 conv to half the width, 3x3/s2 depthwise conv, 1x1 conv, each with BatchNorm and ReLU6; widths 512, 256, 256,
128): maps 5, 3, 2, 1 at 320. The heads are SSDLite's (MobileNetV2 paper, Sandler et al. 2018, §6.2): per map a
3x3 depthwise conv + BatchNorm + ReLU6, then a 1x1 conv, 6 priors per cell: 3234 priors at 320x320.

All BatchNorm layers use ``eps=0.001, momentum=0.03`` and the weights start from ``N(0, 0.03)`` as torchvision's
``ssdlite320_mobilenet_v3_large`` (torchvision ``models/detection/ssdlite.py``). ``reduce_tail`` halves the
channels between C4 and C5 (§6.3 and Table 6); torchvision's released COCO model has it, torchvision's ImageNet
classifier does not, so ImageNet weights load into ``reduce_tail=False`` models only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from multibox.models.heads import PredictionHead
from multibox.models.ssd import SSD
from multibox.models.zoo import register_model, resolve_prior_spec
from multibox.preprocess import IMAGENET_MEAN, IMAGENET_STD
from multibox.priors import PriorSpec, paper_scales

__all__ = [
    "BN_EPS",
    "BN_MOMENTUM",
    "MOBILENET_V3_LARGE",
    "SSDLITE320",
    "SSDLITE_EXTRAS",
    "InvertedResidual",
    "MobileNetV3Backbone",
    "SSDLiteHead",
    "SqueezeExcite",
    "conv_bn_act",
    "extra_block",
    "make_divisible",
    "ssdlite320_mobilenet_v3",
    "ssdlite_prior_spec",
]

#: BatchNorm settings of torchvision's SSDLite (TensorFlow's defaults expressed in PyTorch's momentum convention).
BN_EPS = 0.001
BN_MOMENTUM = 0.03

#: MobileNetV3-Large bnecks (Table 1): ``(kernel, expansion, out, squeeze-excite, hard-swish, stride)``. The stem is
#: a 3x3/s2 conv to 16 channels with hard-swish; after the last row comes a 1x1 conv to ``6 * out`` channels.
MOBILENET_V3_LARGE: tuple[tuple[int, int, int, bool, bool, int], ...] = (
    (3, 16, 16, False, False, 1),
    (3, 64, 24, False, False, 2),  # stride 4
    (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2),  # stride 8
    (5, 120, 40, True, False, 1),
    (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2),  # stride 16
    (3, 200, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 480, 112, True, True, 1),
    (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2),  # stride 32; its expansion (stride 16) is C4, the first source map
    (5, 960, 160, True, True, 1),
    (5, 960, 160, True, True, 1),
)

#: Output widths of the SSDLite extra blocks after C5 (torchvision ``SSDLiteFeatureExtractorMobileNet``).
SSDLITE_EXTRAS: tuple[int, ...] = (512, 256, 256, 128)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% below ``value`` (MobileNetV2 code)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    activation: type[nn.Module] | None = nn.ReLU6,
) -> nn.Sequential:
    """``[conv (no bias, "same" padding), BatchNorm, activation]`` as torchvision's ``Conv2dNormActivation``.

    The indices (``0`` conv, ``1`` BatchNorm, ``2`` activation) are torchvision's, so the state-dict keys line up.
    ``(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))``.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM),
    ]
    if activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excite with a hard sigmoid gate (§5.2, §5.3): ``x * hsigmoid(fc2(relu(fc1(mean_hw(x)))))``.

    Args:
        channels: channels of the input.
        squeeze: channels of the bottleneck (``make_divisible(channels / 4)`` in MobileNetV3).
    """

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, C, H, W] -> Tensor[B, C, H, W]``, each channel scaled by a gate in [0, 1]."""
        scale = F.adaptive_avg_pool2d(x, 1)  # (B, C, H, W) -> (B, C, 1, 1)
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(scale), inplace=True)), inplace=True)
        return x * scale


class InvertedResidual(nn.Module):
    """A MobileNetV3 bneck (§5, Fig. 4): [1x1 expansion], kxk depthwise, [squeeze-excite], linear 1x1 projection.

    The residual is added when the block keeps stride and width. ReLU or hard-swish after the expansion and the
    depthwise conv; none after the projection (MobileNetV2's linear bottleneck).

    Args:
        in_channels: input width.
        kernel_size: the depthwise kernel (3 or 5).
        expanded: width of the expansion.
        out_channels: output width.
        squeeze_excite: whether the block has squeeze-and-excite.
        hard_swish: hard-swish instead of ReLU.
        stride: 1 or 2 (on the depthwise conv).

    Attributes:
        block: ``nn.Sequential`` with torchvision's indices.
        use_residual: whether the input is added to the output.
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: int,
        expanded: int,
        out_channels: int,
        squeeze_excite: bool,
        hard_swish: bool,
        stride: int,
    ) -> None:
        super().__init__()
        act = nn.Hardswish if hard_swish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(conv_bn_act(in_channels, expanded, 1, activation=act))
        layers.append(conv_bn_act(expanded, expanded, kernel_size, stride=stride, groups=expanded, activation=act))
        if squeeze_excite:
            layers.append(SqueezeExcite(expanded, make_divisible(expanded // 4)))
        layers.append(conv_bn_act(expanded, out_channels, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.has_expansion = expanded != in_channels

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, C_in, H, W] -> Tensor[B, C_out, H / stride, W / stride]``."""
        y = self.block(x)
        return y + x if self.use_residual else y


def extra_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """An SSDLite extra block: 1x1 to ``out / 2``, 3x3/s2 depthwise, 1x1 to ``out``; BatchNorm + ReLU6 after each.

    ``(B, C_in, H, W) -> (B, C_out, ceil(H / 2), ceil(W / 2))``.
    """
    mid = out_channels // 2
    return nn.Sequential(
        conv_bn_act(in_channels, mid, 1),
        conv_bn_act(mid, mid, 3, stride=2, groups=mid),
        conv_bn_act(mid, out_channels, 1),
    )


def _normal_init(module: nn.Module, std: float = 0.03) -> None:
    """torchvision SSDLite's from-scratch init: conv weights ``N(0, std)``, conv biases 0, BatchNorm 1 and 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()


class MobileNetV3Backbone(nn.Module):
    """MobileNetV3-Large up to C5 plus the SSDLite extras; returns the six SSDLite source maps.

    Args:
        width_mult: MobileNet's width multiplier (channels rounded by :func:`make_divisible`; the extras by
            ``max(16, int(d * width_mult))`` as torchvision).
        reduce_tail: halve the widths between C4 and C5 (§6.3).
        extras: output widths of the extra blocks at ``width_mult = 1``.

    Attributes:
        features: ``nn.Sequential`` of 17 modules, torchvision's ``mobilenet_v3_large().features`` layout.
        extras: ``nn.ModuleList`` of the extra blocks.
        c4_index: index in ``features`` of the bneck whose expansion is C4 (13).
    """

    def __init__(
        self, width_mult: float = 1.0, reduce_tail: bool = False, extras: Sequence[int] = SSDLITE_EXTRAS
    ) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be positive, got {width_mult!r}")
        c4 = max(i for i, row in enumerate(MOBILENET_V3_LARGE) if row[5] == 2)  # the last stride-2 bneck

        def width(c: int, tail: bool) -> int:  # torchvision: halve (`160 // reduce_divider`), then scale and round
            return make_divisible(c // (2 if tail and reduce_tail else 1) * width_mult)

        stem = make_divisible(16 * width_mult)
        layers: list[nn.Module] = [conv_bn_act(3, stem, 3, stride=2, activation=nn.Hardswish)]
        in_channels = stem
        for i, (k, expanded, out, se, hs, stride) in enumerate(MOBILENET_V3_LARGE):
            exp_c, out_c = width(expanded, i > c4), width(out, i >= c4)
            layers.append(InvertedResidual(in_channels, k, exp_c, out_c, se, hs, stride))
            in_channels = out_c
        layers.append(conv_bn_act(in_channels, 6 * in_channels, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.reduce_tail = reduce_tail
        self.c4_index = c4 + 1  # after the stem
        block = self.features[self.c4_index]
        assert isinstance(block, InvertedResidual) and block.has_expansion and not block.use_residual
        widths = [max(16, int(d * width_mult)) for d in extras]
        ins = [6 * in_channels, *widths[:-1]]
        self.extras = nn.ModuleList(extra_block(a, b) for a, b in zip(ins, widths, strict=True))
        self.init_weights()

    def init_weights(self) -> None:
        """From scratch as torchvision's SSDLite without a pretrained backbone: ``N(0, 0.03)`` convs everywhere."""
        _normal_init(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``Tensor[B, 3, H, W]`` -> ``[C4 expansion (stride 16), C5 (stride 32), extra_1, ..., extra_4]``."""
        for layer in self.features[: self.c4_index]:
            x = layer(x)
        c4 = self.features[self.c4_index].block
        x = c4[0](x)  # the 1x1 expansion + BatchNorm + hard-swish: C4
        sources = [x]
        for layer in c4[1:]:  # depthwise (stride 2), squeeze-excite, projection; no residual in a stride-2 bneck
            x = layer(x)  # (the registered modules one by one: a slice is a new, unregistered Sequential)
        for layer in self.features[self.c4_index + 1 :]:
            x = layer(x)
        sources.append(x)
        for block in self.extras:
            x = block(x)
            sources.append(x)
        return sources


class SSDLiteHead(PredictionHead):
    """SSDLite predictors (MobileNetV2 paper §6.2): per map, a 3x3 depthwise conv + BatchNorm + ReLU6, then 1x1.

    Map ``k`` with ``K_k`` priors per cell gets ``loc[k]: C_k -> K_k * 4`` and ``conf[k]: C_k -> K_k * C``; the
    outputs are flattened as every :class:`~multibox.models.heads.PredictionHead`'s.

    Args:
        in_channels: channels of each source map (measured on the backbone).
        boxes_per_location: priors per cell of each map.
        num_classes: classes including the background.
    """

    def __init__(self, in_channels: Sequence[int], boxes_per_location: Sequence[int], num_classes: int) -> None:
        super().__init__(in_channels, boxes_per_location, num_classes, self._predictor)

    @staticmethod
    def _predictor(in_channels: int, out_channels: int) -> nn.Sequential:
        return nn.Sequential(
            conv_bn_act(in_channels, in_channels, 3, groups=in_channels), nn.Conv2d(in_channels, out_channels, 1)
        )

    def init_weights(self) -> None:
        """``N(0, 0.03)`` conv weights, zero biases (torchvision ``_normal_init``)."""
        _normal_init(self)


def ssdlite_prior_spec(
    size: int = 320, num_maps: int = 6, min_ratio: float = 0.2, max_ratio: float = 0.95
) -> PriorSpec:
    """torchvision's ``DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)`` as a PriorSpec.

    Scales ``s_k = min_ratio + (max_ratio - min_ratio) k / (m - 1)`` (the paper's eq. 4), ``s_m+1 = 1``; per cell
    ``[s_k, sqrt(s_k s_k+1), 2, 1/2, 3, 1/3]`` (6 priors), centres from the measured map sizes (``steps=None``).
    At 320: min sizes 64, 112, 160, 208, 256, 304 px, max sizes 112, ..., 304, 320.

    The boxes and their order equal torchvision's at a square input (both follow ssd.pytorch: map, row, column,
    then the prior of the cell; torchvision clips only w and h, ours clamps cx, cy, w, h, which is the same since
    the centres lie inside). At a non-square input torchvision scales by each side (its "squares" are stretched
    with the image), ours by the shorter side (squares stay square in pixels, see :mod:`multibox.priors`).
    """
    scales = [*paper_scales(num_maps, min_ratio, max_ratio), 1.0]
    return PriorSpec(
        size=size,
        min_sizes=tuple(s * size for s in scales[:-1]),
        max_sizes=tuple(s * size for s in scales[1:]),
        aspect_ratios=((2.0, 3.0),) * num_maps,
        steps=None,
    )


#: The SSDLite320 default boxes (:func:`ssdlite_prior_spec`).
SSDLITE320 = ssdlite_prior_spec()


@register_model
def ssdlite320_mobilenet_v3(
    num_classes: int,
    image_size: int | tuple[int, int] = 320,
    width_mult: float = 1.0,
    reduce_tail: bool = True,
    prior_spec: PriorSpec | str | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> SSD:
    """SSDLite320 with MobileNetV3-Large (§6.3), as torchvision's ``ssdlite320_mobilenet_v3_large``.

    Six source maps (20, 10, 5, 3, 2, 1 at 320), 6 priors per cell, 3234 priors. Any input of at least 1x1 works
    (every stride-2 layer pads, so the maps never vanish).

    Args:
        num_classes: classes including the background (91 for torchvision's COCO ids, 81 for contiguous COCO).
        image_size: input size, int or ``(H, W)``.
        width_mult: MobileNetV3 width multiplier.
        reduce_tail: halve the widths between C4 and C5 (C5 480 instead of 960 channels), as torchvision's COCO
            model; use False to start from torchvision's ImageNet weights.
        prior_spec: default boxes; None for :data:`SSDLITE320`.
        mean: RGB mean in 0-255 units. ImageNet's, which the ImageNet backbone weights expect; torchvision's
            SSDLite maps [0, 1] to [-1, 1] instead (mean = std = 127.5 in these units).
        std: RGB std in 0-255 units.
    """
    spec = SSDLITE320 if prior_spec is None else resolve_prior_spec(prior_spec)
    backbone = MobileNetV3Backbone(width_mult=width_mult, reduce_tail=reduce_tail)
    return SSD(backbone, num_classes, image_size, spec, mean=mean, std=std, make_head=SSDLiteHead)
