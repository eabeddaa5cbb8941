"""PASCAL VOC AP: hand-computed PR curves, the devkit's edge rules, and a transcription of ``voc_eval.py``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from multibox import Detections
from multibox.metrics import VOCResult, average_precision, plot_pr_curves, voc_ap


def dets(boxes: list[list[float]], scores: list[float], labels: list[int] | None = None) -> Detections:
    labels = [1] * len(scores) if labels is None else labels
    return Detections(
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(labels, dtype=torch.int64),
    )


def gt(boxes: list[list[float]], labels: list[int] | None = None, difficult: list[bool] | None = None) -> dict:
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor([1] * len(boxes) if labels is None else labels, dtype=torch.int64),
    }
    if difficult is not None:
        out["difficult"] = torch.tensor(difficult)
    return out


def no_dets() -> Detections:
    return dets([], [])


A1, A2, B1 = [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]
FAR = [50, 50, 60, 60]


def hand_case() -> tuple[list[Detections], list[dict]]:
    """1 class, 3 GT in 2 images (A: a1, a2; B: b1), 5 detections, in score order:

    ===== ===== ===================================== ==== ====
    score image box                                    TP?  P, R
    ===== ===== ===================================== ==== ====
    0.9   A     = a1 (IoU 1)                           TP   1/1, 1/3
    0.8   B     far from b1 (IoU 0)                    FP   1/2, 1/3
    0.7   B     = b1                                   TP   2/3, 2/3
    0.6   A     = a1 again: a duplicate                FP   2/4, 2/3
    0.5   A     [25, 20, 35, 30] vs a2: IoU 50/150=1/3  FP   2/5, 2/3
    ===== ===== ===================================== ==== ====

    11-point: t = 0, .1, .2, .3 reach recall 1/3 (max precision after it: 1); t = .4, .5, .6 reach 2/3 (max
    precision 2/3); t = .7 .. 1 are never reached (0). AP = (4 * 1 + 3 * 2/3) / 11 = 6/11.
    Area: the envelope is 1 on (0, 1/3] and 2/3 on (1/3, 2/3], 0 beyond: AP = 1/3 + 2/9 = 5/9.
    """
    detections = [
        dets([A1, A1, [25, 20, 35, 30]], [0.9, 0.6, 0.5]),  # image A, deliberately not sorted by score
        dets([FAR, B1], [0.8, 0.7]),  # image B
    ]
    return detections, [gt([A1, A2]), gt([B1])]


def test_hand_case_pr_curve_and_both_metrics() -> None:
    detections, gts = hand_case()
    r07 = voc_ap(detections, gts, use_07_metric=True)
    assert isinstance(r07, VOCResult)
    np.testing.assert_allclose(r07.precision[1], [1, 1 / 2, 2 / 3, 2 / 4, 2 / 5])
    np.testing.assert_allclose(r07.recall[1], [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert r07.num_positives == {1: 3}
    assert r07.ap[1] == pytest.approx(6 / 11, abs=1e-12)
    assert r07.mean_ap == pytest.approx(6 / 11, abs=1e-12)
    r10 = voc_ap(detections, gts, use_07_metric=False)
    assert r10.ap[1] == pytest.approx(5 / 9, abs=1e-12)
    assert r10.as_dict() == {"mAP": r10.mean_ap, "AP/1": r10.ap[1]}
    assert r10.as_dict(["cat"]) == {"mAP": r10.mean_ap, "AP/cat": r10.ap[1]}


def test_result_arrays_are_read_only() -> None:
    r = voc_ap(*hand_case())
    with pytest.raises(ValueError):
        r.precision[1][0] = 0.0


def test_duplicate_detection_is_a_false_positive() -> None:
    # Two detections on one box: 1st TP (P=1, R=1), 2nd FP (P=1/2, R=1). Both metrics: AP = 1 (max precision at
    # recall 1 is 1), but the curve shows the duplicate.
    r = voc_ap([dets([A1, A1], [0.9, 0.8])], [gt([A1])])
    np.testing.assert_allclose(r.precision[1], [1, 1 / 2])
    np.testing.assert_allclose(r.recall[1], [1, 1])
    # Ranked first, the duplicate costs: a box whose best match is already taken is FP even though another,
    # unmatched box overlaps it (the devkit takes the box of max IoU, matched or not).
    # Boxes: g1 = [0,0,10,10], g2 = [0,6,10,16]. d1 = g1 (IoU 1 with g1) then d2 = [0,1,10,11]:
    # IoU(d2, g1) = 90/110 = 0.818, IoU(d2, g2) = 50/150 = 1/3, so d2 takes g1, already matched: FP.
    r = voc_ap([dets([[0, 0, 10, 10], [0, 1, 10, 11]], [0.9, 0.8])], [gt([[0, 0, 10, 10], [0, 6, 10, 16]])])
    np.testing.assert_allclose(r.precision[1], [1, 1 / 2])
    np.testing.assert_allclose(r.recall[1], [1 / 2, 1 / 2])


def test_difficult_match_is_ignored_and_not_counted() -> None:
    # One image: g1 normal, g2 difficult. Ranked: 0.95 and 0.9 on g2 (both ignored, even the duplicate),
    # 0.8 on g1 (TP), 0.7 far (FP). npos = 1, so the curve is (R=1, P=1), (R=1, P=1/2): AP = 1 either way.
    # Were the difficult matches FPs, the TP would sit at P = 1/3; were g2 counted, recall would stop at 1/2.
    g1, g2 = [0, 0, 10, 10], [30, 30, 40, 40]
    detections = [dets([g2, g2, g1, FAR], [0.95, 0.9, 0.8, 0.7])]
    gts = [gt([g1, g2], difficult=[False, True])]
    for use_07 in (True, False):
        r = voc_ap(detections, gts, use_07_metric=use_07)
        assert r.num_positives == {1: 1}
        np.testing.assert_allclose(r.precision[1], [1, 1 / 2])
        np.testing.assert_allclose(r.recall[1], [1, 1])
        assert r.ap[1] == pytest.approx(1.0)


def test_low_iou_on_difficult_is_still_a_false_positive() -> None:
    # IoU(det, difficult g2) = 1/3 <= 0.5: not a match, so an FP; then the TP on g1. P = 0, 1/2; R = 0, 1.
    # 11-point: every t is reached only by the 2nd point: AP = 1/2. Area: 1 * 1/2 = 1/2.
    g1, g2 = [0, 0, 10, 10], [30, 30, 40, 40]
    r = voc_ap([dets([[35, 30, 45, 40], g1], [0.9, 0.8])], [gt([g1, g2], difficult=[False, True])])
    np.testing.assert_allclose(r.precision[1], [0, 1 / 2])
    assert r.ap[1] == pytest.approx(1 / 2)


def test_only_difficult_ground_truth_gives_nan() -> None:
    with pytest.warns(UserWarning, match="no non-difficult ground truth"):
        r = voc_ap([dets([A1], [0.9])], [gt([A1], difficult=[True])])
    assert r.num_positives == {1: 0}
    assert math.isnan(r.ap[1]) and math.isnan(r.mean_ap)


def test_image_without_ground_truth_only_false_positives() -> None:
    # Image 0: one box, found at score 0.5. Image 1: no GT, two detections at 0.9 and 0.8 (FPs, ranked first).
    # P = 0, 0, 1/3; R = 0, 0, 1. Both metrics: AP = 1/3.
    detections = [dets([A1], [0.5]), dets([A1, A2], [0.9, 0.8])]
    gts = [gt([A1]), gt([])]
    for use_07 in (True, False):
        r = voc_ap(detections, gts, use_07_metric=use_07)
        np.testing.assert_allclose(r.precision[1], [0, 0, 1 / 3])
        np.testing.assert_allclose(r.recall[1], [0, 0, 1])
        assert r.ap[1] == pytest.approx(1 / 3)


def test_class_with_gt_but_no_detections_scores_zero_and_counts_in_map() -> None:
    # Class 1 perfect (AP 1), class 2 has a box and no detection (AP 0), class 3 has neither (NaN, not averaged).
    detections = [dets([A1], [0.9], [1])]
    gts = [gt([A1, A2], [1, 2])]
    r = voc_ap(detections, gts, num_classes=4)
    assert r.ap[1] == 1.0 and r.ap[2] == 0.0 and math.isnan(r.ap[3])
    assert r.mean_ap == pytest.approx(1 / 2)
    assert r.precision[2].size == 0 and r.precision[3].size == 0
    # Without num_classes only the labels that occur are reported.
    assert set(voc_ap(detections, gts).ap) == {1, 2}


def test_detections_of_a_class_without_gt_warn_and_stay_out_of_the_map() -> None:
    with pytest.warns(UserWarning, match=r"labels \[2\]"):
        r = voc_ap([dets([A1, A2], [0.9, 0.8], [1, 2])], [gt([A1], [1])])
    assert r.ap[1] == 1.0 and math.isnan(r.ap[2]) and r.mean_ap == 1.0


def test_detection_must_match_its_own_class() -> None:
    # The detection of class 2 sits exactly on a class-1 box: it is an FP for class 2's ranking... which has no
    # GT; class 1's box is missed.
    with pytest.warns(UserWarning):
        r = voc_ap([dets([A1], [0.9], [2])], [gt([A1], [1])])
    assert r.ap[1] == 0.0 and math.isnan(r.ap[2])


def test_empty_inputs() -> None:
    r = voc_ap([], [])
    assert r.ap == {} and math.isnan(r.mean_ap)
    r = voc_ap([no_dets(), no_dets()], [gt([]), gt([])], num_classes=3)
    assert set(r.ap) == {1, 2} and all(math.isnan(v) for v in r.ap.values()) and math.isnan(r.mean_ap)
    r = voc_ap([no_dets()], [gt([A1])])
    assert r.ap == {1: 0.0} and r.mean_ap == 0.0


def test_iou_exactly_at_threshold_is_not_a_match() -> None:
    # det [0,0,10,5] inside g [0,0,10,10]: IoU = 50/100 = 0.5 exactly; the devkit's `ovmax > ovthresh` rejects it.
    detections, gts = [dets([[0, 0, 10, 5]], [0.9])], [gt([[0, 0, 10, 10]])]
    assert voc_ap(detections, gts, iou_threshold=0.5).ap[1] == 0.0
    assert voc_ap(detections, gts, iou_threshold=0.49).ap[1] == 1.0
    # In the devkit's integer-pixel convention the same boxes are 11x6 inside 11x11: IoU = 66/121 > 0.5.
    assert voc_ap(detections, gts, iou_threshold=0.5, pixel_plus_one=True).ap[1] == 1.0


def test_ties_keep_the_input_order() -> None:
    # Same score: an FP in image 0 and a TP in image 1. Stable ranking puts the FP first: P = 0, 1/2; R = 0, 1,
    # so AP = 1/2 (both metrics). Swap the images and the TP comes first: AP = 1.
    fp_image, tp_image = (dets([FAR], [0.5]), gt([])), (dets([A1], [0.5]), gt([A1]))
    r = voc_ap([fp_image[0], tp_image[0]], [fp_image[1], tp_image[1]])
    assert r.ap[1] == pytest.approx(1 / 2)
    r = voc_ap([tp_image[0], fp_image[0]], [tp_image[1], fp_image[1]])
    assert r.ap[1] == 1.0


def test_accepts_numpy_lists_and_attribute_objects() -> None:
    class Target:
        def __init__(self, boxes: list, labels: list) -> None:
            self.boxes, self.labels = boxes, labels

    detections, gts = hand_case()
    as_numpy = [{k: v.numpy() for k, v in d._asdict().items()} for d in detections]
    as_objects = [Target(g["boxes"].tolist(), g["labels"].tolist()) for g in gts]
    assert voc_ap(as_numpy, as_objects).ap[1] == pytest.approx(6 / 11)


@pytest.mark.parametrize(
    ("detections", "gts", "match"),
    [
        ([no_dets()], [], "one entry per image"),
        ([dets([A1], [0.9], [0])], [gt([A1])], "labels must be >= 1"),
        ([{"boxes": torch.zeros(2, 3), "scores": torch.zeros(2), "labels": torch.ones(2)}], [gt([])], r"\[N, 4\]"),
        ([dets([A1], [float("nan")])], [gt([A1])], "scores contain NaN"),
        ([{"boxes": torch.zeros(1, 4), "labels": torch.ones(1)}], [gt([])], "no field 'scores'"),
        ([dets([A1], [0.9], [5])], [gt([A1])], "out of range for num_classes=3"),
    ],
)
def test_bad_input_errors_name_the_problem(detections: list, gts: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        voc_ap(detections, gts, num_classes=3)


def test_plot_pr_curves_writes_a_png(tmp_path: Path) -> None:
    detections, gts = hand_case()
    detections.append(dets([A1], [0.4], [2]))  # class 2: detections but no GT (NaN, not drawn)
    gts.append(gt([A2], [3]))  # class 3: GT, no detections (AP 0, an empty curve)
    with pytest.warns(UserWarning):
        result = voc_ap(detections, gts, num_classes=5)
    path = plot_pr_curves(result, ["cat", "dog", "bird", "fish"], tmp_path / "plots" / "pr.png")
    assert path == tmp_path / "plots" / "pr.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    # Mapping names and an all-empty result work too.
    assert plot_pr_curves(result, {1: "cat"}, tmp_path / "b.png").stat().st_size > 0
    assert plot_pr_curves(voc_ap([], []), None, tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no background entry"):
        plot_pr_curves(result, ["cat"], tmp_path / "d.png")


# ----------------------------------------------------------------------------------------- average_precision


def test_average_precision_by_hand() -> None:
    # P = 1, 1/2, 2/3 at R = 1/4, 1/4, 1/2 (4 positives).
    # 11-point: t = 0, .1, .2 -> max(1, 1/2, 2/3) = 1; t = .3, .4, .5 -> 2/3; t >= .6 -> 0. AP = (3 + 2) / 11.
    # Area: envelope 1 on (0, 1/4], 2/3 on (1/4, 1/2]: AP = 1/4 + 1/6 = 5/12.
    rec, prec = [1 / 4, 1 / 4, 1 / 2], [1, 1 / 2, 2 / 3]
    assert average_precision(rec, prec, use_07_metric=True) == pytest.approx(5 / 11, abs=1e-12)
    assert average_precision(np.array(rec), torch.tensor(prec), use_07_metric=False) == pytest.approx(5 / 12, abs=1e-7)
    assert average_precision([], [], True) == 0.0 and average_precision([], [], False) == 0.0
    assert average_precision([1.0], [1.0], True) == 1.0 and average_precision([1.0], [1.0], False) == 1.0


def test_eleven_point_thresholds_are_exact_tenths() -> None:
    # 3 of 10 boxes found at precision 1: recall is exactly 3/10, which reaches t = 0 .. 0.3: AP = 4/11.
    # (voc_eval.py's np.arange(0., 1.1, 0.1)[3] is 0.30000000000000004 and would give 3/11.)
    recall = np.array([1.0, 2.0, 3.0]) / 10
    assert average_precision(recall, [1.0, 1.0, 1.0], True) == pytest.approx(4 / 11, abs=1e-12)


def test_average_precision_rejects_bad_curves() -> None:
    with pytest.raises(ValueError, match="same length"):
        average_precision([0.5], [1.0, 0.5])
    with pytest.raises(ValueError, match="non-decreasing"):
        average_precision([0.5, 0.25], [1.0, 0.5])


# ------------------------------------------------------------------------- reference: voc_eval.py transcribed


def devkit_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool) -> float:
    """``voc_ap`` of py-faster-rcnn's voc_eval.py, line for line, except the 11 thresholds (exact tenths)."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(11) / 10:  # voc_eval.py: np.arange(0., 1.1, 0.1)
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def devkit_eval(dets_: list[dict], gts_: list[dict], classname: int, ovthresh: float, use_07: bool, plus: float):
    """``voc_eval`` of voc_eval.py for one class, reading our per-image inputs instead of files.

    Two deliberate differences: the sort is stable (``np.argsort(-confidence)`` is not, for ties), and the ignored
    (difficult) detections are dropped from the returned curve (they repeat the previous point, or (0, 0) first).
    """
    class_recs, npos = {}, 0
    for imagename, g in enumerate(gts_):
        keep = g["labels"] == classname
        bbox, difficult = g["boxes"][keep], g["difficult"][keep].astype(bool)
        npos = npos + sum(~difficult)
        class_recs[imagename] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(bbox)}
    image_ids, confidence, BB = [], [], []
    for imagename, d in enumerate(dets_):
        for box, score, label in zip(d["boxes"], d["scores"], d["labels"], strict=True):
            if label == classname:
                image_ids.append(imagename), confidence.append(score), BB.append(box)
    confidence, BB = np.array(confidence), np.array(BB).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp, ignored = np.zeros(nd), np.zeros(nd), np.zeros(nd, dtype=bool)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + plus, 0.0)
            ih = np.maximum(iymax - iymin + plus, 0.0)
            inters = iw * ih
            uni = (
                (bb[2] - bb[0] + plus) * (bb[3] - bb[1] + plus)
                + (BBGT[:, 2] - BBGT[:, 0] + plus) * (BBGT[:, 3] - BBGT[:, 1] + plus)
                - inters
            )
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
            else:
                ignored[d] = True
        else:
            fp[d] = 1.0
    if npos == 0:
        return float("nan"), None, None
    fp, tp = np.cumsum(fp[~ignored]), np.cumsum(tp[~ignored])
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return devkit_ap(rec, prec, use_07), rec, prec


