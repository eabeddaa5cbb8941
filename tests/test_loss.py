import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

import multibox.loss
from multibox.boxes import box_iou, cxcywh_to_xyxy, encode
from multibox.loss import background_loss, background_loss_reference, hard_negative_mask, multibox_loss
from multibox.matching import match, pad_targets
from multibox.structures import Prediction


def reference_loss(cls_logits, box_deltas, targets, priors, thr=0.5, ratio=3):
    """Straightforward per-image SSD loss, ssd.pytorch's semantics written with plain loops."""
    priors_xyxy = cxcywh_to_xyxy(priors)
    a = priors.shape[0]
    loc_sum, conf_sum, total_pos = 0.0, 0.0, 0
    for i, (boxes, labels) in enumerate(targets):
        conf_t = torch.zeros(a, dtype=torch.long)
        pos = torch.zeros(a, dtype=torch.bool)
        matched = torch.zeros(a, 4)
        if len(boxes):
            iou = box_iou(boxes, priors_xyxy)  # (G, A)
            best_iou, best_gt = iou.max(0)
            for g in range(len(boxes)):  # forced matches, later GT wins
                p = int(iou[g].argmax())
                best_gt[p] = g
                best_iou[p] = 2.0
            pos = best_iou >= thr
            conf_t = torch.where(pos, labels[best_gt], 0)
            matched = boxes[best_gt]
        n_pos = int(pos.sum())
        total_pos += n_pos
        if n_pos:
            t = encode(matched[pos], priors[pos])
            loc_sum += float(F.smooth_l1_loss(box_deltas[i][pos], t, reduction="sum"))
        ce = F.cross_entropy(cls_logits[i], conf_t, reduction="none")
        n_neg = min(ratio * n_pos, a - n_pos)
        neg_losses = sorted((float(ce[j]) for j in range(a) if not pos[j]), reverse=True)[:n_neg]
        conf_sum += float(ce[pos].sum()) + sum(neg_losses)
    n = max(1, total_pos)
    return loc_sum / n, conf_sum / n, total_pos


def make_problem(seed, sizes=(2, 0, 4), a=400, c=5):
    g = torch.Generator().manual_seed(seed)
    priors = torch.cat((torch.rand(a, 2, generator=g), torch.rand(a, 2, generator=g) * 0.4 + 0.05), 1)
    targets = []
    for n in sizes:
        xy = torch.rand(n, 2, generator=g) * 0.6
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        targets.append((torch.cat((xy, xy + wh), 1), torch.randint(1, c, (n,), generator=g)))
    pred = Prediction(torch.randn(len(sizes), a, c, generator=g), torch.randn(len(sizes), a, 4, generator=g) * 0.5)
    return pred, targets, priors


@pytest.mark.parametrize("mining", ["reference", "fast"])
@pytest.mark.parametrize("seed", range(4))
def test_loss_equals_per_image_reference(seed, mining):
    pred, targets, priors = make_problem(seed)
    out = multibox_loss(pred, targets, priors, mining=mining)
    loc, conf, n_pos = reference_loss(pred.cls_logits, pred.box_deltas, targets, priors)
    assert int(out["num_pos"]) == n_pos > 0
    assert float(out["loc"]) == pytest.approx(loc, rel=1e-5)
    assert float(out["conf"]) == pytest.approx(conf, rel=1e-5)
    assert float(out["total"]) == pytest.approx(loc + conf, rel=1e-5)


def test_all_empty_images_give_zero_loss_without_nan():
    pred, _, priors = make_problem(0, sizes=(0, 0))
    out = multibox_loss(pred, [(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))] * 2, priors)
    assert out["num_pos"] == 0 and out["loc"] == 0 and out["conf"] == 0


def test_gradients_flow_and_are_finite():
    pred, targets, priors = make_problem(1)
    logits = pred.cls_logits.clone().requires_grad_()
    deltas = pred.box_deltas.clone().requires_grad_()
    multibox_loss(Prediction(logits, deltas), targets, priors)["total"].backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(deltas.grad).all()
    assert deltas.grad.abs().sum() > 0
    assert logits.grad[1].abs().sum() == 0  # the empty image contributes nothing


def test_hard_negative_mask_by_hand():
    ce = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3, 0.2, 0.8, 0.05]])
    pos = torch.tensor([[False, True, False, False, False, False, False, False]])
    # 1 positive -> 3 negatives: the highest CE among non-positives: 0.8 (6), 0.7 (3), 0.5 (2)
    assert hard_negative_mask(ce, pos).nonzero()[:, 1].tolist() == [2, 3, 6]
    # 3 positives of 4 priors -> min(9, 1) = 1 negative
    assert hard_negative_mask(ce[:, :4], torch.tensor([[True, True, False, True]])).tolist() == [
        [False, False, True, False]
    ]


