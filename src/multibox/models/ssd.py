"""The SSD meta-architecture: a backbone returning source feature maps, and the multibox head (Liu et al. 2016, §2.1).

An :class:`SSD` is composed of

* ``backbone``: any ``nn.Module`` mapping ``Tensor[B, 3, H, W]`` to a list of source feature maps
  ``[Tensor[B, C_k, h_k, w_k], ...]`` (VGG16 + extras in :mod:`multibox.models.vgg`, a small net in
  :mod:`multibox.models.tiny`);
* ``head``: a :class:`~multibox.models.heads.MultiboxHead`, one 3x3 ``loc`` and one 3x3 ``conf`` convolution per
  source map (§2.1 "Convolutional predictors for detection");
* ``priors``: the default boxes, a non-persistent buffer derived from the input size and the feature-map sizes.

Nothing about the feature maps is configured: at construction the backbone is run once on an input of the
model's ``image_size`` (a shape-only "meta" tensor, falling back to a real zeros tensor for backbones whose ops
have no meta kernels) to *measure* each source map's size and channels. The head's input channels and the
priors come from that measurement, so a prior count can never disagree with the network.

``forward`` is the same in train and eval mode and returns a :class:`~multibox.structures.Prediction`; the loss
and the post-processing are separate functions. Preprocessing (input size, mean, std) is explicit in
:class:`Preprocess` and travels with the model; ``forward`` never resizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from multibox.models.heads import MultiboxHead, check_num_classes
from multibox.preprocess import to_hw
from multibox.priors import PriorSpec
from multibox.structures import Prediction

__all__ = [
    "BUILDER_NAME",
    "SSD",
    "Preprocess",
    "measure_feature_maps",
    "min_input_size",
]

#: The name of the registered builder running now (set by :func:`multibox.models.zoo.register_model`'s wrapper).
BUILDER_NAME: ContextVar[str | None] = ContextVar("multibox_builder_name", default=None)

# The largest side the minimum-input-size search tries before it gives up.
_MAX_SEARCH_SIZE = 8192


@dataclass(frozen=True)
class Preprocess:
    """What the model expects of its input; stored with the weights.

    Images are RGB float tensors in 0-255 pixel units, resized to ``image_size`` outside the model, then
    normalised as ``(x - mean) / std`` per channel.

    Attributes:
        image_size: input ``(H, W)`` in pixels.
        mean: per-channel RGB mean in 0-255 units.
        std: per-channel RGB standard deviation in 0-255 units.
    """

    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", to_hw(self.image_size))
        for field in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, field))
            if len(value) != 3:
                raise ValueError(f"Preprocess.{field} must have 3 values (R, G, B), got {value}")
            if not all(math.isfinite(v) for v in value):
                raise ValueError(f"Preprocess.{field} must be finite numbers, got {value}")
            object.__setattr__(self, field, value)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Preprocess.std must be positive, got {self.std}")

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        """Plain lists, fit for JSON, YAML and ``torch.load(weights_only=True)``."""
        return {k: list(v) for k, v in asdict(self).items()}

    def keys(self) -> Iterator[str]:
        """Field names, so that ``dict(preprocess)`` and ``**preprocess`` work."""
        return iter(("image_size", "mean", "std"))

    def __getitem__(self, key: str) -> Any:
        if key not in ("image_size", "mean", "std"):
            raise KeyError(key)
        return getattr(self, key)

    def normalize(self, images: Tensor) -> Tensor:
        """``(images - mean) / std``.

        Args:
            images: ``Tensor[..., 3, H, W]`` RGB in 0-255 units (any float dtype; uint8 is converted to float32).

        Returns:
            The normalised images, same shape.
        """
        if not images.is_floating_point():
            images = images.float()
        mean = images.new_tensor(self.mean).view(3, 1, 1)
        std = images.new_tensor(self.std).view(3, 1, 1)
        return (images - mean) / std


def _probe(backbone: nn.Module, image_size: tuple[int, int], meta: bool) -> list[Tensor]:
    """Run ``backbone`` (in eval mode, without gradients) on a zeros batch of one image of ``image_size``."""
    was_training = backbone.training
    backbone.eval()  # batch-norm layers must neither use nor update batch statistics during a dry run
    try:
        with torch.no_grad():
            if meta:
                tensors = {name: t.to("meta") for name, t in backbone.named_parameters()}
                tensors.update({name: t.to("meta") for name, t in backbone.named_buffers()})
                x = torch.zeros(1, 3, *image_size, device="meta")
                out = functional_call(backbone, tensors, (x,))
            else:
                p = next(backbone.parameters(), None)
                x = torch.zeros(1, 3, *image_size, device=p.device if p is not None else None)
                out = backbone(x)
    finally:
        backbone.train(was_training)
    if isinstance(out, Tensor) or not all(isinstance(t, Tensor) and t.dim() == 4 for t in out):
        raise TypeError(f"an SSD backbone must return a list of Tensor[B, C, h, w] source maps, got {type(out)}")
    return list(out)


def _shapes(backbone: nn.Module, image_size: tuple[int, int], meta: bool) -> list[tuple[int, int, int]] | None:
    """``(C, h, w)`` of each source map, or None if the input is too small for the backbone.

    Raises:
        NotImplementedError: on the meta device, for a backbone with an op that has no meta kernel.
    """
    try:
        maps = _probe(backbone, image_size, meta)
    except RuntimeError:  # e.g. "Kernel size can't be greater than actual input size", "Output size is too small"
        return None
    shapes = [(int(t.shape[1]), int(t.shape[2]), int(t.shape[3])) for t in maps]
    if any(h < 1 or w < 1 for _, h, w in shapes):
        return None
    return shapes


def _works(backbone: nn.Module, size: int) -> bool:
    try:
        return _shapes(backbone, (size, size), meta=True) is not None
    except NotImplementedError:
        return _shapes(backbone, (size, size), meta=False) is not None


def min_input_size(backbone: nn.Module, max_size: int = _MAX_SEARCH_SIZE) -> int | None:
    """The smallest side ``s`` such that an ``s x s`` input gives every source map at least 1x1.

    Found by doubling, then bisection, over shape-only dry runs (output sizes of convolutions and poolings grow
    with the input, and the two spatial axes do not interact, so this bounds each side of a non-square input
    too). None if even ``max_size`` is too small.
    """
    hi = 1
    while not _works(backbone, hi):
        if hi >= max_size:
            return None
        hi = min(2 * hi, max_size)
    lo = hi // 2  # lo fails (or is 0), hi works
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _works(backbone, mid):
            hi = mid
        else:
            lo = mid
    return hi


def measure_feature_maps(
    backbone: nn.Module, image_size: int | Sequence[int], name: str | None = None
) -> tuple[list[tuple[int, int]], list[int]]:
    """Measure the source feature maps of ``backbone`` by a dry run at ``image_size``.

    The dry run is shape-only (parameters and a zeros input on the "meta" device, which costs nothing even
    for SSD512). A backbone that the meta run rejects is run for real on a zeros input before giving up.

    Args:
        backbone: maps ``Tensor[B, 3, H, W]`` to a list of source maps.
        image_size: the input size, int or ``(H, W)``.
        name: the model's name for error messages.

    Returns:
        ``(feature_maps, channels)``: ``(h, w)`` and channel count of each source map, in backbone order.

    Raises:
        ValueError: if the input is too small for some map to be at least 1x1 (the message names the minimum).
    """
    hw = to_hw(image_size)
    try:
        shapes = _shapes(backbone, hw, meta=True)
    except NotImplementedError:  # an op without a meta kernel
        shapes = None
    if shapes is None:  # too small, or the meta run failed for another reason: ask the real thing
        shapes = _shapes(backbone, hw, meta=False)
    if shapes is None:
        smallest = min_input_size(backbone)
        if smallest is None or min(hw) >= smallest:  # not a size problem: let the backbone's own error speak
            maps = _probe(backbone, hw, meta=False)
            raise ValueError(f"the backbone returned empty source maps {[tuple(t.shape) for t in maps]} at {hw}")
        what = f"{name} ({type(backbone).__name__})" if name else type(backbone).__name__
        raise ValueError(
            f"input size {hw[0]}x{hw[1]} (HxW) is too small for {what}: some source feature map "
            f"would be smaller than 1x1; each side must be at least {smallest} pixels"
        )
    return [(h, w) for _, h, w in shapes], [c for c, _, _ in shapes]


class SSD(nn.Module):
    """Single Shot MultiBox Detector (Liu et al. 2016, §2.1, Fig. 2).

    Args:
        backbone: maps ``Tensor[B, 3, H, W]`` to the list of source feature maps.
        num_classes: classes including the background (class 0); an int >= 2.
        image_size: the input size ``(H, W)`` the priors are made for (an int means square).
        prior_spec: the default-box recipe; it must have one entry per source map.
        mean: RGB mean in 0-255 units, stored in :attr:`preprocess`.
        std: RGB std in 0-255 units, stored in :attr:`preprocess`.
        name: the model's name for messages; None: the name of the registered builder running now, if any
            (:func:`~multibox.models.zoo.register_model` names the models its builders make, the builders do not).
        make_head: builds the head from the measured ``(in_channels, boxes_per_location, num_classes)``; the head maps
            the source maps to a :class:`~multibox.structures.Prediction` in the prior order and has
            ``boxes_per_location`` and ``init_weights()``. :class:`~multibox.models.heads.MultiboxHead` (3x3
            convolutions) by default; SSDLite passes its separable head
            (:class:`multibox.models.mobilenet.SSDLiteHead`).

    Attributes:
        num_classes: classes including the background.
        image_size: ``(H, W)``.
        feature_maps: measured ``(h, w)`` of each source map.
        feature_channels: measured channels of each source map.
        prior_spec: the default-box recipe.
        preprocess: :class:`Preprocess` (image size, mean, std).
        priors: buffer ``Tensor[A, 4]`` cxcywh in [0, 1] (not in the state dict: it is derived).
        backbone: the backbone module.
        head: the head (a :class:`~multibox.models.heads.MultiboxHead` unless another was given).
        head_fp32: under autocast, run the head in float32 on float32 features (False by default). The inference
            fast path sets it: the heads are a few percent of the FLOPs, and the class scores then carry only the
            backbone's rounding, not a second bf16 rounding of the logits themselves.
    """

    priors: Tensor
    head_fp32: bool = False

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        image_size: int | Sequence[int],
        prior_spec: PriorSpec,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        name: str | None = None,
        make_head: Callable[[list[int], list[int], int], nn.Module] = MultiboxHead,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.image_size = to_hw(image_size)
        self.prior_spec = prior_spec
        self.preprocess = Preprocess(self.image_size, tuple(mean), tuple(std))  # type: ignore[arg-type]
        self.name = name if name is not None else BUILDER_NAME.get()
        self.overrides: dict[str, Any] = {}
        self.backbone = backbone
        self.feature_maps, self.feature_channels = measure_feature_maps(backbone, self.image_size, self.name)
        if len(self.feature_maps) != prior_spec.num_maps:
            raise ValueError(
                f"the backbone has {len(self.feature_maps)} source maps {self.feature_maps} but the prior spec "
                f"describes {prior_spec.num_maps}"
            )
        self.head = make_head(self.feature_channels, prior_spec.boxes_per_location, num_classes)
        self.register_buffer("priors", prior_spec.generate(self.image_size, self.feature_maps), persistent=False)
        # The backbone and the head initialise themselves; init_weights() re-initialises both.

    @property
    def mean(self) -> tuple[float, float, float]:
        """RGB mean in 0-255 units (``preprocess.mean``)."""
        return self.preprocess.mean

    @property
    def std(self) -> tuple[float, float, float]:
        """RGB std in 0-255 units (``preprocess.std``)."""
        return self.preprocess.std

    @property
    def num_priors(self) -> int:
        return int(self.priors.shape[0])

    def init_weights(self) -> None:
        """Initialise from scratch: the backbone's own ``init_weights`` (if any), then the head's ``init_weights``."""
        init = getattr(self.backbone, "init_weights", None)
        if callable(init):
            init()
        self.head.init_weights()

    def config_dict(self) -> dict[str, Any]:
        """What :func:`multibox.models.create_model_from_config` needs to rebuild this model (plain types).

        Returns:
            ``{"name", "num_classes", "image_size": [H, W], "overrides": {...}, "preprocess": {...}}``; the
            overrides are the builder arguments given explicitly, ``preprocess`` is informative.
        """
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "image_size": list(self.image_size),
            "overrides": dict(self.overrides),
            "preprocess": self.preprocess.to_dict(),
        }

    def forward(self, images: Tensor) -> Prediction:
        """Class logits and box offsets for every prior; the same in train and eval mode.

        Args:
            images: ``Tensor[B, 3, H, W]`` normalised with :attr:`preprocess`, with ``(H, W) == image_size``.

        Returns:
            ``Prediction(cls_logits Tensor[B, A, num_classes], box_deltas Tensor[B, A, 4])``, ``A`` = number
            of priors; row ``a`` of both belongs to ``priors[a]``.

        Raises:
            ValueError: if the input is not ``[B, 3, H, W]`` at the model's size (checked in eager mode only;
                skipped while tracing or exporting to ONNX).
        """
        eager = not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export())
        if eager and (images.dim() != 4 or images.shape[1] != 3):
            raise ValueError(f"expected images of shape [B, 3, H, W], got {list(images.shape)}")
        if eager and tuple(images.shape[-2:]) != self.image_size:
            h, w = self.image_size
            raise ValueError(
                f"this model expects {h}x{w} (HxW) inputs, got {images.shape[-2]}x{images.shape[-1]}: its "
                f"{self.num_priors} priors were made for {h}x{w}; resize the images to {h}x{w}, or build the "
                f"model with image_size=({images.shape[-2]}, {images.shape[-1]}) and load the same weights"
            )
        features = self.backbone(images)
        if self.head_fp32 and eager and torch.is_autocast_enabled(images.device.type):
            with torch.autocast(images.device.type, enabled=False):
                pred = self.head([f.float() for f in features])
        else:
            pred = self.head(features)
        if eager and pred.box_deltas.shape[1] != self.num_priors:
            raise ValueError(
                f"the model predicted {pred.box_deltas.shape[1]} boxes but has {self.num_priors} priors "
                f"for its input size {self.image_size}"
            )
        return pred

    def extra_repr(self) -> str:
        return (
            f"name={self.name}, num_classes={self.num_classes}, image_size={self.image_size}, "
            f"feature_maps={self.feature_maps}, num_priors={self.num_priors}"
        )
