"""Weight converters: ssd.pytorch, its VGG16 base, torchvision's SSD300 and ImageNet VGG16 into multibox models.

Every converter maps the source keys one by one onto ours, checks that nothing is missing or left over and that
every shape fits (errors name the source key, the expected and the found shape), and loads the result into a
freshly built model, so that what comes out always loads. Files are read safely (``weights_only=True``).

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

``torchvision``
    torchvision's ``ssd300_vgg16`` (COCO, 91 classes: the COCO category ids 1..90 with unused ids, so label ``i``
    is COCO category ``i``): ``backbone.features.N`` (conv1_1..conv4_3, the same indices), ``backbone.scale_weight``
    (the conv4_3 L2 scale), ``backbone.extra.0`` (conv5_1..3 at ``.1/.3/.5``, then ``.7.1`` fc6 and ``.7.3`` fc7),
    ``backbone.extra.1..4`` (``.0`` and ``.2`` of each), ``head.classification_head.module_list.N`` and
    ``head.regression_head.module_list.N``. Its heads flatten ``(N, A*K, H, W)`` to ``(N, HWA, K)`` as ours do and
    its box coder weights ``(10, 10, 5, 5)`` are our variances ``(0.1, 0.2)``. Its ``DefaultBoxGenerator`` (scales
    ``0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05``, steps ``8, 16, 32, 64, 100, 300``, per cell ``s_k, sqrt(s_k
    s_k+1), (a, 1/a)...``, row-major) has our ``coco300`` sizes, steps and order, but clips only the widths and
    heights, not the centres: on the 10x10 map the last row and column have centres at ``9.5 * 32 / 300 = 1.013``,
    which ``coco300`` (as ssd.pytorch) clamps to 1. So the converted model gets :data:`TORCHVISION300`, ``coco300``
    with ``clip="size"``; with plain ``coco300``, 114 of the 8732 priors would differ. Its transform takes [0, 1]
    RGB and normalises with mean ``(0.48235, 0.45882, 0.40784)`` and std ``1/255``, i.e. ``x_255 - 255 * mean``
    in 0-255 units: our mean becomes ``255 * mean`` (about ``(123, 117, 104)``) with std 1. Differences that
    remain: torchvision resizes without antialiasing (our :func:`~multibox.data.eval_transform` antialiases unless
    ``antialias=False``), normalises conv4_3 as ``x / max(||x||, 1e-12)`` (ours ``x / (||x|| + 1e-10)``), and
    post-processes with 400 candidates per class and one class-aware NMS over them (ours: ``pre_nms_top_k=200``,
    per class).

    torchvision's ``ssdlite320_mobilenet_v3_large`` (COCO, the same 91 classes; ``torchvision/models/detection/
    ssdlite.py``) is our ``ssdlite320_mobilenet_v3`` tensor for tensor under other names; :func:`convert_torchvision`
    tells the two models apart by their keys (:data:`TORCHVISION_MODELS`).
    Its ``SSDLiteFeatureExtractorMobileNet`` splits ``mobilenet_v3_large().features`` at C4, the expansion of bneck
    ``c4_pos = 13`` (the last stride-2 block): ``backbone.features.0`` is ``Sequential(*features[:13],
    features[13].block[0])``, so ``.0.0`` .. ``.0.12`` are blocks 0..12 and ``.0.13`` is the expansion;
    ``backbone.features.1`` is ``Sequential(features[13].block[1:], *features[14:])``, where ``.1.0`` is a slice of
    ``block``, and a sliced ``nn.Sequential`` keeps its children's names: the depthwise conv, squeeze-excite and
    projection stay ``.1.0.1``, ``.1.0.2``, ``.1.0.3`` (not ``.0/.1/.2``); ``.1.1``, ``.1.2``, ``.1.3`` are blocks
    14, 15 and the last 1x1 conv. ``backbone.extra.K`` are our ``backbone.extras.K``; ``head.classification_head.
    module_list.N`` and ``head.regression_head.module_list.N`` (3x3 depthwise + BatchNorm + ReLU6, then 1x1) our
    ``head.conf.N`` and ``head.loc.N``. Its COCO weights have ``reduce_tail=True`` (C5 480 channels; a model trained
    from torchvision's ImageNet backbone has 960, ``reduce_tail=False``, which is read from the shapes) and width
    1.0. Its transform maps [0, 1] RGB to [-1, 1] (``image_mean = image_std = 0.5``), i.e. mean = std = 127.5 in
    0-255 units, and its ``DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)`` is our
    :data:`~multibox.models.mobilenet.SSDLITE320`. Its post-processing differs from our defaults: score 0.001,
    ``topk_candidates`` 300 per class, one class-aware NMS at 0.55, 300 detections per image.

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

import inspect
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from multibox.models.tiny import IMAGENET_MEAN, IMAGENET_STD
from multibox.models.vgg import SSD_PYTORCH_PREFIXES, VGG_MEAN, VGG_STD, vgg16_layers
from multibox.priors import COCO300, PriorSpec

__all__ = [
    "COCO80_CLASSES",
    "CONVERTERS",
    "LAYOUTS",
    "TORCHVISION300",
    "TORCHVISION_COCO_CLASSES",
    "TORCHVISION_MODELS",
    "TORCHVISION_SSDLITE_MEAN",
    "TORCHVISION_SSDLITE_POSTPROCESS",
    "TORCHVISION_SSDLITE_STD",
    "ConversionError",
    "Converted",
    "convert_file",
    "convert_imagenet_vgg16",
    "convert_ssd_pytorch",
    "convert_ssd_pytorch_base",
    "convert_torchvision",
    "convert_torchvision_ssd300",
    "convert_torchvision_ssdlite320",
    "detect_layout",
    "fc_reduced_indices",
    "load_state_dict_file",
    "reduce_fc6",
    "reduce_fc7",
    "save_safetensors_checkpoint",
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
_COCO_UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
#: torchvision's 90 foreground labels: label ``i`` is COCO category id ``i``; the 10 unused ids are ``"N/A"``.
TORCHVISION_COCO_CLASSES = tuple(
    "N/A" if i in _COCO_UNUSED_IDS else COCO80_CLASSES[i - 1 - sum(u < i for u in _COCO_UNUSED_IDS)]
    for i in range(1, 91)
)


class ConversionError(ValueError):
    """A source state dict does not have the layout or the shapes a converter expects."""


@dataclass
class Converted:
    """The result of a converter.

    Attributes:
        state_dict: multibox keys -> tensors (a full model's, or ``backbone.features.*`` only for a base).
        model: the multibox model with the weights loaded (None for a base-only conversion).
        mean: the RGB mean (0-255 units) the weights expect.
        std: the RGB std (0-255 units) the weights expect.
        classes: foreground class names, when known.
        source: the layout converted from.
        notes: what the user should know (preprocessing, priors).
    """

    state_dict: dict[str, Tensor]
    model: nn.Module | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classes: list[str] = field(default_factory=list)
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def checkpoint(self) -> dict[str, Any]:
        """A multibox checkpoint: ``model``, ``preprocess``, ``source`` and, for a full model, ``model_args`` and
        ``classes`` (so that ``multibox detect/eval/export --weights`` can rebuild it); a base-only one loads as
        ``train.init_weights``."""
        ckpt: dict[str, Any] = {
            "model": self.state_dict,
            "preprocess": {"mean": list(self.mean), "std": list(self.std)},
            "source": self.source,
        }
        if self.model is not None:
            ckpt["model_args"] = self.model.config_dict()
            ckpt["preprocess"]["image_size"] = list(self.model.image_size)
            ckpt["classes"] = list(self.classes)
        return ckpt


def _shapes(module: nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def _remap(
    source: Mapping[str, Tensor],
    mapping: Mapping[str, str],
    expected: Mapping[str, tuple[int, ...]],
    what: str,
    ignore: Callable[[str], bool] = lambda key: False,
) -> dict[str, Tensor]:
    """``{mapping[k]: source[k]}``, checking keys and shapes; errors name the source key and both shapes."""
    missing = [k for k in mapping if k not in source]
    if missing:
        raise ConversionError(
            f"{what}: {len(missing)} of {len(mapping)} expected keys are missing, e.g. {missing[:4]} "
            f"(a truncated file, or another architecture)"
        )
    unexpected = sorted(k for k in source if k not in mapping and not ignore(k))
    if unexpected:
        raise ConversionError(
            f"{what}: {len(unexpected)} unexpected keys, e.g. {unexpected[:4]} (another architecture or size?)"
        )
    out = {}
    for src, dst in mapping.items():
        tensor = source[src]
        if not isinstance(tensor, Tensor):
            raise ConversionError(f"{what}: {src} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != tuple(expected[dst]):
            raise ConversionError(
                f"{what}: {src} has shape {list(tensor.shape)}, expected {list(expected[dst])} (for {dst})"
            )
        out[dst] = tensor.detach().clone()
    return out


def _strip_module(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop a ``module.`` prefix left by ``nn.DataParallel`` (on every key, or none)."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def _flip_input_channels(sd: dict[str, Tensor], key: str, input_order: str) -> None:
    if input_order not in ("rgb", "bgr"):
        raise ValueError(f"input_order must be 'rgb' or 'bgr', got {input_order!r}")
    if input_order == "bgr":  # weights for B, G, R inputs -> weights for R, G, B inputs
        sd[key] = sd[key].flip(1).contiguous()


def _classes_from_conf(sd: Mapping[str, Tensor], key: str, boxes: int, what: str, num_classes: int | None) -> int:
    """The class count a ``conf`` conv encodes (``boxes * C`` outputs), checked against ``num_classes``."""
    if key not in sd:
        raise ConversionError(f"{what}: missing {key} (a truncated file, or another architecture)")
    out = int(sd[key].shape[0])
    if out % boxes:
        raise ConversionError(f"{what}: {key} has {out} outputs, not a multiple of its {boxes} boxes per location")
    found = out // boxes
    if num_classes is not None and found != num_classes:
        raise ConversionError(
            f"{what}: {key} has shape {list(sd[key].shape)} = {boxes} boxes x {found} classes, but num_classes="
            f"{num_classes} was asked (num_classes counts the background)"
        )
    if found < 2:
        raise ConversionError(f"{what}: {key} encodes {found} class(es); at least 2 (background + 1) are needed")
    return found


def _build_ssd300(
    num_classes: int, prior_spec: str | PriorSpec, mean: Sequence[float], std: Sequence[float]
) -> nn.Module:
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
    sd = _strip_module(state_dict)
    c = _classes_from_conf(sd, "conf.0.weight", 4, what, num_classes)
    spec = prior_spec or ("voc300" if c == 21 else "coco300")
    model = _build_ssd300(c, spec, VGG_MEAN, VGG_STD)
    expected = _shapes(model)
    mapping = {}
    for ours in expected:
        for src_prefix, our_prefix in SSD_PYTORCH_PREFIXES.items():
            if ours.startswith(our_prefix):
                mapping[src_prefix + ours[len(our_prefix) :]] = ours
    out = _remap(sd, mapping, expected, what)
    _flip_input_channels(out, "backbone.features.0.weight", input_order)
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


def _base_shapes() -> dict[str, tuple[int, ...]]:
    return _shapes(nn.ModuleList(vgg16_layers()), "backbone.features.")


def convert_ssd_pytorch_base(state_dict: Mapping[str, Tensor], *, input_order: str = "bgr") -> Converted:
    """Convert ssd.pytorch's ``vgg16_reducedfc.pth`` (``N.weight``/``N.bias``) into ``backbone.features``.

    Args:
        state_dict: the base's tensors.
        input_order: ``"bgr"`` (default: Caffe's VGG16 was trained on BGR) reverses conv1_1's input channels.
    """
    expected = _base_shapes()
    mapping = {f"{i}.{p}": f"backbone.features.{i}.{p}" for i in VGG_CONV_INDICES for p in ("weight", "bias")}
    out = _remap(_strip_module(state_dict), mapping, expected, "ssd.pytorch VGG16 base (vgg16_reducedfc)")
    _flip_input_channels(out, "backbone.features.0.weight", input_order)
    note = f"VGG16 base for ssd300/512_vgg16 (RGB minus {VGG_MEAN}); load with train.init_weights"
    return Converted(out, None, VGG_MEAN, VGG_STD, [], "ssd.pytorch-base", [note])


#: torchvision's ``DefaultBoxGenerator`` of ``ssd300_vgg16``: ``coco300`` whose centres are not clipped.
TORCHVISION300 = COCO300.with_(clip="size")

#: torchvision ``ssd300_vgg16``'s mean (of [0, 1] RGB images); with std 1/255 it is ``x_255 - 255 * mean``.
TORCHVISION_SSD_MEAN = (0.48235, 0.45882, 0.40784)


def _torchvision_mapping() -> dict[str, str]:
    mapping = {f"backbone.features.{i}": f"backbone.features.{i}" for i in VGG_CONV_INDICES[:10]}  # to conv4_3
    # extra.0 = Sequential(pool4, conv5_1, relu, conv5_2, relu, conv5_3, relu, Sequential(pool5, fc6, relu, fc7, relu))
    mapping.update({"backbone.extra.0.1": "backbone.features.24", "backbone.extra.0.3": "backbone.features.26"})
    mapping.update({"backbone.extra.0.5": "backbone.features.28", "backbone.extra.0.7.1": "backbone.features.31"})
    mapping["backbone.extra.0.7.3"] = "backbone.features.33"
    for k in range(1, 5):  # conv8..conv11: (1x1, 3x3) each
        mapping[f"backbone.extra.{k}.0"] = f"backbone.extras.{2 * k - 2}"
        mapping[f"backbone.extra.{k}.2"] = f"backbone.extras.{2 * k - 1}"
    for n in range(6):
        mapping[f"head.classification_head.module_list.{n}"] = f"head.conf.{n}"
        mapping[f"head.regression_head.module_list.{n}"] = f"head.loc.{n}"
    full = {f"{s}.{p}": f"{d}.{p}" for s, d in mapping.items() for p in ("weight", "bias")}
    full["backbone.scale_weight"] = "backbone.l2norm.weight"
    return full


def convert_torchvision_ssd300(
    state_dict: Mapping[str, Tensor], *, num_classes: int | None = None, classes: Sequence[str] | None = None
) -> Converted:
    """Convert torchvision's ``ssd300_vgg16`` state dict (see the module docstring: priors, preprocessing).

    Args:
        state_dict: torchvision's keys.
        num_classes: expected classes including the background (None: read from the classification head; 91
            for torchvision's COCO weights).
        classes: foreground names (None: :data:`TORCHVISION_COCO_CLASSES` for 91 classes).
    """
    what = "torchvision ssd300_vgg16"
    sd = _strip_module(state_dict)
    if any(k.startswith("backbone.extra.5.") for k in sd):
        raise ConversionError(f"{what}: found backbone.extra.5 (SSD512's conv12); only SSD300 is supported")
    c = _classes_from_conf(sd, "head.classification_head.module_list.0.weight", 4, what, num_classes)
    mean = tuple(255.0 * m for m in TORCHVISION_SSD_MEAN)
    model = _build_ssd300(c, TORCHVISION300, mean, (1.0, 1.0, 1.0))
    out = _remap(sd, _torchvision_mapping(), _shapes(model), what)
    model.load_state_dict(out)
    if classes is None:
        classes = TORCHVISION_COCO_CLASSES if c == 91 else ()
    rounded = tuple(round(m, 3) for m in mean)
    note = f"{c} classes, priors coco300 with clip='size' (torchvision's DefaultBoxGenerator), RGB minus {rounded}"
    return Converted(out, model, mean, (1.0, 1.0, 1.0), list(classes), "torchvision", [note])  # type: ignore[arg-type]


#: torchvision ``ssdlite320_mobilenet_v3_large``'s ``image_mean = image_std = 0.5`` of [0, 1] RGB, in 0-255 units.
TORCHVISION_SSDLITE_MEAN = (127.5, 127.5, 127.5)
TORCHVISION_SSDLITE_STD = (127.5, 127.5, 127.5)

#: torchvision ``ssdlite320_mobilenet_v3_large``'s post-processing (``ssdlite.py`` defaults) in our argument names.
TORCHVISION_SSDLITE_POSTPROCESS = {"score_thresh": 0.001, "nms_thresh": 0.55, "pre_nms_top_k": 300, "top_k": 300}

_SSDLITE_PREFIXES = {
    "backbone.extras.": "backbone.extra.",
    "head.conf.": "head.classification_head.module_list.",
    "head.loc.": "head.regression_head.module_list.",
}


def _torchvision_ssdlite_key(key: str, c4: int) -> str:
    """torchvision ``ssdlite320_mobilenet_v3_large``'s name for our ``ssdlite320_mobilenet_v3`` key (see the module
    docstring); ``c4`` is the index of the bneck whose expansion is C4 (13)."""
    parts = key.split(".")
    if parts[:2] == ["backbone", "features"]:
        i, rest = int(parts[2]), parts[3:]
        if i != c4:  # before C4's bneck: in features.0 at the same index; after it: features.1 from index 1 on
            return ".".join(["backbone.features", *(("0", str(i)) if i < c4 else ("1", str(i - c4))), *rest])
        m = int(rest[1])  # rest = ["block", m, ...]: the expansion ends features.0, the slice block[1:] keeps m
        return ".".join(["backbone.features", *(("0", str(c4)) if m == 0 else ("1", "0", str(m))), *rest[2:]])
    for ours, theirs in _SSDLITE_PREFIXES.items():
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    raise ValueError(f"{key!r} is not a key of ssdlite320_mobilenet_v3")


def convert_torchvision_ssdlite320(
    state_dict: Mapping[str, Tensor], *, num_classes: int | None = None, classes: Sequence[str] | None = None
) -> Converted:
    """Convert torchvision's ``ssdlite320_mobilenet_v3_large`` state dict (module docstring: keys, preprocessing).

    Args:
        state_dict: torchvision's keys.
        num_classes: expected classes including the background (None: read from the classification head; 91
            for torchvision's COCO weights).
        classes: foreground names (None: :data:`TORCHVISION_COCO_CLASSES` for 91 classes).
    """
    from multibox.models import create_model
    from multibox.models.mobilenet import SSDLITE320

    what = "torchvision ssdlite320_mobilenet_v3_large"
    sd = _strip_module(state_dict)
    boxes = SSDLITE320.boxes_per_location[0]  # 6 on every map
    c = _classes_from_conf(sd, "head.classification_head.module_list.0.1.weight", boxes, what, num_classes)
    c5 = sd.get("backbone.features.1.3.0.weight")  # the last 1x1 conv: 960 outputs, or 480 with the reduced tail
    reduce_tail = not (isinstance(c5, Tensor) and c5.shape[0] == 960)
    mean, std = TORCHVISION_SSDLITE_MEAN, TORCHVISION_SSDLITE_STD
    model = create_model("ssdlite320_mobilenet_v3", c, reduce_tail=reduce_tail, mean=mean, std=std)
    expected = _shapes(model)
    mapping = {_torchvision_ssdlite_key(k, model.backbone.c4_index): k for k in expected}
    out = _remap(sd, mapping, expected, what)
    model.load_state_dict(out)
    if classes is None:
        classes = TORCHVISION_COCO_CLASSES if c == 91 else ()
    post = TORCHVISION_SSDLITE_POSTPROCESS
    notes = [
        f"{c} classes, reduce_tail={reduce_tail}, priors SSDLITE320 (torchvision's DefaultBoxGenerator), "
        f"RGB (x - 127.5) / 127.5",
        f"torchvision post-processes with score {post['score_thresh']}, {post['pre_nms_top_k']} candidates per class, "
        f"NMS {post['nms_thresh']}, {post['top_k']} detections (e.g. export --score {post['score_thresh']} --nms "
        f"{post['nms_thresh']} --pre-nms-top-k {post['pre_nms_top_k']} --top-k {post['top_k']})",
    ]
    return Converted(out, model, mean, std, list(classes), "torchvision", notes)


#: The torchvision detectors :func:`convert_torchvision` reads, each told by a key only its layout has.
TORCHVISION_MODELS: dict[str, tuple[str, Callable[..., Converted]]] = {
    "ssd300_vgg16": ("backbone.scale_weight", convert_torchvision_ssd300),
    "ssdlite320_mobilenet_v3_large": ("backbone.features.0.0.0.weight", convert_torchvision_ssdlite320),
}


def convert_torchvision(
    state_dict: Mapping[str, Tensor], *, num_classes: int | None = None, classes: Sequence[str] | None = None
) -> Converted:
    """Convert a torchvision SSD (:data:`TORCHVISION_MODELS`), the model told by its keys.

    Raises:
        ConversionError: the keys are of neither model (the message names both and shows some keys).
    """
    sd = _strip_module(state_dict)
    for marker, converter in TORCHVISION_MODELS.values():
        if marker in sd:
            return converter(sd, num_classes=num_classes, classes=classes)
    models = ", ".join(f"{name} (has {marker})" for name, (marker, _) in TORCHVISION_MODELS.items())
    raise ConversionError(f"not a torchvision SSD this converter knows: {models}; {_keys_seen(sd)}")


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
    sd = _strip_module(state_dict)
    if "features.1.weight" in sd:
        raise ConversionError(f"{what}: features.1 has weights: this is VGG16-BN, whose layout differs; use VGG16")
    expected = _base_shapes()
    mapping = {
        f"features.{i}.{p}": f"backbone.features.{i}.{p}" for i in VGG_CONV_INDICES[:13] for p in ("weight", "bias")
    }
    fc = {"classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,)}
    fc.update({"classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,)})
    for key, shape in fc.items():
        mapping[key] = key
        expected[key] = shape
    out = _remap(sd, mapping, expected, what, ignore=lambda k: k.startswith("classifier.6."))
    w6, b6 = reduce_fc6(out.pop("classifier.0.weight"), out.pop("classifier.0.bias"))
    w7, b7 = reduce_fc7(out.pop("classifier.3.weight"), out.pop("classifier.3.bias"))
    out.update({"backbone.features.31.weight": w6, "backbone.features.31.bias": b6})
    out.update({"backbone.features.33.weight": w7, "backbone.features.33.bias": b7})
    note = f"VGG16 base with reduced fc6/fc7; needs mean={IMAGENET_MEAN}, std={IMAGENET_STD} (model.kwargs)"
    return Converted(out, None, IMAGENET_MEAN, IMAGENET_STD, [], "imagenet-vgg16", [note])


#: Layout name -> converter taking a state dict (and the keyword arguments it supports).
CONVERTERS: dict[str, Callable[..., Converted]] = {
    "ssd.pytorch": convert_ssd_pytorch,
    "ssd.pytorch-base": convert_ssd_pytorch_base,
    "torchvision": convert_torchvision,
    "imagenet-vgg16": convert_imagenet_vgg16,
}

#: Layout name -> what it is, one line each (shown when a layout is not recognised).
LAYOUTS: dict[str, str] = {
    "ssd.pytorch": "amdegroot/ssd.pytorch SSD300 (vgg.N, L2Norm.weight, extras.N, loc.N, conf.N)",
    "ssd.pytorch-base": "ssd.pytorch's VGG16 base vgg16_reducedfc.pth (N.weight, N.bias for N = 0 .. 33)",
    "torchvision": "torchvision ssd300_vgg16 or ssdlite320_mobilenet_v3_large (backbone.*, head.classification_head.*, "
    "head.regression_head.*)",
    "imagenet-vgg16": "a torchvision-layout ImageNet VGG16 classifier (features.N, classifier.0/3/6)",
}


def _keys_seen(keys: Iterable[str], count: int = 6) -> str:
    """``"saw N keys: [first few sorted]"`` for error messages."""
    names = sorted(keys)
    return f"saw {len(names)} keys: {names[:count]}{' ...' if len(names) > count else ''}"


def _supported() -> str:
    return "supported layouts (--from):\n" + "\n".join(f"  {name}: {what}" for name, what in LAYOUTS.items())


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file, read safely: a plain state dict, or one under ``model``/``state_dict``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is truncated or not a torch/safetensors file, or holds no state dict.
    """
    from multibox.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    for key in ("model", "state_dict", "net"):
        if isinstance(ckpt.get(key), Mapping):
            ckpt = ckpt[key]
            break
    sd = {k: v for k, v in ckpt.items() if isinstance(v, Tensor)}
    if not sd:
        raise ValueError(f"{path}: holds no tensors (keys: {sorted(ckpt)[:8]})")
    return sd


def _guess_layout(keys: set[str]) -> str | None:
    """The layout whose marker keys ``keys`` (without a ``module.`` prefix) has, or None."""
    if "vgg.0.weight" in keys and any(k.startswith("conf.") for k in keys):
        return "ssd.pytorch"
    if "0.weight" in keys and "33.weight" in keys:
        return "ssd.pytorch-base"
    if "backbone.scale_weight" in keys or any(k.startswith("head.classification_head.") for k in keys):
        return "torchvision"
    if "features.0.weight" in keys and "classifier.0.weight" in keys:
        return "imagenet-vgg16"
    return None


def detect_layout(sd: Mapping[str, Tensor]) -> str:
    """Guess the layout of a state dict from its keys (a name of :data:`CONVERTERS`).

    Raises:
        ConversionError: no known layout fits; the message lists the supported layouts and shows some keys.
    """
    keys = {k[len("module.") :] if k.startswith("module.") else k for k in sd}
    layout = _guess_layout(keys)
    if layout is None:
        raise _unrecognised(keys)
    return layout


def _is_multibox(keys: set[str]) -> bool:
    return "model_args" in keys or any(k.startswith("head.conf.") for k in keys)


def _unrecognised(keys: set[str]) -> ConversionError:
    if _is_multibox(keys):
        return ConversionError("this is already a multibox state dict; nothing to convert")
    return ConversionError(f"unknown weights layout ({_keys_seen(keys)}); {_supported()}")


def _convert(sd: Mapping[str, Tensor], layout: str | None, source: str | Path, **kwargs: Any) -> Converted:
    """Run the converter of ``layout`` (None: guessed) on ``sd`` read from ``source``; errors name the file and,
    where the keys are not of the layout asked for, list the supported layouts."""
    keys = {k[len("module.") :] if k.startswith("module.") else k for k in sd}
    guess = _guess_layout(keys)
    layout = layout or guess
    if layout is None:
        raise ConversionError(f"{source}: {_unrecognised(keys)}")
    if layout not in CONVERTERS:
        raise ValueError(f"unknown layout {layout!r}; {_supported()}")
    converter = CONVERTERS[layout]
    options = {k: v for k, v in kwargs.items() if v is not None}
    unknown = sorted(set(options) - set(inspect.signature(converter).parameters))
    if unknown:
        raise ValueError(f"layout {layout!r} takes no option(s) {unknown}")
    try:
        return converter(sd, **options)
    except ConversionError as e:
        if guess == layout:  # the right layout, with missing or misshapen tensors: the converter's message
            raise ConversionError(f"{source}: {e}") from e
        if guess is None:
            if _is_multibox(keys):
                raise ConversionError(f"{source}: {_unrecognised(keys)}") from e
            seen = "" if _keys_seen(keys) in str(e) else f"; {_keys_seen(keys)}"
            raise ConversionError(f"{source}: not {layout!r} weights ({e}{seen}); {_supported()}") from e
        raise ConversionError(f"{source}: not {layout!r} weights ({e}); its keys look like {guess!r}") from e


def save_safetensors_checkpoint(ckpt: Mapping[str, Any], path: str | Path) -> Path:
    """Save a multibox checkpoint's weights as safetensors, with ``model_args``, ``classes`` and ``preprocess`` as
    JSON metadata, so that :func:`multibox.engine.checkpoint.load_checkpoint` gives them back (training state such
    as the optimizer is not kept).

    Raises:
        ValueError: ``ckpt`` has no ``model`` state dict.
    """
    from multibox.engine.checkpoint import save_safetensors

    state = ckpt.get("model")
    if not isinstance(state, Mapping) or not state:
        raise ValueError("not a multibox checkpoint: it has no 'model' state dict")
    meta = {k: json.dumps(ckpt[k]) for k in ("model_args", "classes", "preprocess", "source") if k in ckpt}
    return save_safetensors(path, dict(state), metadata=meta)


def convert_file(
    source: str | Path,
    out: str | Path,
    *,
    layout: str | None = None,
    to_safetensors: bool = False,
    **kwargs: Any,
) -> str:
    """Convert a weights file and write a multibox checkpoint (``.pt``, or ``.safetensors`` by suffix).

    Args:
        source: the file to read (safely: tensors and plain values only).
        out: the checkpoint to write.
        layout: a name of :data:`CONVERTERS`; None guesses it from the keys (:func:`detect_layout`).
        to_safetensors: instead of converting, save ``source`` (a multibox checkpoint) as safetensors.
        **kwargs: passed to the converter (``num_classes``, ``classes``, ``input_order``, ...) when not None.

    Returns:
        A one-line summary for the CLI.
    """
    from multibox.engine.checkpoint import load_checkpoint, save_checkpoint

    out = Path(out)
    if to_safetensors:
        ckpt = load_checkpoint(source)
        if "model_args" not in ckpt:
            raise ValueError(f"{source}: not a multibox checkpoint (no model_args); convert it first")
        save_safetensors_checkpoint(ckpt, out)
        return f"{source} -> {out} (safetensors, {len(ckpt['model'])} tensors)"
    converted = _convert(load_state_dict_file(source), layout, source, **kwargs)
    ckpt = converted.checkpoint()
    if out.suffix == ".safetensors":
        save_safetensors_checkpoint(ckpt, out)
    else:
        save_checkpoint(out, ckpt)
    return f"{source} ({converted.source}) -> {out}: {'; '.join(converted.notes)}"
