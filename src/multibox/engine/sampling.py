"""Resumable, shardable training batches whose augmentation does not depend on workers or restarts.

The batch sampler yields ``(index, epoch)`` pairs; :class:`AugmentedDataset` seeds each sample's augmentation
generator from ``(seed, epoch, index)``. The stream of batches is therefore a pure function of the seed and the
step: a run resumed at step ``s`` sees exactly the batches an uninterrupted run sees from step ``s``, whatever
the number of DataLoader workers, and each DDP rank reads its own stride of the same permutation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

__all__ = ["AugmentedDataset", "ResumableBatchSampler", "collate_train", "sample_seed"]

_MIX = 0x9E3779B97F4A7C15


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that differs for every ``(seed, epoch, index)`` (splitmix64-style mixing)."""
    z = (seed * 1_000_003 + epoch * 7_919 + index * 104_729 + _MIX) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless batches of ``(index, epoch)``, starting at any micro-batch number.

    Each epoch is a permutation seeded by ``(seed, epoch)``; rank ``r`` of ``world_size`` takes positions
    ``r, r + world_size, ...`` of it; incomplete last batches are dropped so that every rank takes the same number
    of steps.

    Args:
        num_samples: dataset size.
        batch_size: per-rank batch size.
        seed: the run's seed.
        shuffle: permute each epoch (else dataset order).
        rank, world_size: the DDP shard.
        start_batch: the number of batches already consumed (for resuming).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"the training set has {num_samples} images, fewer than one batch of {batch_size} per process "
                f"(x{world_size} processes); lower train.batch_size"
            )

    @property
    def batches_per_epoch(self) -> int:
        return (self.num_samples // self.world_size) // self.batch_size

    def epoch_order(self, epoch: int) -> Tensor:
        """This rank's sample indices for ``epoch``."""
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, -1))
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        bpe = self.batches_per_epoch
        epoch, offset = divmod(self.start_batch, bpe)
        while True:
            order = self.epoch_order(epoch).tolist()
            for b in range(offset, bpe):
                yield [(i, epoch) for i in order[b * self.batch_size : (b + 1) * self.batch_size]]
            epoch, offset = epoch + 1, 0


class AugmentedDataset(Dataset):
    """Applies a ``(image, boxes, labels, generator)`` transform with a per-sample generator.

    Items of the wrapped dataset are ``(image uint8 Tensor[3, H, W], {"boxes": Tensor[N, 4] pixels xyxy,
    "labels": Tensor[N]})``; this returns ``(image float Tensor[3, S, S], boxes Tensor[N, 4] in [0, 1],
    labels Tensor[N], image_id)`` where ``image_id`` is the target's ``"image_id"`` (else the index), so
    that an error can name the images of a bad batch.

    Args:
        dataset: the source dataset.
        transform: the augmentation pipeline.
        seed: the run's seed; an item key is ``index`` (seeded with epoch 0) or ``(index, epoch)``.
    """

    def __init__(self, dataset: Dataset, transform: Callable[..., Any], seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Any]:
        index, epoch = (key, 0) if isinstance(key, int) else key
        image, target = self.dataset[index]
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        image, boxes, labels = self.transform(image, target["boxes"], target["labels"], g)
        return image, boxes, labels, target.get("image_id", index)


def collate_train(
    batch: list[tuple[Tensor, Tensor, Tensor, Any]],
) -> tuple[Tensor, list[tuple[Tensor, Tensor]], list[Any]]:
    """Stack images ``[B, 3, S, S]``; keep per-image ``(boxes, labels)`` and the image ids."""
    images = torch.stack([b[0] for b in batch])
    return images, [(b[1], b[2]) for b in batch], [b[3] for b in batch]
