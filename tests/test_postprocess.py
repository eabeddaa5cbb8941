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
        iou = box_iou(boxes, boxes).tolist()  # box_iou itself is checked against a double loop in test_boxes
        dets = []
        for c in range(1, probs.shape[1]):
            cand = [j for j in range(len(priors)) if probs[j, c] > score_thresh]
            cand.sort(key=lambda j: -float(probs[j, c]))
            cand = cand[:pre_nms_top_k]
            kept = []
            for j in cand:
                if all(iou[j][k] <= nms_thresh for k in kept):
                    kept.append(j)
            dets += [(float(probs[j, c]), c, j) for j in kept]
        dets.sort(key=lambda d: -d[0])
        out.append(dets[:top_k])
    return out


def make_pred(seed, b=2, a=150, c=4, sharp=3.0):
    g = torch.Generator().manual_seed(seed)
    priors = torch.cat((torch.rand(a, 2, generator=g), torch.rand(a, 2, generator=g) * 0.3 + 0.05), 1)
    return Prediction(torch.randn(b, a, c, generator=g) * sharp, torch.randn(b, a, 4, generator=g) * 0.3), priors


@pytest.mark.parametrize("strategy", ["per_class", "shortlist"])
@pytest.mark.parametrize(("seed", "kw"), [(0, {}), (1, {"pre_nms_top_k": 20, "top_k": 30}), (2, {"score_thresh": 0.3})])
def test_postprocess_equals_loop_reference(seed, kw, strategy):
    pred, priors = make_pred(seed)
    ours = postprocess(pred, priors, strategy=strategy, **kw)
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


@pytest.mark.parametrize("strategy", ["per_class", "shortlist"])
def test_postprocess_no_detections_above_threshold(strategy):
    pred, priors = make_pred(3)
    logits = torch.zeros_like(pred.cls_logits)
    logits[..., 0] = 20.0  # everything is background
    dets = postprocess(Prediction(logits, pred.box_deltas), priors, strategy=strategy)
    assert [len(d.scores) for d in dets] == [0, 0]
    assert dets[0].boxes.shape == (0, 4)


def test_the_reference_strategy_runs_no_shortlist_and_an_unknown_one_is_refused(monkeypatch):
    calls = count_paths(monkeypatch)
    pred, priors = make_pred(9, a=300, c=6, sharp=2.0)
    kw = {"top_k": 10, "pre_nms_top_k": 30}
    ours = postprocess(pred, priors, strategy="per_class", **kw)
    assert calls == {"best_pairs": 0, "per_class": 1}
    assert_matches_reference(ours, reference_postprocess(pred, priors, **kw), pred, priors)
    with pytest.raises(ValueError, match="unknown post-processing strategy 'fast'"):
        postprocess(pred, priors, strategy="fast")


@pytest.mark.parametrize("strategy", ["per_class", "shortlist"])
def test_postprocess_single_object_survives_nms(strategy):
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]])
    logits = torch.full((1, 3, 3), -10.0)
    logits[0, 0, 1], logits[0, 1, 1], logits[0, 2, 2] = 5.0, 4.0, 3.0
    logits[0, :, 0] = 0.0
    det = postprocess(Prediction(logits, torch.zeros(1, 3, 4)), priors, strategy=strategy)[0]
    # prior 1 overlaps prior 0 with IoU 0.19/0.21 > 0.45 -> suppressed; prior 2 is class 2
    assert det.labels.tolist() == [1, 2]
    torch.testing.assert_close(det.boxes, torch.tensor([[0.4, 0.4, 0.6, 0.6], [0.15, 0.15, 0.25, 0.25]]))


def assert_matches_reference(ours, ref, pred, priors):
    for i, (det, r) in enumerate(zip(ours, ref, strict=True)):
        assert len(det.scores) == len(r)
        torch.testing.assert_close(det.scores, torch.tensor([d[0] for d in r]).reshape(-1))
        assert det.labels.tolist() == [d[1] for d in r]
        torch.testing.assert_close(det.boxes, clip_boxes(decode(pred.box_deltas[i], priors))[[d[2] for d in r]])


