"""multibox: Single Shot MultiBox Detectors in plain PyTorch."""

from multibox.loss import multibox_loss
from multibox.postprocess import postprocess
from multibox.structures import Detections, Prediction

__all__ = ["Detections", "Prediction", "multibox_loss", "postprocess"]
__version__ = "0.1.0"
