"""COCO evaluation: our in-memory COCO against pycocotools run by hand, id mapping, crowd regions."""

from __future__ import annotations

import copy
import math
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from multibox import Detections
from multibox.metrics import COCO_STAT_NAMES, category_id_to_label, coco_evaluate, to_coco_results

# COCO 2017's 80 category ids: 1..90 with 10 gaps.
COCO80 = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]


def pycocotools_stats(dataset: dict, results: list[dict]) -> np.ndarray:
    """pycocotools used directly, as its README shows, on a dataset dict and a results list."""
    gt = COCO()
    gt.dataset = copy.deepcopy(dataset)
    gt.createIndex()
    dt = gt.loadRes(copy.deepcopy(results))
    ev = COCOeval(gt, dt, iouType="bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def random_dataset(seed: int, category_ids: list[int], num_images: int = 8) -> tuple[dict, list[dict]]:
    """A COCO-format dataset (xywh, mixed sizes, a few crowds) and results: jittered GT copies plus clutter.

    Coordinates are multiples of 1/4 so that xywh <-> xyxy is exact in float32.
    """
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id * 10, "height": 480, "width": 640})  # ids need not be 1..N
        for _ in range(int(rng.integers(0, 7))):
            size = rng.choice([12.0, 40.0, 150.0]) * rng.uniform(0.7, 1.3, 2)
            xy = rng.uniform(0, 400, 2)
            bbox = np.round(np.concatenate([xy, size]) * 4) / 4
            cat = int(rng.choice(category_ids))
            crowd = int(rng.random() < 0.1)
            anns.append(
                {"id": len(anns) + 1, "image_id": image_id * 10, "category_id": cat, "bbox": bbox.tolist(),
                 "area": float(bbox[2] * bbox[3]), "iscrowd": crowd}
            )  # fmt: skip
            for _ in range(int(rng.integers(0, 3))):
                jitter = np.round(rng.normal(0, 0.1, 4) * np.tile(bbox[2:], 2) * 4) / 4
                box = bbox + jitter
                box[2:] = np.maximum(box[2:], 1.0)
                results.append(
                    {"image_id": image_id * 10, "category_id": cat, "bbox": box.tolist(),
                     "score": float(np.round(rng.random(), 2))}
                )  # fmt: skip
        for _ in range(int(rng.integers(0, 3))):
            box = np.round(np.concatenate([rng.uniform(0, 400, 2), rng.uniform(8, 120, 2)]) * 4) / 4
            results.append(
                {"image_id": image_id * 10, "category_id": int(rng.choice(category_ids)), "bbox": box.tolist(),
                 "score": float(np.round(rng.random(), 2))}
            )  # fmt: skip
    categories = [{"id": c, "name": f"c{c}"} for c in category_ids]
    return {"images": images, "categories": categories, "annotations": anns}, results