def test_degenerate_box_is_ignored_with_warning_and_bad_label_raises():
    pred, targets, priors = make_problem(2, sizes=(2,))
    boxes, labels = targets[0]
    bad = torch.cat((boxes, torch.tensor([[0.5, 0.5, 0.5, 0.7]])))
    with pytest.warns(UserWarning, match="ignored 1 ground-truth box"):
        out = multibox_loss(pred, [(bad, torch.cat((labels, torch.tensor([1]))))], priors)
    ref = multibox_loss(pred, targets, priors)
    assert torch.isfinite(out["total"]) and float(out["total"]) == pytest.approx(float(ref["total"]))
    with pytest.raises(ValueError, match=r"labels must be in 1\.\.4"):
        multibox_loss(pred, [(boxes, torch.tensor([1, 5]))], priors)
    with pytest.raises(ValueError, match=r"labels must be in 1\.\.4"):
        multibox_loss(pred, [(boxes, torch.tensor([0, 1]))], priors)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        multibox_loss(pred, targets, priors)


def test_background_loss_equals_log_softmax_and_keeps_precision():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 21, generator=g) * 4
    x[0, :10, 0] += 40.0  # very easy negatives: hardness ~1e-17, where 1 - softmax would read 0
    x[1, 0, 5] = x[1, 0, 0] + 150.0  # exp(x_5 - x_0) overflows float32: recomputed exactly
    x[1, 1, 0] = 500.0  # background far ahead of everything: hardness underflows to 0 correctly
    xd = x.double()  # float64 reference of log1p(sum exp(x_c - x_0)) (log_softmax's own rounding is ~1e-16 absolute)
    ref = torch.log1p(torch.exp(xd[..., 1:] - xd[..., :1]).sum(-1))
    out = background_loss(x)
    assert out.dtype == torch.float32 and out.shape == (3, 50)
    assert float(out[1, 1]) == 0.0 and float(ref[1, 1]) < 1e-200  # below float32's range
    ref[1, 1] = 0.0
    # Relative precision everywhere: exp(x_c - x_0) near -60 carries the argument's float32 rounding (~4e-6 rel.).
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=0)
    assert 1e-19 < float(out[0, 0]) < 1e-12 and float(out[1, 0]) == pytest.approx(150.0, rel=1e-6)


def test_background_loss_edge_cases(monkeypatch):
    nan = torch.zeros(2, 4, 3)
    nan[1, 2, 1] = float("nan")
    out = background_loss(nan)
    assert out[1, 2].isnan() and torch.isfinite(out.flatten()[torch.arange(8) != 6]).all()
    assert float(out[0, 0]) == pytest.approx(math.log(3.0))  # three equal logits: -log(1/3)
    assert background_loss(torch.zeros(0, 5, 21)).shape == (0, 5)
    assert torch.equal(background_loss(torch.randn(2, 7, 1)), torch.zeros(2, 7))  # background only
    bf16 = torch.randn(2, 9, 21).bfloat16()
    torch.testing.assert_close(background_loss(bf16), -torch.log_softmax(bf16.float(), -1)[..., 0])
    x = torch.randn(3, 11, 21) * 3
    whole = background_loss(x)
    monkeypatch.setattr(multibox.loss, "_CHUNK", 7)  # 33 priors: slices of 7, the last one short
    # torch.mv may sum a slice of 7 rows in another order than one of 33 (the BLAS kernel is picked by the row count
    # and the CPU), so the slices agree to 2 float32 ulps, not always bit for bit; a wrong slice would be far off.
    torch.testing.assert_close(background_loss(x), whole, rtol=2 * torch.finfo(torch.float32).eps, atol=0)


def test_conf_gradient_equals_dense_cross_entropy():
    pred, targets, priors = make_problem(3)
    logits = pred.cls_logits.clone().requires_grad_()
    multibox_loss(Prediction(logits, pred.box_deltas), targets, priors)["conf"].backward()
    # Reference: full cross-entropy over [B, A, C], masked to the positives and the mined negatives.
    ref_logits = pred.cls_logits.clone().requires_grad_()
    gt_boxes, gt_labels, valid = pad_targets(targets)
    m = match(gt_boxes, valid, priors)
    conf_t = torch.where(m.positive, torch.gather(gt_labels, 1, m.gt_index), 0)
    ce = F.cross_entropy(ref_logits.transpose(1, 2), conf_t, reduction="none")  # (B, A)
    chosen = m.positive | hard_negative_mask(ce.detach(), m.positive)
    (torch.where(chosen, ce, 0.0).sum() / m.positive.sum()).backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-5, atol=1e-7)
    assert (logits.grad[~chosen] == 0).all() and (logits.grad[chosen].abs().sum(-1) > 0).all()


