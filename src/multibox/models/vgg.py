"""SSD300 and SSD512 on VGG16 (Liu et al. 2016, §3 "Base network" and Fig. 2), layer for layer as ssd.pytorch.

The backbone :class:`VGG16Base` holds three parts whose module indices are exactly ssd.pytorch's, so that
its weights (and the ``vgg16_reducedfc.pth`` base) load by renaming the prefix only:

==============================  =====================================  ==========================================
ssd.pytorch key                 multibox key                           what
==============================  =====================================  ==========================================
``vgg.N.{weight,bias}``         ``backbone.features.N.{weight,bias}``  VGG16 conv1_1 .. conv5_3, fc6/fc7 as convs;
                                                                       convs at N = 0, 2, 5, 7, 10, 12, 14, 17, 19,
                                                                       21 (conv4_3), 24, 26, 28, 31 (conv6),
                                                                       33 (conv7); 35 modules in all
``L2Norm.weight``               ``backbone.l2norm.weight``             the learnt conv4_3 scale (512,)
``extras.N.{weight,bias}``      ``backbone.extras.N.{weight,bias}``    N = 0..7 (SSD300), 0..9 (SSD512)
``loc.N.{weight,bias}``         ``head.loc.N.{weight,bias}``           N = 0..5 (SSD300), 0..6 (SSD512)
``conf.N.{weight,bias}``        ``head.conf.N.{weight,bias}``          N = 0..5 (SSD300), 0..6 (SSD512)
``N.{weight,bias}`` (base pth)  ``backbone.features.N.{weight,bias}``  ``vgg16_reducedfc.pth``
==============================  =====================================  ==========================================

:data:`SSD_PYTORCH_PREFIXES` holds the first five rows. The priors are a non-persistent buffer (not in the state
dict), as in ssd.pytorch where they are not a buffer at all.

The source maps are conv4_3 (after the ReLU at ``features[22]``, then :class:`L2Norm`), conv7 (after
``features[34]``) and every second extra convolution (after a functional ReLU). At 300x300 they are 38, 19, 10,
5, 3, 1 (8732 priors with ``[4, 6, 6, 6, 4, 4]`` per cell); at 512x512 64, 32, 16, 8, 4, 2, 1 (24564 priors).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multibox.models.ssd import SSD
from multibox.models.zoo import register_model, resolve_prior_spec
from multibox.preprocess import VGG_MEAN, VGG_STD
from multibox.priors import VOC300, VOC512, PriorSpec

__all__ = [
    "CONV4_3_RELU",
    "EXTRAS300",
    "EXTRAS512",
    "SSD_PYTORCH_PREFIXES",
    "VGG16_CFG",
    "L2Norm",
    "VGG16Base",
    "make_extras",
    "ssd300_vgg16",
    "ssd512_vgg16",
    "vgg16_layers",
]

#: ssd.pytorch ``base['300']``: conv channels, ``M`` = 2x2/s2 max pool, ``C`` = the same with ``ceil_mode=True``
#: (so that 75 -> 38 at 300x300).
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512)

#: Index of conv4_3's ReLU in ``VGG16Base.features``; the first source is taken after ``features[:CONV4_3_RELU+1]``.
CONV4_3_RELU = 22

#: Extra layers as ``(out_channels, kernel_size, stride, padding)``, ssd.pytorch ``extras['300']`` =
#: ``[256, 'S', 512, 128, 'S', 256, 128, 256, 128, 256]`` unrolled: conv8_1/2, conv9_1/2, conv10_1/2, conv11_1/2.
EXTRAS300: tuple[tuple[int, int, int, int], ...] = (
    (256, 1, 1, 0), (512, 3, 2, 1),  # conv8: 19 -> 10
    (128, 1, 1, 0), (256, 3, 2, 1),  # conv9: 10 -> 5
    (128, 1, 1, 0), (256, 3, 1, 0),  # conv10: 5 -> 3
    (128, 1, 1, 0), (256, 3, 1, 0),  # conv11: 3 -> 1
)  # fmt: skip

#: Caffe ``ssd_pascal_512.py`` extras: conv8..conv11 halve the map, conv12_2 is 4x4/s1/p1 (2 -> 1).
EXTRAS512: tuple[tuple[int, int, int, int], ...] = (
    (256, 1, 1, 0), (512, 3, 2, 1),  # conv8: 32 -> 16
    (128, 1, 1, 0), (256, 3, 2, 1),  # conv9: 16 -> 8
    (128, 1, 1, 0), (256, 3, 2, 1),  # conv10: 8 -> 4
    (128, 1, 1, 0), (256, 3, 2, 1),  # conv11: 4 -> 2
    (128, 1, 1, 0), (256, 4, 1, 1),  # conv12: 2 -> 1
)  # fmt: skip

#: ssd.pytorch state-dict prefix -> multibox prefix (see the module docstring).
SSD_PYTORCH_PREFIXES: dict[str, str] = {
    "vgg.": "backbone.features.",
    "L2Norm.": "backbone.l2norm.",
    "extras.": "backbone.extras.",
    "loc.": "head.loc.",
    "conf.": "head.conf.",
}


def vgg16_layers(cfg: Sequence[int | str] = VGG16_CFG, in_channels: int = 3) -> list[nn.Module]:
    """ssd.pytorch's ``vgg(cfg, 3)``: VGG16 to conv5_3, then pool5 3x3/s1/p1, conv6 (dilated fc6) and conv7 (fc7).

    §3 "Base network": fc6 and fc7 become convolutions, pool5 changes from 2x2/s2 to 3x3/s1, and conv6 uses the
    à trous algorithm (dilation 6, padding 6) to keep the receptive field.

    Returns:
        The 35 modules, indices as ssd.pytorch's ``vgg`` list.
    """
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif v == "C":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        else:
            layers += [nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = int(v)
    layers += [
        nn.MaxPool2d(kernel_size=3, stride=1, padding=1),  # pool5
        nn.Conv2d(in_channels, 1024, kernel_size=3, padding=6, dilation=6),  # conv6
        nn.ReLU(inplace=True),
        nn.Conv2d(1024, 1024, kernel_size=1),  # conv7
        nn.ReLU(inplace=True),
    ]
    return layers


def make_extras(specs: Sequence[tuple[int, int, int, int]], in_channels: int = 1024) -> nn.ModuleList:
    """The extra feature layers (§2.1 "Multi-scale feature maps for detection"), convolutions only.

    The ReLU after each is applied functionally in :meth:`VGG16Base.forward`, as ssd.pytorch does.

    Args:
        specs: ``(out_channels, kernel_size, stride, padding)`` per convolution.
        in_channels: channels of conv7.
    """
    layers = []
    for out_channels, kernel_size, stride, padding in specs:
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding))
        in_channels = out_channels
    return nn.ModuleList(layers)


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learnt per-channel scale (ParseNet; §3.1, "PASCAL VOC2007").

    "conv4_3 has a different feature scale compared to the other layers, we use the L2 normalization technique
    [...] to scale the feature norm at each location in the feature map to 20 and learn the scale during back
    propagation." As ssd.pytorch: ``x / (||x||_2 + eps) * weight`` with ``eps = 1e-10``.

    Args:
        channels: channels of the input.
        scale: initial value of every entry of ``weight``.
        eps: added to the norm.
    """

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.scale = scale
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, self.scale)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, C, H, W] -> Tensor[B, C, H, W]``, unit L2 norm over C at each location, times ``weight``."""
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps  # (B, 1, H, W)
        return x / norm * self.weight.view(1, -1, 1, 1)  # (C,) -> (1, C, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, scale={self.scale}, eps={self.eps}"


class VGG16Base(nn.Module):
    """VGG16 with conv6/conv7, the conv4_3 L2Norm and the extra layers; returns the SSD source maps.

    Args:
        extras: the extra convolutions as ``(out_channels, kernel_size, stride, padding)``; every second one's
            output is a source map. :data:`EXTRAS300` or :data:`EXTRAS512`.

    Attributes:
        features: ``nn.ModuleList`` of 35 modules, ssd.pytorch's ``vgg`` indices.
        l2norm: :class:`L2Norm` on conv4_3 (512 channels, scale 20).
        extras: ``nn.ModuleList`` of the extra convolutions, ssd.pytorch's ``extras`` indices.
    """

    def __init__(self, extras: Sequence[tuple[int, int, int, int]] = EXTRAS300) -> None:
        super().__init__()
        if len(extras) % 2:
            raise ValueError(f"the extras come in pairs (1x1 then 3x3), got {len(extras)} layers")
        self.features = nn.ModuleList(vgg16_layers())
        self.l2norm = L2Norm(512, scale=20.0)
        self.extras = make_extras(extras, in_channels=1024)
        self.init_weights()

    def init_weights(self) -> None:
        """From scratch: Kaiming-normal VGG convs (torchvision's VGG init), Xavier-uniform extras (ssd.pytorch),
        zero biases, L2Norm scale 20. Load ImageNet weights into ``features`` afterwards to fine-tune as the paper.
        """
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for m in self.extras.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.l2norm.reset_parameters()

    def forward(self, x: Tensor) -> list[Tensor]:
        """``Tensor[B, 3, H, W]`` -> source maps ``[conv4_3 (L2-normed), conv7, conv8_2, conv9_2, ...]``."""
        sources = []
        for layer in self.features[: CONV4_3_RELU + 1]:  # conv1_1 .. relu4_3
            x = layer(x)
        sources.append(self.l2norm(x))
        for layer in self.features[CONV4_3_RELU + 1 :]:  # pool4 .. relu7
            x = layer(x)
        sources.append(x)
        for k, conv in enumerate(self.extras):
            x = F.relu(conv(x), inplace=True)
            if k % 2 == 1:
                sources.append(x)
        return sources


@register_model
def ssd300_vgg16(
    num_classes: int,
    image_size: int | tuple[int, int] = 300,
    prior_spec: PriorSpec | str = VOC300,
    mean: Sequence[float] = VGG_MEAN,
    std: Sequence[float] = VGG_STD,
) -> SSD:
    """SSD300 (§3, Fig. 2): VGG16 + :data:`EXTRAS300`, six source maps, ``[4, 6, 6, 6, 4, 4]`` priors per cell.

    Args:
        num_classes: classes including the background (21 for VOC, 81 for COCO).
        image_size: input size, int or ``(H, W)``; at least 268 on each side. 300 gives 8732 priors.
        prior_spec: default boxes: :data:`~multibox.priors.VOC300` (§3.1) or ``"coco300"`` (§3.4), a
            :class:`~multibox.priors.PriorSpec`, a preset name or a dict of its fields.
        mean: RGB mean in 0-255 units.
        std: RGB std in 0-255 units.
    """
    spec = resolve_prior_spec(prior_spec)
    return SSD(VGG16Base(EXTRAS300), num_classes, image_size, spec, mean=mean, std=std)


@register_model
def ssd512_vgg16(
    num_classes: int,
    image_size: int | tuple[int, int] = 512,
    prior_spec: PriorSpec | str = VOC512,
    mean: Sequence[float] = VGG_MEAN,
    std: Sequence[float] = VGG_STD,
) -> SSD:
    """SSD512 (§3.2 and Caffe ``ssd_pascal_512.py``): VGG16 + :data:`EXTRAS512`, seven source maps.

    Args:
        num_classes: classes including the background (21 for VOC, 81 for COCO).
        image_size: input size, int or ``(H, W)``; at least 268 on each side. 512 gives 24564 priors.
        prior_spec: default boxes: :data:`~multibox.priors.VOC512` or ``"coco512"``, a
            :class:`~multibox.priors.PriorSpec`, a preset name or a dict of its fields.
        mean: RGB mean in 0-255 units.
        std: RGB std in 0-255 units.
    """
    spec = resolve_prior_spec(prior_spec)
    return SSD(VGG16Base(EXTRAS512), num_classes, image_size, spec, mean=mean, std=std)
