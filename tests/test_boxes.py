import math

import pytest
import torch

from multibox.boxes import (
    box_area,
    box_iou,
    clip_boxes,
    cxcywh_to_xyxy,
    decode,
    encode,
    is_valid_box,
    xyxy_to_cxcywh,
)


def brute_iou(a, b):
    out = torch.zeros(len(a), len(b), dtype=torch.float64)
    for i, (ax1, ay1, ax2, ay2) in enumerate(a.tolist()):
        for j, (bx1, by1, bx2, by2) in enumerate(b.tolist()):
            iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
            ih = max(0.0, min(ay2, by2) - max(ay1, by1))
            inter = iw * ih
            union = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1) + max(0.0, bx2 - bx1) * max(0.0, by2 - by1) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g)
    wh = torch.rand(n, 2, generator=g) * 0.5
    return torch.cat((xy, xy + wh), 1)


def test_conversions_by_hand():
    xyxy = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert xyxy_to_cxcywh(xyxy).tolist() == [[20.0, 40.0, 20.0, 40.0]]
    assert cxcywh_to_xyxy(torch.tensor([[20.0, 40.0, 20.0, 40.0]])).tolist() == [[10.0, 20.0, 30.0, 60.0]]
    assert box_area(xyxy).tolist() == [800.0]
    assert box_area(torch.tensor([[5.0, 5.0, 1.0, 9.0]])).tolist() == [0.0]  # inverted box


def test_iou_hand_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [2.0, 2.0, 3.0, 3.0], [0.0, 0.0, 1.0, 2.0]])
    # overlap 1 / union 7; identical; touching corner; half contained (2 / 4)
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0, 0.5]]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_matches_brute_force(seed):
    a, b = random_boxes(17, seed), random_boxes(23, seed + 100)
    torch.testing.assert_close(box_iou(a, b).double(), brute_iou(a, b), atol=1e-6, rtol=0)


def test_iou_batched_and_empty():
    a, b = random_boxes(5, 3), random_boxes(7, 4)
    batched = box_iou(torch.stack((a, a)), b)
    assert batched.shape == (2, 5, 7)
    torch.testing.assert_close(batched[1], box_iou(a, b))
    assert box_iou(torch.zeros(0, 4), b).shape == (0, 7)
    assert box_iou(a, torch.zeros(0, 4)).shape == (5, 0)
    assert box_iou(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 0)


def test_iou_degenerate_boxes_are_zero_not_nan():
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    iou = box_iou(point, torch.cat((point, torch.tensor([[0.0, 0.0, 2.0, 2.0]]))))
    assert iou.tolist() == [[0.0, 0.0]]


def test_is_valid_and_clip():
    boxes = torch.tensor([[0, 0, 1, 1], [1, 0, 1, 1], [0, 0, float("nan"), 1], [0.5, 0.2, 0.1, 0.9]])
    assert is_valid_box(boxes).tolist() == [True, False, False, False]
    clipped = clip_boxes(torch.tensor([[-5.0, 3.0, 120.0, 90.0]]), width=100, height=80)
    assert clipped.tolist() == [[0.0, 3.0, 100.0, 80.0]]


def test_encode_by_hand():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    gt = torch.tensor([[0.42, 0.34, 0.62, 0.74]])  # cx 0.52, cy 0.54, w 0.2, h 0.4
    t = encode(gt, prior)
    expected = [0.02 / (0.2 * 0.1), 0.04 / (0.4 * 0.1), 0.0, 0.0]
    torch.testing.assert_close(t, torch.tensor([expected]))
    gt2 = torch.tensor([[0.3, 0.1, 0.7, 0.9]])  # w 0.4 = 2x, h 0.8 = 2x
    torch.testing.assert_close(encode(gt2, prior)[0, 2:], torch.tensor([math.log(2) / 0.2] * 2))


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    priors = torch.cat((torch.rand(50, 2, generator=g), torch.rand(50, 2, generator=g) * 0.5 + 0.05), 1)
    gt = random_boxes(50, 7) + torch.tensor([0, 0, 0.01, 0.01])
    torch.testing.assert_close(decode(encode(gt, priors), priors), gt, atol=1e-5, rtol=0)
    deltas = torch.randn(3, 50, 4, generator=g)
    torch.testing.assert_close(encode(decode(deltas, priors), priors), deltas, atol=1e-4, rtol=0)


def test_decode_clamps_exp():
    priors = torch.tensor([[0.5, 0.5, 0.1, 0.1]])
    out = decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), priors)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 2] - out[0, 0], torch.tensor(0.1 * 1000 / 16))
