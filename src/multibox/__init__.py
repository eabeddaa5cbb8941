"""multibox: Single Shot MultiBox Detectors in plain PyTorch."""

try:
    from multibox.config import load_config
    from multibox.export import export_onnx
    from multibox.loss import multibox_loss
    from multibox.models import SSD, create_model, list_models
    from multibox.postprocess import postprocess
    from multibox.structures import Detections, Prediction
except ModuleNotFoundError as e:  # pragma: no cover - only without torch
    # multibox.onnx_runtime (``multibox detect --onnx``) runs on onnxruntime, NumPy and Pillow alone.
    if e.name != "torch":
        raise

__all__ = [
    "SSD",
    "Detections",
    "Prediction",
    "create_model",
    "export_onnx",
    "list_models",
    "load_config",
    "multibox_loss",
    "postprocess",
]
__version__ = "0.1.0"
