"""Weights: files (``.pt``, ``.safetensors``), the checkpoint format, converters from other libraries, ImageNet
backbone loaders and the key renamer they share.

Modules: ``io`` (reading and writing files), ``checkpoint`` (the format, defined once), ``rename`` (key and shape
checked renaming), ``ssd_pytorch``, ``torchvision`` and ``imagenet`` (the layouts), ``convert`` (``multibox convert``:
the layout told by the keys). Every public name is importable from here; the submodules load on first use, so that
a network module can use the renamer without loading the converters (which build networks).
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the submodule defining it.
_WHERE = {
    "CHECKPOINT_VERSION": "checkpoint",
    "COCO80_CLASSES": "ssd_pytorch",
    "CONVERTERS": "convert",
    "Checkpoint": "checkpoint",
    "CheckpointError": "io",
    "ConversionError": "rename",
    "Converted": "rename",
    "LAYOUTS": "convert",
    "LoadReport": "rename",
    "ORPHAN_AGE_S": "io",
    "TORCHVISION300": "torchvision",
    "TORCHVISION_COCO_CLASSES": "torchvision",
    "TORCHVISION_MODELS": "torchvision",
    "TORCHVISION_SSDLITE_MEAN": "torchvision",
    "TORCHVISION_SSDLITE_POSTPROCESS": "torchvision",
    "TORCHVISION_SSDLITE_STD": "torchvision",
    "TORCHVISION_SSD_MEAN": "torchvision",
    "VGG_CONV_INDICES": "ssd_pytorch",
    "build_ssd300": "ssd_pytorch",
    "classes_from_conf": "rename",
    "convert_file": "convert",
    "convert_imagenet_vgg16": "imagenet",
    "convert_ssd_pytorch": "ssd_pytorch",
    "convert_ssd_pytorch_base": "ssd_pytorch",
    "convert_torchvision": "torchvision",
    "convert_torchvision_ssd300": "torchvision",
    "convert_torchvision_ssdlite320": "torchvision",
    "detect_layout": "convert",
    "fc_reduced_indices": "imagenet",
    "flip_input_channels": "rename",
    "keys_seen": "rename",
    "load_checkpoint": "io",
    "load_model_state": "checkpoint",
    "load_renamed": "rename",
    "load_safetensors": "io",
    "load_state_dict_file": "convert",
    "load_torchvision_mobilenet_v3_large": "imagenet",
    "load_torchvision_resnet50": "imagenet",
    "model_checkpoint": "checkpoint",
    "model_from_checkpoint": "checkpoint",
    "read_checkpoint": "checkpoint",
    "reduce_fc6": "imagenet",
    "reduce_fc7": "imagenet",
    "remap_state_dict": "rename",
    "save_checkpoint": "io",
    "save_safetensors": "io",
    "save_safetensors_checkpoint": "convert",
    "state_dict_sha256": "io",
    "state_shapes": "rename",
    "strip_module_prefix": "rename",
    "upgrade_checkpoint": "checkpoint",
    "verify_checkpoint": "io",
    "vgg_base_shapes": "ssd_pytorch",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'multibox.weights' has no attribute {name!r}")
    return getattr(importlib.import_module(f"multibox.weights.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return __all__
