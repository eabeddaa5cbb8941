"""SSD300 on ResNet-50, NVIDIA's variant (DeepLearningExamples ``PyTorch/Detection/SSD/ssd/model.py``).

The backbone is ResNet-50 (He et al. 2016, Table 1; torchvision's v1.5 layout with the stride on the 3x3 conv)
truncated after conv4_x (``layer3``), whose first block runs at stride 1 so that conv4_x stays at stride 8: a
38x38x1024 map at 300x300, the first source. Five extra blocks follow, each ``[1x1 conv, BN, ReLU, 3x3 conv, BN,
ReLU]`` without conv biases:

=====  ===============  =====================  ==============
block  1x1 channels     3x3 (stride, padding)  map at 300
=====  ===============  =====================  ==============
0      256              512 (2, 1)             19
1      256              512 (2, 1)             10
2      128              256 (2, 1)             5
3      128              256 (1, 0)             3
4      128              256 (1, 0)             1
=====  ===============  =====================  ==============

Sources ``(1024, 512, 512, 256, 256, 256)`` channels at 38, 19, 10, 5, 3, 1; ``[4, 6, 6, 6, 4, 4]`` priors per
cell from :data:`~multibox.priors.COCO300` (NVIDIA's ``dboxes300_coco``: scales 21, 45, 99, 153, 207, 261, 315 and
steps 8, 16, 32, 64, 100, 300, which are ssd.pytorch's COCO values); 8732 priors; 3x3 conv heads.

The module names are torchvision's (``conv1``, ``bn1``, ``layer1..3.N.{conv,bn}{1,2,3}``, ``downsample.{0,1}``), so
torchvision's ImageNet ResNet-50 loads by name (:func:`multibox.weights.imagenet.load_torchvision_resnet50`).
NVIDIA's own checkpoints differ
beyond the names: their priors run size-major within a map (all cells for one box shape, then the next) and their
head channels are coordinate-major (``view(B, 4, -1)``), where ours follow ssd.pytorch (cell-major, ``K*4 + c``), so
their heads would need a channel permutation; that conversion is not provided.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from multibox.models.ssd import SSD
from multibox.models.zoo import register_model, resolve_prior_spec
from multibox.preprocess import IMAGENET_MEAN, IMAGENET_STD
from multibox.priors import COCO300, PriorSpec

__all__ = ["RESNET50_EXTRAS300", "RESNET50_LAYERS", "Bottleneck", "ResNet50Backbone",
           "ssd300_resnet50"]  # fmt: skip

#: Blocks per stage of ResNet-50 (Table 1: conv2_x, conv3_x, conv4_x; conv5_x is dropped).
RESNET50_LAYERS: tuple[int, int, int] = (3, 4, 6)

#: NVIDIA's additional blocks: ``(1x1 channels, 3x3 output channels, 3x3 stride, 3x3 padding)``.
RESNET50_EXTRAS300: tuple[tuple[int, int, int, int], ...] = (
    (256, 512, 2, 1),
    (256, 512, 2, 1),
    (128, 256, 2, 1),
    (128, 256, 1, 0),
    (128, 256, 1, 0),
)


class Bottleneck(nn.Module):
    """ResNet bottleneck (He et al. 2016, Fig. 5 right): 1x1, 3x3 (carrying the stride, torchvision v1.5), 1x1 x4.

    Args:
        in_channels: input width.
        width: width of the 1x1 and 3x3 convs; the output has ``4 * width`` channels.
        stride: stride of the 3x3 conv (and of the projection shortcut).

    Attributes:
        downsample: ``[1x1 conv, BN]`` projection shortcut when the shape changes, else None.
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, C_in, H, W] -> Tensor[B, 4 * width, ceil(H / stride), ceil(W / stride)]``."""
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


def _stage(in_channels: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(in_channels, width, stride)]
    layers += [Bottleneck(width * Bottleneck.expansion, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _extra(in_channels: int, mid: int, out_channels: int, stride: int, padding: int) -> nn.Sequential:
    """``[1x1 conv, BN, ReLU, 3x3 conv, BN, ReLU]`` (NVIDIA ``_build_additional_features``; indices 0..5)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, 1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, out_channels, 3, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ResNet50Backbone(nn.Module):
    """ResNet-50 conv1..conv4_x (conv4_x at stride 1) and NVIDIA's extra blocks; returns the six source maps.

    Args:
        extras: ``(1x1 channels, 3x3 channels, stride, padding)`` per extra block.
        conv4_stride: stride of conv4_x's first block: 1 as NVIDIA (stride 8 overall), 2 as the classifier.

    Attributes:
        conv1, bn1, relu, maxpool, layer1, layer2, layer3: torchvision's ResNet-50 modules (same names).
        extras: ``nn.ModuleList`` of the extra blocks.
    """

    def __init__(self, extras: Sequence[tuple[int, int, int, int]] = RESNET50_EXTRAS300, conv4_stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _stage(64, 64, RESNET50_LAYERS[0], stride=1)
        self.layer2 = _stage(256, 128, RESNET50_LAYERS[1], stride=2)
        self.layer3 = _stage(512, 256, RESNET50_LAYERS[2], stride=conv4_stride)
        blocks, in_channels = [], 256 * Bottleneck.expansion
        for mid, out_channels, stride, padding in extras:
            blocks.append(_extra(in_channels, mid, out_channels, stride, padding))
            in_channels = out_channels
        self.extras = nn.ModuleList(blocks)
        self.init_weights()

    def init_weights(self) -> None:
        """From scratch: Kaiming-normal ResNet convs (torchvision), Xavier-uniform extras (NVIDIA), BN 1 and 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
        for m in self.extras.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``Tensor[B, 3, H, W]`` -> ``[conv4_x (stride 8), extra_1, ..., extra_5]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 3, H, W) -> (B, 64, H/4, W/4)
        x = self.layer3(self.layer2(self.layer1(x)))  # -> (B, 1024, H/8, W/8)
        sources = [x]
        for block in self.extras:
            x = block(x)
            sources.append(x)
        return sources


@register_model
def ssd300_resnet50(
    num_classes: int,
    image_size: int | tuple[int, int] = 300,
    prior_spec: PriorSpec | str = COCO300,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> SSD:
    """NVIDIA's SSD300 with ResNet-50: six source maps (38, 19, 10, 5, 3, 1 at 300), 8732 priors.

    Args:
        num_classes: classes including the background (81 for COCO as NVIDIA, 21 for VOC).
        image_size: input size, int or ``(H, W)``; at least 257 on each side (the 3x3 unpadded convs of the last
            two extra blocks need a 5x5 map after three halvings of the stride-8 map).
        prior_spec: default boxes: :data:`~multibox.priors.COCO300` (NVIDIA's), ``"voc300"``, a
            :class:`~multibox.priors.PriorSpec`, a preset name or a dict of its fields.
        mean: RGB mean in 0-255 units (ImageNet's, as NVIDIA's input pipeline).
        std: RGB std in 0-255 units.
    """
    spec = resolve_prior_spec(prior_spec)
    return SSD(ResNet50Backbone(), num_classes, image_size, spec, mean=mean, std=std)
