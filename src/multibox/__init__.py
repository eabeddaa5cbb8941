"""multibox: Single Shot MultiBox Detectors in plain PyTorch."""

from multibox.structures import Detections, Prediction

__all__ = ["Detections", "Prediction"]
__version__ = "0.1.0"
