"""``multibox convert``: weights files of other libraries into multibox checkpoints, the layout told by the keys.

Every converter maps the source keys one by one onto ours, checks that nothing is missing or left over and that
every shape fits (errors name the source key, the expected and the found shape), and loads the result into a
freshly built model, so that what comes out always loads. Files are read safely (``weights_only=True``). The
layouts: :mod:`multibox.weights.ssd_pytorch`, :mod:`multibox.weights.torchvision`, :mod:`multibox.weights.imagenet`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from multibox.weights.imagenet import convert_imagenet_vgg16
from multibox.weights.io import load_checkpoint, save_checkpoint, save_safetensors
from multibox.weights.rename import ConversionError, Converted, keys_seen
from multibox.weights.ssd_pytorch import convert_ssd_pytorch, convert_ssd_pytorch_base
from multibox.weights.torchvision import convert_torchvision

__all__ = [
    "CONVERTERS",
    "LAYOUTS",
    "convert_file",
    "detect_layout",
    "load_state_dict_file",
    "save_safetensors_checkpoint",
]


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


def _supported() -> str:
    return "supported layouts (--from):\n" + "\n".join(f"  {name}: {what}" for name, what in LAYOUTS.items())


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file, read safely: a plain state dict, or one under ``model``/``state_dict``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is truncated or not a torch/safetensors file, or holds no state dict.
    """

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
    return ConversionError(f"unknown weights layout ({keys_seen(keys)}); {_supported()}")


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
            seen = "" if keys_seen(keys) in str(e) else f"; {keys_seen(keys)}"
            raise ConversionError(f"{source}: not {layout!r} weights ({e}{seen}); {_supported()}") from e
        raise ConversionError(f"{source}: not {layout!r} weights ({e}); its keys look like {guess!r}") from e


def save_safetensors_checkpoint(ckpt: Mapping[str, Any], path: str | Path) -> Path:
    """Save a multibox checkpoint's weights as safetensors, with ``model_args``, ``classes`` and ``preprocess`` as
    JSON metadata, so that :func:`multibox.weights.io.load_checkpoint` gives them back (training state such
    as the optimizer is not kept).

    Raises:
        ValueError: ``ckpt`` has no ``model`` state dict.
    """

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
