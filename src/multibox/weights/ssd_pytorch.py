"""The ssd.pytorch converters (amdegroot/ssd.pytorch): its SSD300 and its VGG16 base into multibox.

Layouts (``--from`` of ``multibox convert``):

``ssd.pytorch``
    amdegroot/ssd.pytorch SSD300 (e.g. ``ssd300_mAP_77.43_v2.pth``, 21 VOC classes): ``vgg.N``, ``L2Norm.weight``,
    ``extras.N``, ``loc.N``, ``conf.N``, the same indices as ours (:data:`multibox.models.vgg.SSD_PYTORCH_PREFIXES`).
    Priors: ``voc300`` for 21 classes, else ``coco300``, as ssd.pytorch picks its config.

    Colour order. ssd.pytorch reads images with OpenCV (BGR) and subtracts ``MEANS = (104, 117, 123)`` in BGR order,
    but its ``VOCDetection.pull_item`` then flips the result to RGB (``img[:, :, (2, 1, 0)]  # to rgb``), and both
    ``train.py`` and ``eval.py`` go through ``pull_item``: the published SSD300 weights were trained and evaluated
    on **RGB** input minus ``(123, 117, 104)``, which is exactly our VGG preprocessing. So by default
    (``input_order="rgb"``) the weights are copied unchanged. ssd.pytorch's ``test.py`` and demos feed the BGR image
    directly; for weights trained that way pass ``input_order="bgr"``, which reverses the input channels of the
    first convolution (``vgg.0.weight[:, ::-1]``) so that our RGB input gives the same activations.

``ssd.pytorch-base``
    ssd.pytorch's ``vgg16_reducedfc.pth``: the 15 convolutions of its ``vgg`` list as ``N.weight``/``N.bias``, into
    ``backbone.features`` only. It is a conversion of Caffe's ``VGG_ILSVRC_16_layers_fc_reduced``, trained on BGR
    images, so by default (``input_order="bgr"``) the first convolution's input channels are reversed for our RGB
    input (pass ``"rgb"`` to copy it as ssd.pytorch uses it, fed RGB).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from multibox.models.vgg import SSD_PYTORCH_PREFIXES, vgg16_layers
from multibox.preprocess import VGG_MEAN, VGG_STD
from multibox.priors import PriorSpec
from multibox.weights.rename import (
    Converted,
    classes_from_conf,
    flip_input_channels,
    remap_state_dict,
    state_shapes,
    strip_module_prefix,
)

__all__ = [
    "COCO80_CLASSES",
    "VGG_CONV_INDICES",
    "build_ssd300",
    "convert_ssd_pytorch",
    "convert_ssd_pytorch_base",
    "vgg_base_shapes",
]

#: The 80 COCO object classes in category-id order (ssd.pytorch's ``COCO_CLASSES``, label ``i`` is the ``i``-th).
COCO80_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip


def build_ssd300(
    num_classes: int, prior_spec: str | PriorSpec, mean: Sequence[float], std: Sequence[float]
) -> nn.Module:
    """A fresh ``ssd300_vgg16`` for converted weights."""
    from multibox.models import create_model

    return create_model("ssd300_vgg16", num_classes, prior_spec=prior_spec, mean=tuple(mean), std=tuple(std))


def convert_ssd_pytorch(
    state_dict: Mapping[str, Tensor],
    *,
    num_classes: int | None = None,
    input_order: str = "rgb",
    prior_spec: str | None = None,
    classes: Sequence[str] | None = None,
) -> Converted:
    """Convert an ssd.pytorch SSD300 state dict (see the module docstring for the colour order).

    Args:
        state_dict: ``vgg.N``, ``L2Norm.weight``, ``extras.N``, ``loc.N``, ``conf.N`` tensors.
        num_classes: expected classes including the background (None: read from ``conf.0``).
        input_order: the channel order the weights were trained on; ``"bgr"`` reverses conv1_1's input channels.
        prior_spec: a prior preset; None picks ``voc300`` for 21 classes, else ``coco300``, as ssd.pytorch does.
        classes: foreground class names (None: VOC's for 21 classes, COCO's 80 for 81).

    Raises:
        ConversionError: missing, unexpected or wrongly shaped keys; a class count that disagrees.
    """
    what = "ssd.pytorch SSD300"
    sd = strip_module_prefix(state_dict)
    c = classes_from_conf(sd, "conf.0.weight", 4, what, num_classes)
    spec = prior_spec or ("voc300" if c == 21 else "coco300")
    model = build_ssd300(c, spec, VGG_MEAN, VGG_STD)
    expected = state_shapes(model)
    mapping = {}
    for ours in expected:
        for src_prefix, our_prefix in SSD_PYTORCH_PREFIXES.items():
            if ours.startswith(our_prefix):
                mapping[src_prefix + ours[len(our_prefix) :]] = ours
    out = remap_state_dict(sd, mapping, expected, what)
    flip_input_channels(out, "backbone.features.0.weight", input_order)
    model.load_state_dict(out)
    if classes is None:
        from multibox.data.voc import VOC_CLASSES

        classes = VOC_CLASSES if c == 21 else COCO80_CLASSES if c == 81 else ()
    return Converted(
        out,
        model,
        VGG_MEAN,
        VGG_STD,
        list(classes),
        "ssd.pytorch",
        [f"{c} classes, priors {spec}, RGB input minus {VGG_MEAN} (input_order={input_order!r})"],
    )


#: Indices of the convolutions in ssd.pytorch's ``vgg`` list (and our ``backbone.features``).
VGG_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, 31, 33)


def vgg_base_shapes() -> dict[str, tuple[int, ...]]:
    """The shapes of our VGG16 base (``backbone.features.*``)."""
    return state_shapes(nn.ModuleList(vgg16_layers()), "backbone.features.")


def convert_ssd_pytorch_base(state_dict: Mapping[str, Tensor], *, input_order: str = "bgr") -> Converted:
    """Convert ssd.pytorch's ``vgg16_reducedfc.pth`` (``N.weight``/``N.bias``) into ``backbone.features``.

    Args:
        state_dict: the base's tensors.
        input_order: ``"bgr"`` (default: Caffe's VGG16 was trained on BGR) reverses conv1_1's input channels.
    """
    expected = vgg_base_shapes()
    mapping = {f"{i}.{p}": f"backbone.features.{i}.{p}" for i in VGG_CONV_INDICES for p in ("weight", "bias")}
    out = remap_state_dict(
        strip_module_prefix(state_dict), mapping, expected, "ssd.pytorch VGG16 base (vgg16_reducedfc)"
    )
    flip_input_channels(out, "backbone.features.0.weight", input_order)
    note = f"VGG16 base for ssd300/512_vgg16 (RGB minus {VGG_MEAN}); load with train.init_weights"
    return Converted(out, None, VGG_MEAN, VGG_STD, [], "ssd.pytorch-base", [note])
