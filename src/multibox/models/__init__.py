"""SSD models: the meta-architecture, backbones and the registry of builders.

Importing this package registers the builders (``ssd300_vgg16``, ``ssd512_vgg16``, ``ssd_tiny``,
``ssdlite320_mobilenet_v3``, ``ssd300_resnet50``, ``ssdlite320_efficientnet_lite0``, ``ssdlite352_efficientnet_lite1``,
``ssdlite384_efficientnet_lite2``).
"""

from multibox.models import mobilenet, resnet, ssdlite_efficientnet, tiny, vgg  # noqa: F401  (registers the builders)
from multibox.models.heads import MultiboxHead
from multibox.models.ssd import SSD, Preprocess
from multibox.models.zoo import create_model, create_model_from_config, list_models, register_model

__all__ = [
    "SSD",
    "MultiboxHead",
    "Preprocess",
    "create_model",
    "create_model_from_config",
    "list_models",
    "register_model",
]
