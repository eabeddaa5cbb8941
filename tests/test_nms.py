import pytest
import torch

from multibox.boxes import box_iou
from multibox.nms import batched_nms, nms, nms_padded, suppression_matrix


def greedy_reference(boxes, scores, thr):
    """The textbook loop: take the best remaining box, drop everything overlapping it by more than thr."""
    iou = box_iou(boxes, boxes).tolist()  # box_iou itself is checked against a double loop in test_boxes
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        order = [j for j in order if iou[i][j] <= thr]
    return keep


def random_boxes(n, g):
    xy = torch.rand(n, 2, generator=g) * 0.8
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.02
    return torch.cat((xy, xy + wh), 1)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("thr", [0.3, 0.45, 0.7])
def test_nms_equals_greedy_loop(seed, thr):
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(120, g)
    scores = torch.rand(120, generator=g)
    assert nms(boxes, scores, thr).tolist() == greedy_reference(boxes, scores, thr)


def test_nms_chain_needs_exact_greedy():
    # A suppresses B, B would suppress C, but B is gone so C survives: a one-shot "suppressed by any
    # higher-scored box" rule would wrongly drop C.
    boxes = torch.tensor([[0.0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.3).tolist() == [0, 2]
    assert greedy_reference(boxes, scores, 0.3) == [0, 2]


def test_nms_threshold_is_strict_and_empty():
    boxes = torch.tensor([[0.0, 0, 2, 2], [1, 0, 3, 2]])  # IoU exactly 1/3
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 1 / 3).tolist() == [0, 1]
    assert nms(boxes, scores, 0.33).tolist() == [0]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []


@pytest.mark.parametrize("seed", range(4))
def test_batched_nms_equals_per_class_loop(seed):
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(200, g)
    scores = torch.rand(200, generator=g)
    idxs = torch.randint(0, 5, (200,), generator=g)
    expected = []
    for c in range(5):
        members = (idxs == c).nonzero().squeeze(1)
        expected += members[greedy_reference(boxes[members], scores[members], 0.5)].tolist()
    expected.sort(key=lambda i: -float(scores[i]))
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == expected


def test_nms_padded_ignores_invalid_candidates():
    boxes = torch.tensor([[[0.0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]]])
    valid = torch.tensor([[False, True, True]])  # the invalid best box must not suppress the others
    assert nms_padded(boxes, valid, 0.5).tolist() == [[False, True, False]]
    assert nms_padded(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool), 0.5).shape == (2, 0)


def test_nms_padded_groups_of_mixed_lengths_equal_per_group_loop():
    # Groups whose valid prefixes fall into different internal buckets (1, 5, 20, 60, 150 candidates).
    g = torch.Generator().manual_seed(11)
    lengths = [1, 5, 20, 60, 150, 0]
    k = 150
    boxes = torch.stack([random_boxes(k, g) for _ in lengths])
    valid = torch.zeros(len(lengths), k, dtype=torch.bool)
    for i, n in enumerate(lengths):
        valid[i, :n] = True
    valid[3, 7] = False  # a hole inside a prefix
    keep = nms_padded(boxes, valid, 0.4)
    for i in range(len(lengths)):
        members = valid[i].nonzero().squeeze(1)
        scores = -members.float()  # sorted order = index order
        expected = members[greedy_reference(boxes[i][members], scores, 0.4)].tolist()
        assert keep[i].nonzero().squeeze(1).tolist() == sorted(expected)


@pytest.mark.parametrize("thr", [0.3, 0.5])
def test_suppression_matrix_equals_brute_force_iou(thr):
    g = torch.Generator().manual_seed(3)
    boxes = torch.stack([random_boxes(13, g) * 300 for _ in range(3)])  # pixel units, K not a multiple of 8
    boxes[0, 4] = boxes[0, 3]  # an identical pair
    valid = torch.rand(3, 13, generator=g) > 0.2
    sup = suppression_matrix(boxes, thr, valid=valid, columns=16)
    assert sup.shape == (3, 13, 16) and not sup[..., 13:].any()
    for n in range(3):
        iou = box_iou(boxes[n], boxes[n])
        for i in range(13):
            for j in range(13):
                expected = bool(j < i and valid[n, j] and iou[i, j] > thr)
                assert bool(sup[n, i, j]) == expected, (n, i, j)
    assert bool(sup[0, 4, 3])
    assert torch.equal(suppression_matrix(boxes, thr) & valid[:, None, :], sup[..., :13])


def test_degenerate_boxes_suppress_nothing_and_are_not_suppressed():
    # Zero-area boxes have IoU 0/0 with each other: like torchvision (NaN > t is false), neither suppresses.
    boxes = torch.tensor([[5.0, 5, 5, 9], [5, 5, 5, 9], [0, 0, 10, 10], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1, 2]


@pytest.mark.parametrize("seed", range(3))
def test_long_clustered_groups_equal_greedy_loop(seed):
    # Groups longer than the last dense bucket go through the blocked solver: candidates drawn around three objects
    # (most suppressed by the first block) mixed with scattered ones, invalid holes, and 170 = not a block multiple.
    g = torch.Generator().manual_seed(seed)
    k = 170
    centres = torch.rand(3, 2, generator=g) * 0.6 + 0.2
    pick = torch.randint(0, 4, (2, k), generator=g)
    xy = torch.where((pick < 3)[..., None], centres[pick.clamp(max=2)] + torch.randn(2, k, 2, generator=g) * 0.01,
                     torch.rand(2, k, 2, generator=g))  # fmt: skip
    boxes = torch.cat((xy - 0.1, xy + 0.1), -1)
    valid = torch.rand(2, k, generator=g) > 0.1
    keep = nms_padded(boxes, valid, 0.45)
    for i in range(2):
        members = valid[i].nonzero().squeeze(1)
        expected = members[greedy_reference(boxes[i][members], -members.float(), 0.45)].tolist()
        assert keep[i].nonzero().squeeze(1).tolist() == sorted(expected)
