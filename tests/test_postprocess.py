import pytest
import torch

from multibox.boxes import box_iou, clip_boxes, decode
from multibox.postprocess import postprocess
from multibox.structures import Prediction


def reference_postprocess(pred, priors, score_thresh=0.01, nms_thresh=0.45, pre_nms_top_k=200, top_k=200):
    """Per image, per class, plain loops: ssd.pytorch's Detect followed by a global top-k."""
    out = []
    for i in range(pred.cls_logits.shape[0]):
        probs = torch.softmax(pred.cls_logits[i], -1)
        boxes = clip_boxes(decode(pred.box_deltas[i], priors))
        dets = []
        for c in range(1, probs.shape[1]):
            cand = [j for j in range(len(priors)) if probs[j, c] > score_thresh]
            cand.sort(key=lambda j: -float(probs[j, c]))
            cand = cand[:pre_nms_top_k]
            kept = []
            for j in cand:
                if all(float(box_iou(boxes[j : j + 1], boxes[k : k + 1])) <= nms_thresh for k in kept):
                    kept.append(j)
            dets += [(float(probs[j, c]), c, j) for j in kept]
        dets.sort(key=lambda d: -d[0])
        out.append(dets[:top_k])
    return out


def make_pred(seed, b=2, a=150, c=4, sharp=3.0):
    g = torch.Generator().manual_seed(seed)
    priors = torch.cat((torch.rand(a, 2, generator=g), torch.rand(a, 2, generator=g) * 0.3 + 0.05), 1)
    return Prediction(torch.randn(b, a, c, generator=g) * sharp, torch.randn(b, a, 4, generator=g) * 0.3), priors


@pytest.mark.parametrize(("seed", "kw"), [(0, {}), (1, {"pre_nms_top_k": 20, "top_k": 30}), (2, {"score_thresh": 0.3})])
def test_postprocess_equals_loop_reference(seed, kw):
    pred, priors = make_pred(seed)
    ours = postprocess(pred, priors, **kw)
    ref = reference_postprocess(pred, priors, **kw)
    boxes_all = [clip_boxes(decode(pred.box_deltas[i], priors)) for i in range(2)]
    for det, r in zip(ours, ref, strict=True):
        assert len(det.scores) == len(r) > 0
        torch.testing.assert_close(det.scores, torch.tensor([d[0] for d in r]))
        assert det.labels.tolist() == [d[1] for d in r]
    for i, (det, r) in enumerate(zip(ours, ref, strict=True)):
        torch.testing.assert_close(det.boxes, boxes_all[i][[d[2] for d in r]])
    assert all(d.labels.dtype == torch.int64 and (d.labels >= 1).all() for d in ours)
    assert all((d.boxes >= 0).all() and (d.boxes <= 1).all() for d in ours)


def test_postprocess_no_detections_above_threshold():
    pred, priors = make_pred(3)
    logits = torch.zeros_like(pred.cls_logits)
    logits[..., 0] = 20.0  # everything is background
    dets = postprocess(Prediction(logits, pred.box_deltas), priors)
    assert [len(d.scores) for d in dets] == [0, 0]
    assert dets[0].boxes.shape == (0, 4)


def test_postprocess_single_object_survives_nms():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]])
    logits = torch.full((1, 3, 3), -10.0)
    logits[0, 0, 1], logits[0, 1, 1], logits[0, 2, 2] = 5.0, 4.0, 3.0
    logits[0, :, 0] = 0.0
    det = postprocess(Prediction(logits, torch.zeros(1, 3, 4)), priors)[0]
    # prior 1 overlaps prior 0 with IoU 0.19/0.21 > 0.45 -> suppressed; prior 2 is class 2
    assert det.labels.tolist() == [1, 2]
    torch.testing.assert_close(det.boxes, torch.tensor([[0.4, 0.4, 0.6, 0.6], [0.15, 0.15, 0.25, 0.25]]))