def to_ours(dataset: dict, results: list[dict], category_ids: list[int]) -> tuple[list, list, list[int], list]:
    """The same data as per-image tensors with contiguous labels (label = position in category_ids + 1)."""
    to_label = {c: i + 1 for i, c in enumerate(category_ids)}
    image_ids = [im["id"] for im in dataset["images"]]

    def xyxy(b: list[float]) -> list[float]:
        return [b[0], b[1], b[0] + b[2], b[1] + b[3]]

    gts, dets = [], []
    for image_id in image_ids:
        a = [x for x in dataset["annotations"] if x["image_id"] == image_id]
        gts.append(
            {
                "boxes": torch.tensor([xyxy(x["bbox"]) for x in a], dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor([to_label[x["category_id"]] for x in a], dtype=torch.int64),
                "iscrowd": torch.tensor([bool(x["iscrowd"]) for x in a], dtype=torch.bool),
            }
        )
        r = [x for x in results if x["image_id"] == image_id]
        dets.append(
            Detections(
                torch.tensor([xyxy(x["bbox"]) for x in r], dtype=torch.float32).reshape(-1, 4),
                torch.tensor([x["score"] for x in r], dtype=torch.float32),
                torch.tensor([to_label[x["category_id"]] for x in r], dtype=torch.int64),
            )
        )
    sizes = [(im["height"], im["width"]) for im in dataset["images"]]
    return dets, gts, image_ids, sizes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pycocotools_used_directly(seed: int, capsys: pytest.CaptureFixture) -> None:
    category_ids = [1, 3, 7, 90]  # non-contiguous
    dataset, results = random_dataset(seed, category_ids)
    # float32 scores as our tensors hold them, so that ties and order are the same on both sides
    for r in results:
        r["score"] = float(np.float32(r["score"]))
    expected = pycocotools_stats(dataset, results)
    capsys.readouterr()
    dets, gts, image_ids, sizes = to_ours(dataset, results, category_ids)
    stats = coco_evaluate(dets, gts, sizes, category_ids, image_ids=image_ids)
    assert capsys.readouterr().out == ""  # pycocotools' prints are silenced by default
    assert list(stats) == list(COCO_STAT_NAMES)
    got = np.array([stats[n] for n in COCO_STAT_NAMES])
    np.testing.assert_allclose(got, np.where(expected == -1, np.nan, expected), atol=1e-12)
    assert not np.isnan(got[:3]).any() and 0 < got[0] < 1  # a non-trivial case


def test_results_format_and_id_round_trip() -> None:
    labels = torch.arange(1, 81)
    boxes = torch.tensor([[10.0, 20.0, 15.0, 30.0]]).repeat(80, 1)
    det = Detections(boxes, torch.linspace(1, 0.2, 80), labels)
    results = to_coco_results([det], image_ids=[397133], category_ids=COCO80)
    assert [r["category_id"] for r in results] == COCO80
    assert results[0] == {"image_id": 397133, "category_id": 1, "bbox": [10.0, 20.0, 5.0, 10.0], "score": 1.0}
    back = category_id_to_label(COCO80)
    assert [back[r["category_id"]] for r in results] == labels.tolist()
    assert back[90] == 80 and back[13] == 12
    # A mapping works the same way; None keeps labels as ids.
    as_dict = {i + 1: c for i, c in enumerate(COCO80)}
    assert to_coco_results([det], [397133], as_dict) == results
    assert category_id_to_label(as_dict) == back
    assert [r["category_id"] for r in to_coco_results([det], [1])] == labels.tolist()


def test_mapping_errors() -> None:
    det = Detections(torch.zeros(1, 4), torch.ones(1), torch.tensor([3]))
    with pytest.raises(ValueError, match="label 3 has no category id"):
        to_coco_results([det], [1], [5, 6])
    with pytest.raises(ValueError, match="same category id"):
        category_id_to_label([5, 5])
    with pytest.raises(ValueError, match="2 image ids"):
        to_coco_results([det], [1, 2])


def test_crowd_regions_are_ignored() -> None:
    # One image, one class. A = [10,10,60,60] (50x50: medium), crowds B and C (100x100: large).
    # Detections: exactly on B at 0.9, exactly on A at 0.8; nothing on C.
    # With crowds: the B detection is ignored (neither TP nor FP) and C is not a positive, so A is the only
    # positive, found at precision 1 at every IoU: AP = AP50 = AP75 = APm = 1. No small object and no large
    # non-crowd object: APs = APl = NaN. AR1 keeps only the top detection (the one on B): AR1 = 0; AR10 = 1.
    a, b, c = [10, 10, 60, 60], [100, 100, 200, 200], [300, 300, 400, 400]
    det = Detections(torch.tensor([b, a], dtype=torch.float32), torch.tensor([0.9, 0.8]), torch.tensor([1, 1]))
    gt = {"boxes": torch.tensor([a, b, c], dtype=torch.float32), "labels": torch.tensor([1, 1, 1])}
    stats = coco_evaluate([det], [{**gt, "iscrowd": torch.tensor([False, True, True])}])
    # (pycocotools averages 101 precision samples: 1 up to rounding)
    assert [stats[k] for k in ("AP", "AP50", "AP75", "APm")] == pytest.approx([1.0] * 4, abs=1e-12)
    assert math.isnan(stats["APs"]) and math.isnan(stats["APl"])
    assert stats["AR1"] == 0.0 and [stats[k] for k in ("AR10", "AR100", "ARm")] == pytest.approx([1.0] * 3)
    # The same boxes without the crowd flags: 3 positives, 2 found: recall 2/3 caps every AP below 1.
    plain = coco_evaluate([det], [gt])
    assert plain["AR100"] == pytest.approx(2 / 3) and plain["AP"] < 0.7


def test_given_area_decides_the_size_bucket() -> None:
    # A 50x50 box is medium by its box area; given area=500 (< 32^2) it counts as small.
    box = [[10.0, 10.0, 60.0, 60.0]]
    det = Detections(torch.tensor(box), torch.tensor([0.9]), torch.tensor([1]))
    by_box = coco_evaluate([det], [{"boxes": torch.tensor(box), "labels": torch.tensor([1])}])
    assert by_box["APm"] == pytest.approx(1.0) and math.isnan(by_box["APs"])
    by_area = coco_evaluate([det], [{"boxes": torch.tensor(box), "labels": torch.tensor([1]), "area": [500.0]}])
    assert by_area["APs"] == pytest.approx(1.0) and math.isnan(by_area["APm"])


def test_no_detections_and_no_images() -> None:
    box = torch.tensor([[10.0, 10.0, 60.0, 60.0]])
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    stats = coco_evaluate([empty], [{"boxes": box, "labels": torch.tensor([2])}], category_ids=[4, 8])
    assert stats["AP"] == 0.0 and stats["AR100"] == 0.0 and math.isnan(stats["APl"])
    assert all(math.isnan(v) for v in coco_evaluate([], []).values())


def test_warnings_speak_to_the_user() -> None:
    det = Detections(torch.tensor([[0.1, 0.1, 0.5, 0.5]]), torch.tensor([0.9]), torch.tensor([1]))
    gt = {"boxes": torch.tensor([[0.1, 0.1, 0.5, 0.5]]), "labels": torch.tensor([1]), "difficult": [True]}
    with pytest.warns(UserWarning) as record:
        coco_evaluate([det], [gt])
    messages = " ".join(str(w.message) for w in record)
    assert "1 ground-truth boxes are marked difficult" in messages and "within [0, 1]" in messages


def test_verbose_lets_pycocotools_print(capsys: pytest.CaptureFixture) -> None:
    box = torch.tensor([[10.0, 10.0, 60.0, 60.0]])
    det = Detections(box, torch.tensor([0.9]), torch.tensor([1]))
    coco_evaluate([det], [{"boxes": box, "labels": torch.tensor([1])}], verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_missing_pycocotools_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)  # makes `import pycocotools.coco` fail
    with pytest.raises(ImportError, match=r"pip install 'multibox\[eval\]'"):
        coco_evaluate([], [])
