"""The confusion matrix against hand-computed cases, and the report folder of a real (tiny) run."""

from __future__ import annotations

import json
import re

import torch

from multibox.cli import main
from multibox.config import load_config
from multibox.engine.builders import build_dataset
from multibox.engine.report import build_report
from multibox.engine.train import train
from multibox.metrics.confusion import confusion_matrix, match_image
from multibox.structures import Detections
from test_engine import tiny_overrides


def _det(boxes, scores, labels) -> Detections:
    return Detections(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(scores),
                      torch.tensor(labels, dtype=torch.int64))  # fmt: skip


def _gt(boxes, labels, difficult=None) -> dict:
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels).long()}
    if difficult is not None:
        t["difficult"] = torch.tensor(difficult)
    return t


def test_every_kind_of_outcome_by_hand() -> None:
    gt = _gt([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [1, 2, 1])
    det = _det(
        [[0, 0, 10, 10], [20, 20, 30, 31], [60, 60, 70, 70], [40, 40, 50, 50], [0, 0, 10, 10]],
        [0.9, 0.8, 0.7, 0.1, 0.85],
        [1, 1, 2, 1, 1],
    )
    r = confusion_matrix([det], [gt], num_classes=3, score_thresh=0.3)
    expected = torch.zeros(3, 3, dtype=torch.int64)
    expected[1, 1] = 1  # A found as class 1
    expected[2, 1] = 1  # B (class 2) found as class 1: IoU 100/110
    expected[0, 2] = 1  # a box where there is nothing
    expected[0, 1] = 1  # the duplicate of A: A is taken, nothing else overlaps
    expected[1, 0] = 1  # C missed: its only detection scores 0.1 < 0.3
    assert torch.equal(r.matrix, expected)
    e = r.images[0]
    assert (e.correct, e.wrong_class, e.missed, e.false, e.errors) == (1, 1, 1, 2, 4)


def test_empty_cases() -> None:
    none = _det([], [], [])
    r = confusion_matrix([none, none, _det([[0, 0, 5, 5]] * 2, [0.9, 0.8], [2, 2])],
                         [_gt([], []), _gt([[0, 0, 5, 5], [10, 10, 20, 20]], [1, 2]), _gt([], [])], 3)  # fmt: skip
    assert r.matrix.tolist() == [[0, 0, 2], [1, 0, 0], [1, 0, 0]]  # two missed (classes 1, 2), two false (class 2)
    assert [i.errors for i in r.images] == [0, 2, 2]


def test_greedy_by_score_and_iou_threshold_inclusive() -> None:
    gt = _gt([[0, 0, 10, 10]], [1])
    # listed second but scored higher: it takes the box, the other becomes a false box of its class
    m, e = match_image(torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]]), torch.tensor([0.5, 0.9]),
                       torch.tensor([1, 2]), gt["boxes"], gt["labels"], None, 3)  # fmt: skip
    assert m.tolist() == [[0, 1, 0], [0, 0, 1], [0, 0, 0]] and (e.wrong_class, e.false) == (1, 1)
    # IoU exactly 0.5 ([0, 0, 10, 5] inside [0, 0, 10, 10]) matches; just below does not
    m, _ = match_image(torch.tensor([[0.0, 0, 10, 5]]), torch.tensor([0.9]), torch.tensor([1]), gt["boxes"],
                       gt["labels"], None, 3)  # fmt: skip
    assert m[1, 1] == 1
    m, _ = match_image(torch.tensor([[0.0, 0, 10, 4.9]]), torch.tensor([0.9]), torch.tensor([1]), gt["boxes"],
                       gt["labels"], None, 3)  # fmt: skip
    assert m[1, 0] == 1 and m[0, 1] == 1


def test_difficult_boxes_count_nowhere() -> None:
    gt = _gt([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], difficult=[True, True])
    det = _det([[0, 0, 10, 10]], [0.9], [2])
    r = confusion_matrix([det], [gt], 3)
    assert int(r.matrix.sum()) == 0 and r.images[0].errors == 0


def test_report_of_a_tiny_run(tmp_path, capsys) -> None:
    cfg = load_config("ssd_tiny_shapes", tiny_overrides(tmp_path / "run", steps=3, **{"train.eval_every": 3}))
    train(cfg, progress=False)
    page = build_report(tmp_path / "run", score=0.05, samples=3, worst=2)
    folder = tmp_path / "run" / "report"
    assert page == folder / "report.html"
    data = json.loads((folder / "report.json").read_text())
    val = build_dataset(cfg.data, "val", cfg.model.image_size)
    counts = torch.bincount(torch.cat([val[i][1]["labels"] for i in range(len(val))]), minlength=4)
    matrix = torch.tensor(data["confusion"]["matrix"])
    assert data["confusion"]["labels"] == ["background", "circle", "square", "triangle"]
    assert matrix[1:].sum(1).tolist() == counts[1:].tolist()  # every true box once: found, confused or missed
    assert [r["gt_boxes"] for r in data["per_class"]] == counts[1:].tolist()
    assert data["weights"].endswith("best.pt") and data["metrics"]["images"] == len(val)
    assert all(w["missed"] + w["false"] + w["wrong_class"] > 0 for w in data["worst"]) and len(data["worst"]) <= 2
    text = page.read_text()
    assert text.count("data:image/png;base64,") == len(data["images"]) >= 3
    assert not re.search(r'src="(?!data:)', text)  # self-contained: nothing fetched
    assert main(["report", str(tmp_path / "run"), "--split", "val"]) == 0
    assert "report written to" in capsys.readouterr().out
    assert main(["report", str(tmp_path)]) != 0
    assert "no config.json" in capsys.readouterr().err
