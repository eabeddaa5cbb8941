"""multibox: Single Shot MultiBox Detectors in plain PyTorch."""

from multibox.config import load_config
from multibox.loss import multibox_loss
from multibox.models import SSD, create_model, list_models
from multibox.postprocess import postprocess
from multibox.structures import Detections, Prediction

__all__ = [
    "SSD",
    "Detections",
    "Prediction",
    "create_model",
    "list_models",
    "load_config",
    "multibox_loss",
    "postprocess",
]
__version__ = "0.1.0"
