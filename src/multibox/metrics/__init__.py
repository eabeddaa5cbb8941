"""Detection metrics: PASCAL VOC AP (11-point and area), COCO AP via pycocotools, PR-curve plots.

pycocotools and matplotlib are optional (``pip install multibox[eval]``) and imported only when used.
"""

from multibox.metrics.coco import COCO_STAT_NAMES, category_id_to_label, coco_evaluate, to_coco_results
from multibox.metrics.plot import plot_pr_curves
from multibox.metrics.voc import VOCResult, average_precision, voc_ap

__all__ = [
    "COCO_STAT_NAMES",
    "VOCResult",
    "average_precision",
    "category_id_to_label",
    "coco_evaluate",
    "plot_pr_curves",
    "to_coco_results",
    "voc_ap",
]
