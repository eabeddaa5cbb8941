"""The synthetic shapes set: determinism, tight boxes, learnable sizes, VOC round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multibox.data import SHAPE_CLASSES, ShapesDataset, VOCDetection, write_voc


def _items(ds: ShapesDataset) -> list:
    return [ds[i] for i in range(len(ds))]


def test_item_format() -> None:
    ds = ShapesDataset(8, image_size=(48, 64), seed=0)
    assert ds.classes == SHAPE_CLASSES == ("circle", "square", "triangle") and len(ds) == 8
    for image, target in _items(ds):
        assert image.dtype == torch.uint8 and image.shape == (3, 48, 64)
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["boxes"].shape == (len(target["labels"]), 4) and len(target["labels"]) >= 1
        assert set(target["labels"].tolist()) <= {1, 2, 3}
        assert target["orig_size"].tolist() == [48, 64] and target["difficult"].sum() == 0
    with pytest.raises(IndexError):
        ds[8]


def test_same_seed_same_data_and_different_seeds_differ() -> None:
    a = _items(ShapesDataset(6, 64, seed=1))
    b = _items(ShapesDataset(6, 64, seed=1, cache=False))
    c = _items(ShapesDataset(6, 64, seed=2))
    for (ia, ta), (ib, tb) in zip(a, b, strict=True):
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
    assert not all(torch.equal(ia, ic) for (ia, _), (ic, _) in zip(a, c, strict=True))
    # Items do not depend on the order they are generated in.
    late = ShapesDataset(6, 64, seed=1)
    assert torch.equal(late[5][0], a[5][0])


def test_boxes_are_tight_integer_and_learnable_sizes() -> None:
    ds = ShapesDataset(40, 96, seed=3)
    sizes, counts = [], []
    for index in range(len(ds)):
        _, boxes, labels, coverage = ds.generate(index, return_coverage=True)
        counts.append(len(labels))
        for box, cov in zip(boxes, coverage, strict=True):
            ys, xs = np.nonzero(cov > 0)
            # Tight: the box is exactly the extent of the visible drawn pixels, in continuous coordinates.
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert (box == np.round(box)).all() and box[0] >= 0 and box[3] <= 96
            sizes.append(max(box[2] - box[0], box[3] - box[1]) / 96)
    assert min(sizes) >= 0.08 and max(sizes) <= 0.75  # ~12-60 % of the side (triangles' height is 0.87 x side)
    assert max(counts) > 1  # several objects per image happen


def test_occlusion_is_limited() -> None:
    ds = ShapesDataset(60, 64, seed=4)
    for index in range(len(ds)):
        _, boxes, _, coverage = ds.generate(index, return_coverage=True)
        # Each object keeps most of its box visible: the coverage fills a good part of the box.
        for box, cov in zip(boxes, coverage, strict=True):
            area = (box[2] - box[0]) * (box[3] - box[1])
            assert cov.sum() / area > 0.25


def test_write_voc_round_trip(tmp_path) -> None:
    ds = ShapesDataset(12, (40, 56), seed=5)
    ids = write_voc(ds, tmp_path / "shapes", "train")
    assert len(ids) == 12 and (tmp_path / "shapes" / "ImageSets" / "Main" / "train.txt").read_text().split() == ids
    back = VOCDetection(tmp_path / "shapes", "train", classes=ds.classes)
    assert back.image_ids == ids
    for (image, target), (image2, target2) in zip(_items(ds), _items(back), strict=True):
        assert torch.equal(image, image2)  # PNG is lossless
        assert torch.equal(target["boxes"], target2["boxes"]) and torch.equal(target["labels"], target2["labels"])
    # Collected classes come back in the same order (they are sorted already).
    assert VOCDetection(tmp_path / "shapes", "train").classes == tuple(sorted(SHAPE_CLASSES))


def test_negatives_allowed() -> None:
    ds = ShapesDataset(20, 32, seed=0, min_objects=0, max_objects=1)
    assert any(len(t["labels"]) == 0 for _, t in _items(ds))
    with pytest.raises(ValueError, match="min_objects"):
        ShapesDataset(1, 32, min_objects=3, max_objects=2)
