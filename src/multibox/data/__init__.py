"""Detection data: dataset readers (VOC, COCO, synthetic shapes), validation, SSD augmentation and loading.

Items everywhere are ``(image uint8 Tensor[3, H, W] RGB, target dict)`` with ``target["boxes"]``
``Tensor[N, 4]`` float32 xyxy in pixels and ``target["labels"]`` ``Tensor[N]`` int64 in ``1..K``
(0 is the background). The transforms turn them into normalised images and [0, 1] boxes.
"""

from multibox.data.anchors import (
    AnchorCoverage,
    PriorSuggestion,
    anchor_coverage,
    normalized_targets,
    suggest_priors,
)
from multibox.data.checks import DatasetError, DatasetWarning, Issue
from multibox.data.coco import COCODetection
from multibox.data.image_io import read_image
from multibox.data.loader import apply_transform, build_loader, collate, sample_seed, seed_worker
from multibox.data.pipelines import eval_transform, train_decode_side, train_transform
from multibox.data.shapes import SHAPE_CLASSES, ShapesDataset, write_voc
from multibox.data.transforms import (
    Compose,
    Expand,
    HorizontalFlip,
    LimitSize,
    MinIoURandomCrop,
    Normalize,
    PhotometricDistort,
    Resize,
    ToFloat,
    ToRelative,
)
from multibox.data.validate import ScanReport, scan_dataset
from multibox.data.voc import VOC_CLASSES, VOCDetection
from multibox.data.zoom_crop import ZoomCropResize

__all__ = [
    "SHAPE_CLASSES",
    "VOC_CLASSES",
    "AnchorCoverage",
    "COCODetection",
    "Compose",
    "DatasetError",
    "DatasetWarning",
    "Expand",
    "HorizontalFlip",
    "Issue",
    "LimitSize",
    "MinIoURandomCrop",
    "Normalize",
    "PhotometricDistort",
    "PriorSuggestion",
    "Resize",
    "ScanReport",
    "ShapesDataset",
    "ToFloat",
    "ToRelative",
    "VOCDetection",
    "ZoomCropResize",
    "anchor_coverage",
    "apply_transform",
    "build_loader",
    "collate",
    "eval_transform",
    "normalized_targets",
    "read_image",
    "sample_seed",
    "scan_dataset",
    "seed_worker",
    "suggest_priors",
    "train_decode_side",
    "train_transform",
    "write_voc",
]
