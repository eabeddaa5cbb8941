import pytest
import torch

from multibox.models.heads import MultiboxHead, PredictionHead, flatten_predictions
from multibox.models.mobilenet import SSDLiteHead
from multibox.preprocess import to_hw


def test_flatten_predictions_by_hand():
    # 2 priors per cell, K=3 values each, a 1x2 map: channel a*K + k at (row 0, column j)
    y = torch.arange(12.0).reshape(1, 6, 1, 2)  # y[0, ch, 0, j] = 2 ch + j
    out = flatten_predictions(y, 3)
    assert out.shape == (1, 4, 3)
    # order: cell (0,0) prior 0, prior 1, then cell (0,1) prior 0, prior 1
    assert out[0].tolist() == [[0, 2, 4], [6, 8, 10], [1, 3, 5], [7, 9, 11]]


@pytest.mark.parametrize("head_cls", [MultiboxHead, SSDLiteHead])
def test_heads_share_the_base_and_its_checks(head_cls):
    torch.manual_seed(0)
    head = head_cls([8, 4], [2, 3], 5).eval()
    assert isinstance(head, PredictionHead) and [type(m) for m in (head.loc, head.conf)] == [torch.nn.ModuleList] * 2
    feats = [torch.randn(2, 8, 3, 3), torch.randn(2, 4, 1, 2)]
    pred = head(feats)
    assert pred.cls_logits.shape == (2, 3 * 3 * 2 + 1 * 2 * 3, 5) and pred.box_deltas.shape == (2, 24, 4)
    with torch.no_grad():  # the second map's first prior comes right after the first map's 18
        first = flatten_predictions(head.conf[1](feats[1]), 5)[:, 0]
    torch.testing.assert_close(pred.cls_logits[:, 18], first)
    with pytest.raises(ValueError, match="2 source maps but 1 boxes-per-location"):
        head_cls([8, 4], [2], 5)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        head_cls([8], [2], 1)
    with pytest.raises(ValueError, match="2 predictors but got 1 feature maps"):
        head(feats[:1])


def test_to_hw():
    assert to_hw(300) == (300, 300) and to_hw((240, 320)) == (240, 320) and to_hw([1, 1]) == (1, 1)
    for bad in (0, True, (300,), (300, 0), (300.0, 300), "300"):
        with pytest.raises(ValueError, match="image_size"):
            to_hw(bad)
