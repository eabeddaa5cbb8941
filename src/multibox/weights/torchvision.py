"""The torchvision converters: its ``ssd300_vgg16`` and ``ssdlite320_mobilenet_v3_large`` into multibox.

Layouts (``--from`` of ``multibox convert``):

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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch import Tensor

from multibox.priors import COCO300
from multibox.weights.rename import (
    ConversionError,
    Converted,
    classes_from_conf,
    keys_seen,
    remap_state_dict,
    state_shapes,
    strip_module_prefix,
)
from multibox.weights.ssd_pytorch import COCO80_CLASSES, VGG_CONV_INDICES, build_ssd300

__all__ = [
    "TORCHVISION300",
    "TORCHVISION_COCO_CLASSES",
    "TORCHVISION_MODELS",
    "TORCHVISION_SSDLITE_MEAN",
    "TORCHVISION_SSDLITE_POSTPROCESS",
    "TORCHVISION_SSDLITE_STD",
    "TORCHVISION_SSD_MEAN",
    "convert_torchvision",
    "convert_torchvision_ssd300",
    "convert_torchvision_ssdlite320",
]

_COCO_UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
#: torchvision's 90 foreground labels: label ``i`` is COCO category id ``i``; the 10 unused ids are ``"N/A"``.
TORCHVISION_COCO_CLASSES = tuple(
    "N/A" if i in _COCO_UNUSED_IDS else COCO80_CLASSES[i - 1 - sum(u < i for u in _COCO_UNUSED_IDS)]
    for i in range(1, 91)
)


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
    sd = strip_module_prefix(state_dict)
    if any(k.startswith("backbone.extra.5.") for k in sd):
        raise ConversionError(f"{what}: found backbone.extra.5 (SSD512's conv12); only SSD300 is supported")
    c = classes_from_conf(sd, "head.classification_head.module_list.0.weight", 4, what, num_classes)
    mean = tuple(255.0 * m for m in TORCHVISION_SSD_MEAN)
    model = build_ssd300(c, TORCHVISION300, mean, (1.0, 1.0, 1.0))
    out = remap_state_dict(sd, _torchvision_mapping(), state_shapes(model), what)
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
    sd = strip_module_prefix(state_dict)
    boxes = SSDLITE320.boxes_per_location[0]  # 6 on every map
    c = classes_from_conf(sd, "head.classification_head.module_list.0.1.weight", boxes, what, num_classes)
    c5 = sd.get("backbone.features.1.3.0.weight")  # the last 1x1 conv: 960 outputs, or 480 with the reduced tail
    reduce_tail = not (isinstance(c5, Tensor) and c5.shape[0] == 960)
    mean, std = TORCHVISION_SSDLITE_MEAN, TORCHVISION_SSDLITE_STD
    model = create_model("ssdlite320_mobilenet_v3", c, reduce_tail=reduce_tail, mean=mean, std=std)
    expected = state_shapes(model)
    mapping = {_torchvision_ssdlite_key(k, model.backbone.c4_index): k for k in expected}
    out = remap_state_dict(sd, mapping, expected, what)
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
    sd = strip_module_prefix(state_dict)
    for marker, converter in TORCHVISION_MODELS.values():
        if marker in sd:
            return converter(sd, num_classes=num_classes, classes=classes)
    models = ", ".join(f"{name} (has {marker})" for name, (marker, _) in TORCHVISION_MODELS.items())
    raise ConversionError(f"not a torchvision SSD this converter knows: {models}; {keys_seen(sd)}")
