"""multibox: Single Shot MultiBox Detectors in plain PyTorch."""

from multibox.models import SSD, create_model, list_models
from multibox.structures import Detections, Prediction

__all__ = ["SSD", "Detections", "Prediction", "create_model", "list_models"]
__version__ = "0.1.0"