def random_set(rng: np.random.Generator, num_images: int, num_classes: int, integer: bool) -> tuple[list, list]:
    """GT boxes with some difficult; detections: jittered GT copies (IoUs around the threshold) and clutter."""
    dets_, gts_ = [], []
    for _ in range(num_images):
        g = int(rng.integers(0, 6))
        xy = rng.uniform(0, 80, (g, 2))
        wh = rng.uniform(8, 40, (g, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        if integer:
            boxes = np.round(boxes)
        labels = rng.integers(1, num_classes, g)
        gts_.append({"boxes": boxes, "labels": labels, "difficult": rng.random(g) < 0.15})
        copies = rng.integers(0, 3, g)  # 0..2 detections per box: misses and duplicates
        src = np.repeat(np.arange(g), copies)
        jitter = rng.normal(0, 0.15, (len(src), 4)) * np.tile(wh[src], 2)
        near = boxes[src] + jitter
        c = int(rng.integers(0, 4))
        cxy = rng.uniform(0, 90, (c, 2))
        clutter = np.concatenate([cxy, cxy + rng.uniform(5, 40, (c, 2))], 1)
        det_boxes = np.concatenate([near, clutter]).reshape(-1, 4)
        det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
        if integer:
            det_boxes = np.round(det_boxes)
        n = len(det_boxes)
        det_labels = np.concatenate([labels[src], rng.integers(1, num_classes, c)]).astype(np.int64)
        flip = rng.random(n) < 0.1  # some wrong-class detections
        det_labels[flip] = rng.integers(1, num_classes, int(flip.sum()))
        scores = np.round(rng.random(n), 1)  # coarse scores: plenty of ties
        dets_.append({"boxes": det_boxes, "scores": scores, "labels": det_labels})
    return dets_, gts_


@pytest.mark.filterwarnings("ignore:.*no non-difficult ground truth:UserWarning")
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("use_07", [True, False])
def test_matches_devkit_transcription_on_random_data(seed: int, use_07: bool) -> None:
    rng = np.random.default_rng(seed)
    num_classes = 5  # labels 1..4
    integer = seed % 2 == 1
    dets_, gts_ = random_set(rng, num_images=12, num_classes=num_classes, integer=integer)
    threshold = [0.5, 0.5, 0.3, 0.7, 0.5, 0.6][seed]
    result = voc_ap(dets_, gts_, threshold, use_07, num_classes=num_classes, pixel_plus_one=integer)
    expected_aps = []
    for c in range(1, num_classes):
        ap, rec, prec = devkit_eval(dets_, gts_, c, threshold, use_07, 1.0 if integer else 0.0)
        if math.isnan(ap):
            assert math.isnan(result.ap[c])
            continue
        expected_aps.append(ap)
        assert result.ap[c] == pytest.approx(ap, abs=1e-12), f"class {c}"
        np.testing.assert_allclose(result.recall[c], rec, atol=1e-12)
        np.testing.assert_allclose(result.precision[c], prec, atol=1e-12)
    assert result.mean_ap == pytest.approx(np.mean(expected_aps), abs=1e-12)
