"""Detection metrics: PASCAL VOC AP (11-point and area) and COCO AP via pycocotools.
"""

from multibox.metrics.coco import COCO_STAT_NAMES, category_id_to_label, coco_evaluate, to_coco_results
from multibox.metrics.voc import VOCResult, average_precision, voc_ap

__all__ = [
    "COCO_STAT_NAMES",
    "VOCResult",
    "average_precision",
    "category_id_to_label",
    "coco_evaluate",
    "to_coco_results",
    "voc_ap",
]
