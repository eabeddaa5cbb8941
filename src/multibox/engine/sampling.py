"""Resumable, shardable training batches whose augmentation does not depend on workers or restarts.

The batch sampler yields ``(epoch, index)`` keys for :class:`multibox.data.loader.TransformedDataset`, which seeds
each sample's augmentation generator from ``(seed, epoch, index)``. The stream of batches is therefore a pure
function of the seed and the step: a run resumed at step ``s`` sees exactly the batches an uninterrupted run sees
from step ``s``, whatever the number of DataLoader workers, and each DDP rank reads its own stride of the same
permutation. (:func:`multibox.data.build_loader` is the epoch-by-epoch loader for user code; this sampler adds
resuming mid-epoch and DDP shards.)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler

from multibox.data.loader import sample_seed

__all__ = ["ResumableBatchSampler"]


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless batches of ``(epoch, index)`` keys, starting at any micro-batch number.

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
            # index 2**40 is a key no sample uses: the permutation's stream is apart from the augmentations'
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, 1 << 40))
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
                yield [(epoch, i) for i in order[b * self.batch_size : (b + 1) * self.batch_size]]
            epoch, offset = epoch + 1, 0
