"""Batching detection samples reproducibly: :func:`collate`, :func:`build_loader`, per-sample seeding.

Reproducibility. Each sample's augmentation draws from its own ``torch.Generator`` seeded from
``(seed, epoch, index)`` (:func:`sample_seed`), so a batch depends only on the seed, the epoch and the shuffled
order (itself seeded from ``(seed, epoch)``), not on the number of workers or on which worker read it: the same
seed gives identical batches with ``num_workers=0`` or ``2``. Each worker process also seeds ``random``, NumPy and
torch's global generators from ``(seed, epoch, worker id)`` (:func:`seed_worker`) for any transform that uses them.

The epoch advances by one each time the loader is iterated; :meth:`DetectionLoader.set_epoch` sets it (e.g. when
resuming a run).

Unreadable images. A reader built with ``on_error="skip"`` gives ``None`` for an item whose image fails to decode
(with a warning naming the file and the reason, printed by the process that read it, a worker or the main
process); :func:`collate` leaves such items out, so the batch is smaller, and a batch left empty is ``None``, which
:class:`DetectionLoader` does not yield. Under ``on_error="raise"`` the error names the file.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "PER_BOX_KEYS",
    "DetectionLoader",
    "TransformedDataset",
    "apply_transform",
    "build_loader",
    "collate",
    "sample_seed",
    "seed_worker",
]

#: Target entries that hold one row per box and must stay aligned with ``"boxes"`` through the transforms.
PER_BOX_KEYS: tuple[str, ...] = ("labels", "difficult", "iscrowd")

TransformFn = Callable[..., tuple[Tensor, Tensor, Tensor]]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of ``epoch`` (NumPy's SeedSequence mixing, so nearby inputs decorrelate)."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def seed_worker(seed: int, epoch: int, worker_id: int) -> None:
    """Seed ``random``, NumPy and torch in a worker from ``(seed, epoch, worker_id)`` (a DataLoader worker_init_fn)."""
    s = sample_seed(seed, epoch, 1_000_000_007 + worker_id)
    random.seed(s)
    np.random.seed(s % (1 << 32))  # noqa: NPY002 (the legacy global generator is what user transforms may use)
    torch.manual_seed(s)


def apply_transform(
    transform: TransformFn,
    image: Tensor,
    target: dict[str, Any],
    generator: torch.Generator | None = None,
    per_box_keys: Sequence[str] = PER_BOX_KEYS,
) -> tuple[Tensor, dict[str, Any]]:
    """Run a ``(image, boxes, labels, generator)`` transform on a dataset item, keeping every per-box entry aligned.

    The row indices travel through the transform in place of the labels; ``labels``, ``difficult``, ``iscrowd``
    (``per_box_keys``) are then gathered with the surviving indices.

    Returns:
        ``(image, target)`` with ``target["boxes"]`` as the transform returns them; other entries are copied.
    """
    boxes = target["boxes"]
    rows = torch.arange(boxes.shape[0])
    image, boxes, rows = transform(image, boxes, rows, generator)
    out = dict(target)
    out["boxes"] = boxes
    for key in per_box_keys:
        if key in target:
            out[key] = target[key][rows]
    return image, out


def collate(
    batch: Sequence[tuple[Tensor, dict[str, Any]] | None],
) -> tuple[Tensor, list[dict[str, Any]]] | None:
    """Stack ``B`` images ``Tensor[3, H, W]`` into ``Tensor[B, 3, H, W]``; targets stay a list of dicts.

    ``None`` items (images a reader skipped, see the module docstring) are left out, so ``B`` may be smaller than
    the batch size; a batch of nothing but ``None`` gives ``None``.

    Raises:
        ValueError: the images differ in size (a transform that resizes to a fixed size is missing).
    """
    batch = [item for item in batch if item is not None]
    if not batch:
        return None
    images = [item[0] for item in batch]
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise ValueError(
            f"cannot stack images of different sizes {sorted(shapes)}; use a transform that resizes to a fixed "
            "size (train_transform / eval_transform)"
        )
    return torch.stack(images), [item[1] for item in batch]


class TransformedDataset(Dataset):
    """A dataset whose items are augmented with a per-sample seeded generator.

    Items are addressed by ``(epoch, index)`` keys (a plain ``index`` means epoch 0).

    Args:
        dataset: items ``(uint8 image, target dict)`` as :class:`~multibox.data.VOCDetection` returns them, or
            ``None`` for an item the reader skipped (passed on as ``None``).
        transform: a ``(image, boxes, labels, generator)`` transform, or None.
        seed: the base seed of :func:`sample_seed`.
    """

    def __init__(self, dataset: Dataset, transform: TransformFn | None, seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, dict[str, Any]] | None:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        item = self.dataset[index]
        if item is None:  # skipped by the reader (on_error="skip"), which has warned
            return None
        image, target = item
        if self.transform is None:
            return image, target
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        return apply_transform(self.transform, image, target, generator)


class _EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` keys; the order is shuffled from ``(seed, epoch)`` and computed eagerly."""

    def __init__(self, size: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int) -> None:
        self.size, self.batch_size, self.shuffle, self.drop_last, self.seed = size, batch_size, shuffle, drop_last, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.size // self.batch_size if self.drop_last else -(-self.size // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, (1 << 32) - 1))
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        keys = [(epoch, i) for i in order]
        batches = [keys[k : k + self.batch_size] for k in range(0, len(keys), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return iter(batches)


class DetectionLoader(DataLoader):
    """A :class:`~torch.utils.data.DataLoader` whose epoch (and so its seeds) advances at each iteration.

    A batch whose every image was skipped by the reader (``None`` from :func:`collate`) is not yielded.
    """

    def __init__(self, dataset: TransformedDataset, batch_sampler: _EpochBatchSampler, seed: int, **kwargs: Any):
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self._epoch_sampler = batch_sampler
        self._seed = seed
        self._next_epoch = 0

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will use."""
        return self._next_epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use ``epoch`` (its shuffle order and augmentation seeds)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._next_epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        epoch = self._next_epoch
        self._next_epoch += 1
        self._epoch_sampler.epoch = epoch
        self.worker_init_fn = functools.partial(seed_worker, self._seed, epoch)
        return (batch for batch in super().__iter__() if batch is not None)  # None: every image of it was skipped


def build_loader(
    dataset: Dataset,
    batch_size: int,
    transform: TransformFn | None = None,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> DetectionLoader:
    """A loader of ``(images Tensor[B, 3, H, W], targets list[dict])`` batches, reproducible from ``seed``.

    Args:
        dataset: items ``(image, target)`` (VOCDetection, COCODetection, ShapesDataset...).
        batch_size: images per batch.
        transform: applied to each item with a generator seeded from ``(seed, epoch, index)``; it must produce
            images of one size for batching (e.g. :func:`~multibox.data.train_transform`).
        shuffle: shuffle each epoch (the order is seeded from ``(seed, epoch)``).
        num_workers: worker processes (0: load in the main process); results do not depend on it.
        seed: the base seed (a non-negative int).
        drop_last: drop the last incomplete batch.
        pin_memory: pin batches in page-locked memory (for CUDA training).
        persistent_workers: keep the workers between epochs (saves their start-up); batches stay the same, but
            the workers' global generators are then seeded once, from epoch 0.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    wrapped = TransformedDataset(dataset, transform, seed)
    sampler = _EpochBatchSampler(len(wrapped), batch_size, shuffle, drop_last, seed)
    return DetectionLoader(
        wrapped,
        sampler,
        seed,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        worker_init_fn=functools.partial(seed_worker, seed, 0),
        generator=torch.Generator().manual_seed(seed),
    )
