"""ImageNet classifier weights into our backbones: VGG16 (with the paper's reduced fc6/fc7), torchvision's
MobileNetV3-Large and ResNet-50. (EfficientNet-Lite's loader stays beside its network: its builders load it.)

Layout ``imagenet-vgg16`` (``--from`` of ``multibox convert``):

``imagenet-vgg16``
    a torchvision-layout ImageNet VGG16 classifier (``features.N``, ``classifier.0/3/6``) into our base with the
    paper's reduced fc6/fc7 (§3 "Base network": "we convert fc6 and fc7 to convolutional layers, subsample
    parameters from fc6 and fc7"), as the Caffe ``fc_reduced`` model was made: fc6 ``4096 x 25088`` is viewed as
    ``4096 x 512 x 7 x 7``, every 4th output filter (1024) and every 3rd spatial tap (``7 x 7 -> 3 x 3``, at
    offsets 0, 3, 6) are kept, and conv6 applies them with dilation 6 (taps 3 apart on pool5's stride-16 grid,
    which with pool5 at stride 1 become 6 apart); fc7 ``4096 x 4096`` keeps every 4th row and column. ``classifier.6``
    (the 1000-way layer) is dropped. torchvision's VGG takes [0, 1] RGB normalised with the ImageNet mean/std, so the
    converted base needs ``mean = IMAGENET_MEAN``, ``std = IMAGENET_STD`` (0-255 units), not the Caffe VGG's.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from multibox.preprocess import IMAGENET_MEAN, IMAGENET_STD
from multibox.weights.rename import (
    ConversionError,
    Converted,
    LoadReport,
    load_renamed,
    remap_state_dict,
    strip_module_prefix,
)
from multibox.weights.ssd_pytorch import VGG_CONV_INDICES, vgg_base_shapes

__all__ = [
    "convert_imagenet_vgg16",
    "fc_reduced_indices",
    "load_torchvision_mobilenet_v3_large",
    "load_torchvision_resnet50",
    "reduce_fc6",
    "reduce_fc7",
]


def fc_reduced_indices(filters: int = 4096, grid: int = 7, step: int = 4, tap_step: int = 3) -> tuple[Tensor, Tensor]:
    """The Caffe ``fc_reduced`` subsampling: kept filters ``0, 4, ..., 4092`` and kept taps ``0, 3, 6`` of ``7``."""
    return torch.arange(0, filters, step), torch.arange(0, grid, tap_step)


def reduce_fc6(
    weight: Tensor, bias: Tensor, channels: int = 512, step: int = 4, tap_step: int = 3
) -> tuple[Tensor, Tensor]:
    """fc6 ``[F, C*G*G]`` (``4096 x 512*7*7``) -> conv6 ``[F/step, C, G', G']`` (``1024 x 512 x 3 x 3``).

    Keeps every ``step``-th output filter and every ``tap_step``-th spatial tap in each direction:
    ``out[o, c, i, j] = weight[step o, c G^2 + tap_step i G + tap_step j]`` (torchvision flattens pool5 as
    ``(C, H, W)``).

    Returns:
        ``(weight, bias[::step])``.
    """
    f, n = weight.shape
    grid = round((n / channels) ** 0.5)
    if channels * grid * grid != n:
        raise ConversionError(f"fc6 weight {list(weight.shape)} is not {f} x ({channels} x G x G)")
    kept, taps = fc_reduced_indices(f, grid, step, tap_step)
    w = weight.reshape(f, channels, grid, grid)  # (F, C*G*G) -> (F, C, G, G)
    return w[kept][:, :, taps][:, :, :, taps].contiguous(), bias[kept].clone()


def reduce_fc7(weight: Tensor, bias: Tensor, step: int = 4) -> tuple[Tensor, Tensor]:
    """fc7 ``[F, F]`` -> conv7 ``[F/step, F/step, 1, 1]``: every ``step``-th row and column (the rows are the
    outputs; the columns must be the fc6 filters that :func:`reduce_fc6` kept)."""
    kept = torch.arange(0, weight.shape[0], step)
    cols = torch.arange(0, weight.shape[1], step)
    return weight[kept][:, cols].reshape(len(kept), len(cols), 1, 1).contiguous(), bias[kept].clone()


def convert_imagenet_vgg16(state_dict: Mapping[str, Tensor]) -> Converted:
    """Convert a torchvision-layout ImageNet VGG16 (``features.N``, ``classifier.0/3/6``) to our reduced base."""
    what = "ImageNet VGG16 (torchvision layout)"
    sd = strip_module_prefix(state_dict)
    if "features.1.weight" in sd:
        raise ConversionError(f"{what}: features.1 has weights: this is VGG16-BN, whose layout differs; use VGG16")
    expected = vgg_base_shapes()
    mapping = {
        f"features.{i}.{p}": f"backbone.features.{i}.{p}" for i in VGG_CONV_INDICES[:13] for p in ("weight", "bias")
    }
    fc = {"classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,)}
    fc.update({"classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,)})
    for key, shape in fc.items():
        mapping[key] = key
        expected[key] = shape
    out = remap_state_dict(sd, mapping, expected, what, ignore=lambda k: k.startswith("classifier.6."))
    w6, b6 = reduce_fc6(out.pop("classifier.0.weight"), out.pop("classifier.0.bias"))
    w7, b7 = reduce_fc7(out.pop("classifier.3.weight"), out.pop("classifier.3.bias"))
    out.update({"backbone.features.31.weight": w6, "backbone.features.31.bias": b6})
    out.update({"backbone.features.33.weight": w7, "backbone.features.33.bias": b7})
    note = f"VGG16 base with reduced fc6/fc7; needs mean={IMAGENET_MEAN}, std={IMAGENET_STD} (model.kwargs)"
    return Converted(out, None, IMAGENET_MEAN, IMAGENET_STD, [], "imagenet-vgg16", [note])


def load_torchvision_mobilenet_v3_large(model: nn.Module, state_dict: Mapping[str, Tensor]) -> LoadReport:
    """Load torchvision's ImageNet ``mobilenet_v3_large`` weights into the backbone (not the extras or heads).

    ``features.*`` keys load by name onto ``backbone.features``; ``classifier.*`` (the ImageNet classifier) is
    ignored. Every shape is checked before anything is copied.

    Args:
        model: an SSD built by :func:`~multibox.models.mobilenet.ssdlite320_mobilenet_v3` with
            ``reduce_tail=False`` (and the width multiplier of the weights), or its backbone.
        state_dict: e.g. ``torch.load("mobilenet_v3_large-8738ca79.pth")``.

    Returns:
        :class:`~multibox.weights.rename.LoadReport` (loaded and ignored torchvision keys).

    Raises:
        ValueError: naming the key and the expected and found shapes on a mismatch (a ``reduce_tail=True`` model
            fails on ``features.13.block.3``), the missing keys of a truncated state dict, or a key that is not
            torchvision MobileNetV3-Large's.
    """
    from multibox.models.mobilenet import MobileNetV3Backbone
    from multibox.models.ssd import SSD

    backbone = model.backbone if isinstance(model, SSD) else model
    if not isinstance(backbone, MobileNetV3Backbone):
        raise TypeError(f"expected an ssdlite320_mobilenet_v3 model or its backbone, got {type(backbone).__name__}")

    def rename(key: str) -> str | None:
        if key.startswith("classifier."):
            return None
        if key.startswith("features."):
            return key
        raise ValueError(f"{key!r} is not a torchvision mobilenet_v3_large key (features.* or classifier.*)")

    required = [k for k in backbone.state_dict() if k.startswith("features.")]
    try:
        return load_renamed(backbone, state_dict, rename, required, "torchvision mobilenet_v3_large")
    except ValueError as err:
        if "do not fit" in str(err) and backbone.reduce_tail:
            raise ValueError(f"{err}; torchvision's ImageNet weights need reduce_tail=False") from None
        raise


_TRUNK = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")


def load_torchvision_resnet50(model: nn.Module, state_dict: Mapping[str, Tensor]) -> LoadReport:
    """Load torchvision's ImageNet ``resnet50`` weights into conv1..conv4_x of the backbone.

    ``conv1``, ``bn1`` and ``layer1..3`` load by name; ``layer4.*`` (conv5_x, not part of this detector) and
    ``fc.*`` (the classifier) are ignored. The extras and the heads keep their initialisation. Strides carry no
    weights, so conv4_x at stride 1 takes the classifier's weights unchanged.

    Args:
        model: an SSD built by :func:`~multibox.models.resnet.ssd300_resnet50`, or its backbone.
        state_dict: e.g. ``torch.load("resnet50-0676ba61.pth")`` (either of torchvision's ImageNet weights).

    Returns:
        :class:`~multibox.weights.rename.LoadReport` (loaded and ignored torchvision keys).

    Raises:
        ValueError: naming the key and the expected and found shapes on a mismatch, the missing keys of a
            truncated state dict, or a key that is not torchvision ResNet-50's.
    """
    from multibox.models.resnet import ResNet50Backbone
    from multibox.models.ssd import SSD

    backbone = model.backbone if isinstance(model, SSD) else model
    if not isinstance(backbone, ResNet50Backbone):
        raise TypeError(f"expected an ssd300_resnet50 model or its backbone, got {type(backbone).__name__}")

    def rename(key: str) -> str | None:
        if key.startswith(("fc.", "layer4.")):
            return None
        if key.startswith(_TRUNK):
            return key
        raise ValueError(f"{key!r} is not a torchvision resnet50 key (conv1, bn1, layer1..4, fc)")

    required = [k for k in backbone.state_dict() if k.startswith(_TRUNK)]
    return load_renamed(backbone, state_dict, rename, required, "torchvision resnet50")
