"""Detection metrics: PASCAL VOC AP (11-point and area), COCO AP via pycocotools, PR-curve plots."""

from multibox.metrics.voc import VOCResult, average_precision, voc_ap

__all__ = ["VOCResult", "average_precision", "voc_ap"]
