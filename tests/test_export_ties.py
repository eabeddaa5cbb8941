"""The ONNX export check with tied scores: :func:`multibox.export_graph.verify_detections` and its use by
:func:`multibox.export_onnx`.

A hand-made prediction of 8 priors and 2 classes has exactly tied scores at the per-class top-k cut, in the NMS
order and at the final top-k cut. Its valid outputs are enumerated by hand below; each must pass, and outputs that
differ in anything determined must fail.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from multibox import export_onnx
from multibox.boxes import box_iou, clip_boxes, decode, xyxy_to_cxcywh
from multibox.export import check_onnx, pad_detections, random_sample, run_onnx
from multibox.export_graph import DETECTION_OUTPUTS, DetectionGraph, verify_detections
from multibox.models import create_model
from multibox.onnx_runtime import ExportMismatchError, compare_detections
from multibox.postprocess import postprocess, select_candidates
from multibox.structures import Prediction

# xyxy. p1, p2, p3: IoU(p1, p2) = IoU(p2, p3) = 0.06 / 0.12 = 0.5 > 0.45, IoU(p1, p3) = 0.03 / 0.15 = 0.2.
# Every other pair is disjoint.
BOXES = torch.tensor(
    [
        [0.0, 0.0, 0.4, 0.4],  # p0
        [0.1, 0.5, 0.4, 0.8],  # p1
        [0.2, 0.5, 0.5, 0.8],  # p2
        [0.3, 0.5, 0.6, 0.8],  # p3
        [0.6, 0.0, 0.7, 0.1],  # p4
        [0.75, 0.0, 0.85, 0.1],  # p5
        [0.9, 0.0, 1.0, 0.1],  # p6
        [0.6, 0.2, 0.7, 0.3],  # p7
    ]
)
# (background, class 1, class 2); equal rows give bitwise-equal scores.
PROBS = torch.tensor(
    [[0.395, 0.6, 0.005]] + [[0.495, 0.5, 0.005]] * 3 + [[0.695, 0.005, 0.3]] * 3 + [[0.795, 0.005, 0.2]]
)
NMS = 0.45

# pre_nms_top_k=3, top_k=4. Class 1: p0 and 2 of the tied p1..p3 enter NMS; {p1, p2} keeps either, {p1, p3}
# both, {p2, p3} either. Class 2: the tied p4..p6 enter (p7 is 4th), all kept. The output: class 1's, then as
# many of the tied p4..p6 as fill 4 places.
CUT = {"score_thresh": 0.01, "nms_thresh": NMS, "pre_nms_top_k": 3, "top_k": 4}
CUT_CLASS1 = [[0, 1], [0, 2], [0, 3], [0, 1, 3]]
# pre_nms_top_k=200, top_k=10: all 4 candidates of class 1 enter NMS; processing p1 or p3 first keeps p1 and p3
# and suppresses p2, processing p2 first suppresses both: 3 or 2 detections. Class 2: p4..p7, all kept.
NMS_ORDER = {"score_thresh": 0.01, "nms_thresh": NMS, "pre_nms_top_k": 200, "top_k": 10}
NMS_ORDER_CLASS1 = [[0, 1, 3], [0, 2]]
# pre_nms_top_k=200, top_k=5: as NMS_ORDER, but only the best 5 are output: 2 or 3 of the tied p4..p6.
FINAL_CUT = {**NMS_ORDER, "top_k": 5}
CONFIGS = {"top-k cuts": CUT, "nms order": NMS_ORDER, "final cut": FINAL_CUT}


def valid_outputs(config):
    """Every valid output as ``[(prior, label), ...]`` in descending score."""
    if config is NMS_ORDER:
        return [[(p, 1) for p in c1] + [(p, 2) for p in (4, 5, 6, 7)] for c1 in NMS_ORDER_CLASS1]
    class1 = CUT_CLASS1 if config is CUT else NMS_ORDER_CLASS1
    return [
        [(p, 1) for p in c1] + [(p, 2) for p in c2]
        for c1 in class1
        for c2 in itertools.combinations((4, 5, 6), config["top_k"] - len(c1))
    ]


def padded(dets, top_k, boxes=BOXES, probs=PROBS):
    """``[(prior, label), ...]`` as the padded outputs of a graph (one image)."""
    n = len(dets)
    out = {
        "boxes": np.zeros((1, top_k, 4), np.float32),
        "scores": np.zeros((1, top_k), np.float32),
        "labels": np.zeros((1, top_k), np.int64),
        "num_detections": np.array([n]),
    }
    for j, (p, label) in enumerate(dets):
        out["boxes"][0, j] = boxes[p].numpy()
        out["scores"][0, j] = probs[p, label].item()
        out["labels"][0, j] = label
    return out


def verify(out, config):
    return verify_detections(PROBS[None], BOXES[None], out, **config)


@pytest.mark.parametrize(("name", "count"), [("top-k cuts", 12), ("nms order", 2), ("final cut", 4)])
def test_every_tie_resolution_passes_and_they_differ_as_lists(name, count):
    config = CONFIGS[name]
    outputs = valid_outputs(config)
    # top-k cuts: 3 x 3 with two of class 1, 1 x 3 with three; final cut: 3 with three of class 1, 1 with two.
    assert len(outputs) == count
    for dets in outputs:
        assert verify(padded(dets, config["top_k"]), config) == {"boxes": 0.0, "scores": 0.0}
    first, other = padded(outputs[0], config["top_k"]), padded(outputs[-1], config["top_k"])
    for a, b in ((first, other), (other, first)):  # what the ordered comparison made of equally valid outputs
        with pytest.raises(ExportMismatchError):
            compare_detections(a, b)


@pytest.mark.parametrize("name", CONFIGS)
def test_torchs_own_output_is_one_of_them(name):
    config = CONFIGS[name]
    priors = xyxy_to_cxcywh(BOXES)  # zero offsets decode to the priors themselves
    pred = Prediction(cls_logits=PROBS.log()[None], box_deltas=torch.zeros(1, 8, 4))
    det = postprocess(pred, priors, **config)[0]
    got = pad_detections([det], config["top_k"])
    verify(got, config)
    found = sorted((int(p), int(label)) for p, label in zip(_priors_of(det.boxes), det.labels, strict=True))
    assert found in [sorted(d) for d in valid_outputs(config)]


def _priors_of(boxes):
    return torch.cdist(boxes, BOXES, p=float("inf")).argmin(1)


def _set(key, index, value):
    def change(out):
        out[key][index] = value

    return change


BAD = [  # changes of the valid output p0, p1 (class 1), p4, p5 (class 2)
    ("a score off by 1e-4", _set("scores", (0, 3), 0.3 - 1e-4), "no candidate of its class \\(within"),
    ("a box moved by 0.01", _set("boxes", (0, 2, 0), 0.61), "no candidate of its class \\(within"),
    ("another label", _set("labels", (0, 2), 1), "class 1: the detection scored 0.300000 .* no candidate"),
    ("p0 twice", _set("boxes", (0, 1), BOXES[0].numpy()), "no candidate of its class that is not matched"),
]


@pytest.mark.parametrize(("what", "change", "message"), BAD, ids=[b[0] for b in BAD])
def test_a_different_box_score_or_label_fails(what, change, message):
    out = padded([(0, 1), (1, 1), (4, 2), (5, 2)], 4)
    verify(out, CUT)
    change(out)
    if what == "p0 twice":
        out["scores"][0, 1] = out["scores"][0, 0]
    with pytest.raises(ExportMismatchError, match=message):
        verify(out, CUT)


@pytest.mark.parametrize(
    ("dets", "config", "message"),
    [
        ([(0, 1), (4, 2), (5, 2), (6, 2)], CUT, r"class 1: .* 0 detected and 0 suppressed or cut ones fill them"),
        ([(0, 1), (1, 1), (2, 1), (4, 2)], CUT, r"class 1: .*overlap with IoU 0\.5000 > 0\.45"),
        ([(1, 1), (3, 1), (4, 2), (5, 2)], CUT, r"class 1: the candidate scored 0\.600000 .* is missing"),
        ([(0, 1), (1, 1), (4, 2), (7, 2)], CUT, r"class 2: a detection scored 0\.200000 cannot have entered NMS"),
        ([(0, 1), (1, 1), (4, 2)], CUT, r"class 2: .*only 1 detected and 0 suppressed or cut ones"),
        ([(0, 1), (1, 1), (4, 2), (5, 2), (6, 2), (7, 2)], NMS_ORDER, r"class 1: the candidate scored 0\.500000"),
        ([(0, 1), (3, 1), (4, 2), (5, 2), (6, 2), (7, 2)], NMS_ORDER, r"class 1: the candidate scored 0\.500000"),
        ([(0, 1), (2, 1), (4, 2), (5, 2), (6, 2)], NMS_ORDER, r"class 2: the candidate scored 0\.200000"),
        ([(4, 2), (0, 1), (2, 1), (5, 2)], CUT, r"scores not descending"),
        ([(0, 1), (1, 1), (3, 1), (4, 2), (7, 2)], FINAL_CUT, r"class 2: the candidate scored 0\.300000 .* missing"),
    ],
    ids=["tied pair missing", "both of an overlapping pair", "best box missing", "p7 cannot enter",
         "top-k not filled", "p3 not suppressed by p1", "p1 not suppressed by p3", "p7 missing", "order",
         "p7 output before p5"],
)  # fmt: skip
def test_what_is_determined_is_checked(dets, config, message):
    with pytest.raises(ExportMismatchError, match=message):
        verify(padded(dets, config["top_k"]), config)


class FixedPrediction(nn.Module):
    """A "model" whose prediction is the hand-made one for any image."""

    def __init__(self):
        super().__init__()
        self.register_buffer("priors", xyxy_to_cxcywh(BOXES))
        self.logits = nn.Parameter(PROBS.log())

    def forward(self, images):
        zero = images.sum((1, 2, 3))[:, None, None] * 0  # (B, 1, 1): keeps the batch dimension in the graph
        return Prediction(cls_logits=self.logits + zero, box_deltas=torch.zeros(1, 8, 4) + zero)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", CONFIGS)
def test_onnxruntime_resolves_the_ties_in_one_of_the_valid_ways(tmp_path, name):
    config = CONFIGS[name]
    graph = DetectionGraph(FixedPrediction(), **config).eval()
    images = torch.zeros(1, 3, 4, 4)
    path = tmp_path / "ties.onnx"
    names = {"input_names": ["images"], "output_names": list(DETECTION_OUTPUTS)}
    torch.onnx.export(graph, (images,), str(path), dynamo=False, opset_version=17, **names)
    got = run_onnx(path, images)
    n = int(got["num_detections"][0])
    priors = _priors_of(torch.as_tensor(got["boxes"][0, :n])).tolist()
    found = sorted(zip(priors, got["labels"][0, :n].tolist(), strict=True))
    assert found in [sorted(d) for d in valid_outputs(config)]
    assert check_onnx(path, graph, [images])["scores"] <= 1e-6


def saturated_tiny():
    """An untrained ssd_tiny fed 0-255 pixels (std 1): many probabilities saturate at exactly 1.0."""
    torch.manual_seed(0)
    return create_model("ssd_tiny", 4, image_size=64, width=4, std=(1.0, 1.0, 1.0)).eval()


def test_export_with_saturated_ties_passes_its_check(tmp_path):
    model = saturated_tiny()
    images = random_sample(model, 1)
    with torch.no_grad():
        pred = model(images)
        _, scores, valid = select_candidates(pred, model.priors)
        ref = pad_detections(postprocess(pred, model.priors), 200)
    assert int(((scores == 1.0) & valid).sum()) > 200  # more saturated candidates than places
    result = export_onnx(model, tmp_path / "tiny.onnx")  # defaults: checks batches of 1 and 2
    assert result.checked_batches == (1, 2) and result.max_abs_diff["scores"] <= 1e-5
    got = run_onnx(result.path, images)
    # The failure this fixed: onnxruntime keeps other tied boxes than torch, so the lists differ.
    with pytest.raises(ExportMismatchError):
        compare_detections(ref, got)
    probs = torch.softmax(pred.cls_logits, -1)
    boxes = clip_boxes(decode(pred.box_deltas, model.priors))
    kw = {"score_thresh": 0.01, "nms_thresh": 0.45, "pre_nms_top_k": 200, "top_k": 200}
    verify_detections(probs, boxes, got, **kw)
    verify_detections(probs, boxes, ref, **kw)  # torch's own output: another resolution of the same ties


@pytest.mark.parametrize(("gap", "ok"), [(5e-6, True), (1e-3, False)])
def test_scores_within_the_tolerance_count_as_tied(gap, ok):
    """Two overlapping boxes (IoU 0.2 / 0.3 = 0.667) scored 0.5 + gap and 0.5: keeping the lower one is a valid
    tie-break only while the gap is within score_atol (1e-5)."""
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.1, 0.0, 0.6, 0.5]]])
    probs = torch.tensor([[[0.5 - gap, 0.5 + gap], [0.5, 0.5]]])
    out = padded([(1, 1)], 2, boxes[0], probs[0])
    kw = {"score_thresh": 0.01, "nms_thresh": NMS, "pre_nms_top_k": 200, "top_k": 2}
    verify_detections(probs, boxes, padded([(0, 1)], 2, boxes[0], probs[0]), **kw)  # the higher one: always
    if ok:
        verify_detections(probs, boxes, out, **kw)
    else:
        with pytest.raises(ExportMismatchError, match=r"class 1: the candidate scored 0\.501000 .* is missing"):
            verify_detections(probs, boxes, out, **kw)


@pytest.mark.parametrize(("excess", "ok"), [(5e-5, True), (1e-3, False)])
def test_ious_within_the_tolerance_of_the_threshold_go_either_way(excess, ok):
    """Two boxes at IoU 0.45 + excess, both kept: onnxruntime's inter / union may round to 0.45 (iou_atol 1e-4)."""
    iou = NMS + excess
    width = (1 + iou) / 2  # [0, w] x [0, 1] and [1 - w, 1] x [0, 1]: overlap 2w - 1, union 1, IoU 2w - 1
    boxes = torch.tensor([[[0.0, 0.0, width, 1.0], [1.0 - width, 0.0, 1.0, 1.0]]])
    probs = torch.tensor([[[0.4, 0.6], [0.5, 0.5]]])
    assert abs(box_iou(boxes[0, :1], boxes[0, 1:]).item() - iou) < 1e-6
    out = padded([(0, 1), (1, 1)], 2, boxes[0], probs[0])
    kw = {"score_thresh": 0.01, "nms_thresh": NMS, "pre_nms_top_k": 200, "top_k": 2}
    if ok:
        verify_detections(probs, boxes, out, **kw)
    else:
        with pytest.raises(ExportMismatchError, match=r"overlap with IoU 0\.4510 > 0\.45: NMS keeps only one"):
            verify_detections(probs, boxes, out, **kw)