def count_paths(monkeypatch):
    import importlib

    pp = importlib.import_module("multibox.postprocess")  # the package re-exports the function under this name

    calls = {"best_pairs": 0, "per_class": 0}
    for name, key in (("_best_pairs", "best_pairs"), ("_per_class", "per_class")):
        original = getattr(pp, name)

        def counted(*args, _original=original, _key=key, **kwargs):
            calls[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(pp, name, counted)
    return calls


@pytest.mark.parametrize(("seed", "top_k", "pre_nms_top_k"), [(4, 10, 30), (5, 25, 200), (6, 3, 5)])
def test_early_termination_on_top_k_equals_reference(monkeypatch, seed, top_k, pre_nms_top_k):
    # 6 classes x 300 priors: the image-wide best pairs settle top_k long before every candidate is resolved.
    calls = count_paths(monkeypatch)
    pred, priors = make_pred(seed, a=300, c=6, sharp=2.0)
    kw = {"top_k": top_k, "pre_nms_top_k": pre_nms_top_k}
    assert_matches_reference(postprocess(pred, priors, **kw), reference_postprocess(pred, priors, **kw), pred, priors)
    assert calls["best_pairs"] >= 1


def test_class_cap_applies_within_the_best_pairs():
    # Class 1 dominates the image: its 40 best pairs fill the image-wide shortlist, but only pre_nms_top_k = 5
    # of them may enter NMS; the rest must not displace classes 2 and 3.
    pred, priors = make_pred(7, b=1, a=200, c=4, sharp=1.0)
    logits = pred.cls_logits.clone()
    logits[0, :40, 1] += 12.0
    pred = Prediction(logits, pred.box_deltas)
    kw = {"top_k": 8, "pre_nms_top_k": 5}
    ref = reference_postprocess(pred, priors, **kw)
    for strategy in ("per_class", "shortlist"):
        assert_matches_reference(postprocess(pred, priors, strategy=strategy, **kw), ref, pred, priors)


def test_heavy_suppression_falls_back_to_every_candidate(monkeypatch):
    # All priors sit on one spot: NMS keeps one box per class, so no shortlist reaches top_k and every image ends
    # in the per-class pass, with the same result as the reference.
    calls = count_paths(monkeypatch)
    g = torch.Generator().manual_seed(8)
    a, c = 120, 5
    priors = torch.tensor([0.5, 0.5, 0.3, 0.3]).expand(a, 4).clone()
    pred = Prediction(torch.randn(2, a, c, generator=g), torch.randn(2, a, 4, generator=g) * 0.01)
    kw = {"top_k": 20, "pre_nms_top_k": 100}
    ours = postprocess(pred, priors, **kw)
    assert_matches_reference(ours, reference_postprocess(pred, priors, **kw), pred, priors)
    assert [len(d.scores) for d in ours] == [4, 4]
    # m = 8 x 20: 4 of 160 pairs survive, so the next list would be 1.25 x 160 x 20 / 4 = 1000 >= 4 x 100: per class
    assert calls == {"best_pairs": 1, "per_class": 1}


def test_class_runs_equal_counting_loop():
    import importlib

    pp = importlib.import_module("multibox.postprocess")
    g = torch.Generator().manual_seed(9)
    labels = torch.randint(0, 5, (3, 40), generator=g)
    mask = torch.rand(3, 40, generator=g) > 0.3
    runs = pp._class_runs(labels, mask, 5)
    rank, counts = runs.rank, runs.counts
    for i in range(3):
        seen = [0] * 5
        for j in range(40):
            if mask[i, j]:
                assert int(rank[i, j]) == seen[int(labels[i, j])], (i, j)
                seen[int(labels[i, j])] += 1
        assert counts[i].tolist() == seen


def test_staged_prefixes_reach_top_k_past_the_first_prefix(monkeypatch):
    # 150 priors see the same object with high scores: the first prefix of pairs (4 x top_k) keeps one box of them
    # and a few scattered ones, so the image needs the pairs further down the same shortlist.
    calls = count_paths(monkeypatch)
    g = torch.Generator().manual_seed(10)
    a, c = 400, 4
    centres = torch.rand(a, 2, generator=g) * 0.8 + 0.1
    priors = torch.cat((centres, torch.full((a, 2), 0.05)), 1)
    priors[:150] = torch.tensor([0.5, 0.5, 0.3, 0.3])  # 150 priors on one spot
    logits = torch.randn(1, a, c, generator=g)
    logits[0, :150, 1] += 8.0  # they hold the best pairs (all of class 1)
    pred = Prediction(logits, torch.randn(1, a, 4, generator=g) * 0.01)
    kw = {"top_k": 40, "pre_nms_top_k": 200}
    import importlib

    pp = importlib.import_module("multibox.postprocess")
    stages = []
    original = pp._nms_pairs
    monkeypatch.setattr(pp, "_nms_pairs", lambda *args: stages.append(int(args[2].sum())) or original(*args))
    ours = postprocess(pred, priors, **kw)
    assert_matches_reference(ours, reference_postprocess(pred, priors, **kw), pred, priors)
    assert len(ours[0].scores) == 40
    assert calls == {"best_pairs": 1, "per_class": 0}
    assert len(stages) >= 2 and stages[0] == 4 * 40  # the first prefix, then its kept pairs plus new ones


@pytest.mark.parametrize(("a", "c", "m"), [(300, 6, 40), (50, 5, 120), (1, 2, 1), (7, 3, 7)])
def test_top_pairs_equal_a_full_sort(a, c, m):
    # m <= A takes the threshold-and-sort branch, m > A the top-k branch; both must list the m best pairs.
    import importlib

    pp = importlib.import_module("multibox.postprocess")
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(3, a, c, generator=g) * 3
    probs = pp._class_major_softmax(logits)
    scores, prior, labels = pp._top_pairs(probs, m)
    best = probs[..., 1:].reshape(3, -1).sort(1, descending=True).values[:, :m]
    torch.testing.assert_close(scores, best, rtol=0, atol=0)
    rows = torch.arange(3)[:, None]
    torch.testing.assert_close(probs[rows, prior, labels], scores, rtol=0, atol=0)
    assert bool((labels >= 1).all()) and bool((labels < c).all())
    pair_ids = prior * c + labels
    assert all(len(set(r.tolist())) == m for r in pair_ids)  # no pair listed twice


def test_top_pairs_break_ties_prior_major():
    # Three priors score 0.2475 on each of four classes (12 tied pairs), seven more have one class at 0.105: the
    # threshold branch sorts those 19 pairs and breaks the tie by prior, so the 10 listed are all four classes of
    # two priors and two of the third, not one class after another (a class-major tie-break would fill a class's
    # pre_nms_top_k cap before any other class is seen).
    import importlib

    pp = importlib.import_module("multibox.postprocess")
    logits = torch.full((1, 30, 5), -10.0)
    logits[0, :, 0] = 0.0
    logits[0, 10:] = torch.tensor([10.0, 0.0, 0.0, 0.0, 0.0])  # background
    logits[0, :3, 1:] = 5.0
    logits[0, 3:10, 1] = -2.0
    probs = pp._class_major_softmax(logits)
    scores, prior, labels = pp._top_pairs(probs, 10)
    torch.testing.assert_close(scores, torch.full((1, 10), float(probs[0, 0, 1])), rtol=0, atol=0)
    assert sorted(torch.bincount(prior[0], minlength=30).tolist()) == [0] * 27 + [2, 4, 4]
    assert int(prior.max()) < 3
    # All scores tied (zero logits): too many pairs at the threshold, so the top-k branch lists 8 distinct tied pairs.
    scores, prior, labels = pp._top_pairs(pp._class_major_softmax(torch.zeros(2, 30, 5)), 8)
    assert torch.equal(scores, torch.full((2, 8), 0.2))
    assert all(len(set((p * 5 + lab).tolist())) == 8 for p, lab in zip(prior, labels, strict=True))