def _with_box(targets, image, box):
    """``targets`` with ``box`` (xyxy) appended to image ``image`` (label 1)."""
    out = list(targets)
    boxes, labels = out[image]
    out[image] = (torch.cat((boxes, torch.tensor([box]))), torch.cat((labels, torch.tensor([1]))))
    return out


@pytest.mark.parametrize(
    ("box", "what"),
    [
        ([48.0, 30.0, 250.0, 190.0], r"lies outside \[0, 1\]; .* \(pixel coordinates\? divide x by the image width"),
        ([0.1, 0.1, 3e38, 0.5], r"lies outside \[0, 1\]"),
        ([0.1, 0.1, math.inf, 0.5], r"has a non-finite corner"),
        ([math.nan, 0.1, 0.4, 0.5], r"has a non-finite corner"),
        ([-0.2, 0.1, 0.4, 0.5], r"lies outside \[0, 1\]; target boxes must be normalised xyxy in \[0, 1\]"),
        ([0.1, 0.1, 0.4, 1.02], r"lies outside \[0, 1\]"),
    ],
)
def test_unusable_target_boxes_raise_naming_the_image_and_the_box(box, what):
    pred, targets, priors = make_problem(3, sizes=(2, 0, 4))
    bad = _with_box(targets, 2, box)
    shown = ", ".join(f"{v:.6g}" for v in box)
    with pytest.raises(ValueError, match=rf"^image 2 of the batch has target box 4 = \[{re.escape(shown)}\], which "):
        multibox_loss(pred, bad, priors)
    with pytest.raises(ValueError, match=what):
        multibox_loss(pred, bad, priors)
    with pytest.raises(ValueError, match=r"1 such box\(es\) in the batch$"):
        multibox_loss(pred, bad, priors)


def test_targets_within_the_tolerance_are_accepted():
    """Corners within TARGET_TOLERANCE of [0, 1] (rounding, a slight overshoot) are trained on as given."""
    pred, targets, priors = make_problem(4, sizes=(1,))
    tol = multibox.loss.TARGET_TOLERANCE
    inside = _with_box(targets, 0, [-tol, 0.2, 0.5, 1 + tol])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = multibox_loss(pred, inside, priors)
    loc, conf, n = reference_loss(pred.cls_logits, pred.box_deltas, inside, priors)
    assert float(out["loc"]) == pytest.approx(loc, rel=1e-5) and float(out["conf"]) == pytest.approx(conf, rel=1e-5)
    assert int(out["num_pos"]) == n


def test_pixel_boxes_are_refused():
    """Why the check exists: boxes in pixels of a 300x300 input were trained on without a word, their forced matches
    giving encoded offsets in the hundreds (a loss in the thousands)."""
    pred, targets, priors = make_problem(5, sizes=(3, 2))
    pixels = [(boxes * 300, labels) for boxes, labels in targets]
    with pytest.raises(ValueError, match=r"^image 0 of the batch has target box 0 = .*pixel coordinates\?"):
        multibox_loss(pred, pixels, priors)
    gt, _, valid = pad_targets(pixels)
    m = match(gt, valid, priors)  # the forced matches alone make positives whose encoded offsets are huge
    i, a = m.positive.nonzero(as_tuple=True)
    assert encode(gt[i, m.gt_index[i, a]], priors[a]).abs().max() > 100


def test_float_labels_raise():
    pred, targets, priors = make_problem(6, sizes=(2,))
    boxes, labels = targets[0]
    with pytest.raises(ValueError, match=r"image 0 of the batch has labels of dtype torch\.float32; labels must be"):
        multibox_loss(pred, [(boxes, labels.float())], priors)


def test_target_checks_need_one_transfer_per_call(monkeypatch):
    """The checks are batched: one device-to-host ``tolist`` of three counts, however many boxes."""
    pred, targets, priors = make_problem(7, sizes=(30, 25, 40))
    calls = []
    original = torch.Tensor.tolist

    def counting(self):
        calls.append(tuple(self.shape))
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    multibox_loss(pred, targets, priors)
    assert calls == [(3,)]


def test_the_two_minings_select_the_same_negatives_and_an_unknown_one_is_refused():
    pred, targets, priors = make_problem(11, sizes=(3, 1), a=600, c=21)
    ref = background_loss_reference(pred.cls_logits)
    torch.testing.assert_close(background_loss(pred.cls_logits), ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(ref, -F.log_softmax(pred.cls_logits, -1)[..., 0])
    fast, slow = (multibox_loss(pred, targets, priors, mining=m) for m in ("fast", "reference"))
    assert all(torch.allclose(fast[k].float(), slow[k].float(), rtol=1e-6) for k in fast)
    with pytest.raises(ValueError, match="unknown mining 'sorted'"):
        multibox_loss(pred, targets, priors, mining="sorted")
