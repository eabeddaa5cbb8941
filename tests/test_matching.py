import pytest
import torch

from multibox.matching import match, match_iou, pad_targets


def test_match_on_hand_made_iou_matrix():
    # 2 GTs x 5 priors.
    iou = torch.tensor(
        [
            [
                [0.10, 0.60, 0.20, 0.00, 0.30],  # GT0: best prior 1
                [0.40, 0.55, 0.45, 0.05, 0.20],  # GT1: best prior 1 too -> the later GT (1) wins prior 1
            ]
        ]
    )
    m = match_iou(iou, torch.tensor([[True, True]]), 0.5)
    # prior 0: best GT1 (0.40) negative; prior 1: forced to GT1 (later wins); prior 2: GT1 0.45 negative;
    # prior 3: GT1 0.05; prior 4: GT0 0.30
    assert m.gt_index.tolist() == [[1, 1, 1, 1, 0]]
    assert m.positive.tolist() == [[False, True, False, False, False]]
    torch.testing.assert_close(m.iou, torch.tensor([[0.40, 2.0, 0.45, 0.05, 0.30]]))


def test_forced_match_rescues_low_iou_gt():
    iou = torch.tensor([[[0.9, 0.7, 0.0], [0.1, 0.2, 0.3]]])  # GT1 never reaches 0.5
    m = match_iou(iou, torch.tensor([[True, True]]), 0.5)
    assert m.gt_index.tolist() == [[0, 0, 1]]
    assert m.positive.tolist() == [[True, True, True]]


def test_invalid_gts_are_never_matched_and_empty_batch():
    iou = torch.tensor([[[0.9, 0.8], [0.95, 0.1]]])
    m = match_iou(iou, torch.tensor([[True, False]]), 0.5)
    assert m.gt_index.tolist() == [[0, 0]] and m.positive.tolist() == [[True, True]]
    empty = match_iou(torch.zeros(3, 0, 7), torch.zeros(3, 0, dtype=torch.bool), 0.5)
    assert empty.positive.shape == (3, 7) and not empty.positive.any()


def test_batched_match_equals_per_image_loop():
    g = torch.Generator().manual_seed(0)
    priors = torch.cat((torch.rand(300, 2, generator=g), torch.rand(300, 2, generator=g) * 0.4 + 0.05), 1)
    targets = []
    for n in (3, 0, 5, 1):
        xy = torch.rand(n, 2, generator=g) * 0.6
        targets.append((torch.cat((xy, xy + 0.1 + torch.rand(n, 2, generator=g) * 0.3), 1), torch.ones(n)))
    boxes, _, valid = pad_targets(targets)
    batched = match(boxes, valid, priors)
    for i, (bx, _) in enumerate(targets):
        single = match(bx[None], torch.ones(1, len(bx), dtype=torch.bool), priors)
        assert torch.equal(batched.positive[i], single.positive[0])
        assert torch.equal(batched.gt_index[i][single.positive[0]], single.gt_index[0][single.positive[0]])


def test_pad_targets_marks_degenerate_boxes_invalid():
    boxes, labels, valid = pad_targets(
        [
            (torch.tensor([[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.3, 0.5]]), torch.tensor([1, 2])),
            (torch.zeros(0, 4), torch.zeros(0)),
        ]
    )
    assert boxes.shape == (2, 2, 4) and labels.tolist() == [[1, 2], [0, 0]]
    assert valid.tolist() == [[True, False], [False, False]]


def test_pad_targets_all_empty_and_bad_shapes():
    empty = (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    boxes, labels, valid = pad_targets([empty, empty])
    assert boxes.shape == (2, 1, 4) and labels.shape == (2, 1) and not valid.any()
    assert pad_targets([])[0].shape == (0, 1, 4)
    with pytest.raises(ValueError, match="target 1: expected boxes"):
        pad_targets([empty, (torch.zeros(2, 5), torch.zeros(2))])
    with pytest.raises(ValueError, match="target 0: expected boxes"):
        pad_targets([(torch.zeros(2, 4), torch.zeros(3))])
