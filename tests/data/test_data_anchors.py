"""anchor_coverage and suggest_priors on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from multibox.boxes import xyxy_to_cxcywh
from multibox.data.anchors import anchor_coverage, suggest_priors
from multibox.priors import VOC300


def test_coverage_by_hand() -> None:
    priors = xyxy_to_cxcywh(torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]))
    boxes = [
        torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.55, 0.55, 1.0, 1.0]]),  # IoU 1 and 0.81
        torch.tensor([[0.0, 0.6, 0.05, 0.65]]),  # far from both priors: IoU 0
        torch.zeros(0, 4),  # an image without boxes
    ]
    labels = [torch.tensor([1, 2]), torch.tensor([2]), torch.zeros(0, dtype=torch.int64)]
    report = anchor_coverage(boxes, labels, priors, ["a", "b"])
    assert report.num_boxes == 3 and report.covered == pytest.approx(2 / 3)
    torch.testing.assert_close(report.best_iou, torch.tensor([1.0, 0.81, 0.0]))
    assert report.per_class == {"a": (1, 1.0), "b": (2, 0.5)}
    assert report.per_size["small"] == (1, 0.0) and report.per_size["large"] == (2, 1.0)
    assert report.per_size["medium"][0] == 0 and math.isnan(report.per_size["medium"][1])
    assert report.histogram == [1, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert report.best_iou_quantiles[0.5] == pytest.approx(0.81)
    text = str(report)
    assert "66.7% of 3 boxes" in text and "a 100.0% (1)" in text


def test_coverage_with_real_priors() -> None:
    priors = VOC300.generate(300, [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)])
    # A box equal to the large square prior of the 1x1 map (min size 264 px) is covered.
    box = torch.tensor([[0.5 - 0.44, 0.5 - 0.44, 0.5 + 0.44, 0.5 + 0.44]])
    report = anchor_coverage([box], [torch.tensor([1])], priors, ["x"])
    assert report.covered == 1.0 and report.best_iou[0] > 0.99


def test_suggest_priors_recovers_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = torch.tensor([[0.1, 0.2], [0.4, 0.2], [0.3, 0.3]])
    wh = shapes.repeat(50, 1) * (1 + 0.03 * torch.randn(150, 2, generator=g))
    centre = torch.rand(150, 2, generator=g) * 0.4 + 0.3
    boxes = torch.cat((centre - wh / 2, centre + wh / 2), dim=1)
    suggestion = suggest_priors([boxes[:70], boxes[70:]], k=3, num_maps=3)
    torch.testing.assert_close(
        suggestion.centroids, torch.tensor([[0.1, 0.2], [0.4, 0.2], [0.3, 0.3]]), atol=0.01, rtol=0
    )
    assert suggestion.mean_iou > 0.9
    assert suggestion.aspect_ratios == [2.0]  # 0.1 x 0.2 and 0.4 x 0.2; the square adds nothing
    assert len(suggestion.min_sizes) == 3 and suggestion.min_sizes == sorted(suggestion.min_sizes)
    assert suggestion.max_sizes[:-1] == suggestion.min_sizes[1:]
    assert "mean IoU" in str(suggestion)
    with pytest.raises(ValueError, match="at least k=3"):
        suggest_priors([boxes[:2]], k=3)
