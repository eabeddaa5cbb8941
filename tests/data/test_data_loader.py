"""collate, apply_transform and the reproducibility of build_loader (num_workers 0 and 2)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from multibox.data import ShapesDataset, apply_transform, build_loader, collate, train_transform
from multibox.data.transforms import MinIoURandomCrop

MEAN, STD = (123.0, 117.0, 104.0), (1.0, 1.0, 1.0)


def _epoch(loader) -> list:
    return list(loader)


def _same(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for (ia, ta), (ib, tb) in zip(a, b, strict=True):
        if not torch.equal(ia, ib):
            return False
        for x, y in zip(ta, tb, strict=True):
            if x["image_id"] != y["image_id"] or not torch.equal(x["boxes"], y["boxes"]):
                return False
            if not torch.equal(x["labels"], y["labels"]):
                return False
    return True


@pytest.fixture(scope="module")
def shapes() -> ShapesDataset:
    return ShapesDataset(14, 48, seed=11)


def test_collate_stacks_images_and_keeps_targets() -> None:
    batch = [(torch.zeros(3, 4, 5), {"boxes": torch.zeros(k, 4)}) for k in range(3)]
    images, targets = collate(batch)
    assert images.shape == (3, 3, 4, 5) and [len(t["boxes"]) for t in targets] == [0, 1, 2]
    with pytest.raises(ValueError, match="different sizes"):
        collate([(torch.zeros(3, 4, 5), {}), (torch.zeros(3, 5, 5), {})])


def test_apply_transform_keeps_per_box_entries_aligned() -> None:
    image = torch.zeros(3, 50, 50, dtype=torch.uint8)
    target = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 48.0, 48.0], [20.0, 20.0, 30.0, 30.0]]),
        "labels": torch.tensor([1, 2, 3]),
        "difficult": torch.tensor([False, True, False]),
        "image_id": "x",
        "orig_size": torch.tensor([50, 50]),
    }
    crop = MinIoURandomCrop()
    dropped = 0
    for seed in range(30):
        _, out = apply_transform(crop, image, target, torch.Generator().manual_seed(seed))
        rows = [target["labels"].tolist().index(label) for label in out["labels"].tolist()]
        assert out["difficult"].tolist() == [target["difficult"][r].item() for r in rows]
        assert out["image_id"] == "x" and out["orig_size"].tolist() == [50, 50]
        dropped += len(rows) < 3
    assert dropped > 0  # the crop did drop boxes in some draws


@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_seed_same_batches(shapes, num_workers) -> None:
    transform = train_transform(32, MEAN, STD)

    def make(seed: int):
        return build_loader(shapes, 4, transform, shuffle=True, num_workers=num_workers, seed=seed)

    a, b = make(5), make(5)
    a0, a1 = _epoch(a), _epoch(a)
    assert _same(a0, _epoch(b)) and _same(a1, _epoch(b))
    assert not _same(a0, a1)  # the epoch changes order and augmentation
    assert not _same(a0, _epoch(make(6)))
    a.set_epoch(0)
    assert _same(a0, _epoch(a))
    assert [len(t) for _, t in a0] == [4, 4, 4, 2]
    images, targets = a0[0]
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert all((t["boxes"] >= 0).all() and (t["boxes"] <= 1).all() for t in targets)


def test_batches_do_not_depend_on_the_number_of_workers(shapes) -> None:
    transform = train_transform(32, MEAN, STD)
    zero = build_loader(shapes, 3, transform, shuffle=True, num_workers=0, seed=9, drop_last=True)
    two = build_loader(shapes, 3, transform, shuffle=True, num_workers=2, seed=9, drop_last=True)
    kept = build_loader(
        shapes, 3, transform, shuffle=True, num_workers=2, seed=9, drop_last=True, persistent_workers=True
    )
    for _ in range(2):  # two epochs
        z = _epoch(zero)
        assert len(z) == 4 and _same(z, _epoch(two)) and _same(z, _epoch(kept))


def _global_rng_transform(image, boxes, labels, generator=None):
    noise = random.random() + float(np.random.rand())  # noqa: NPY002 (the global generator is the point) + float(torch.rand(()))
    return image.float() + noise, boxes, labels


def test_workers_seed_global_generators(shapes) -> None:
    def run() -> list:
        loader = build_loader(shapes, 7, _global_rng_transform, num_workers=2, seed=3)
        return [images for images, _ in loader]

    first, second = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))


def test_no_transform_and_validation(shapes) -> None:
    loader = build_loader(shapes, 2)
    images, targets = next(iter(loader))
    assert images.dtype == torch.uint8 and targets[0]["image_id"] == shapes.image_id(0)
    with pytest.raises(ValueError, match="batch_size"):
        build_loader(shapes, 0)
    with pytest.raises(ValueError, match="seed"):
        build_loader(shapes, 1, seed=-1)
