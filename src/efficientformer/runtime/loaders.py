"""The per-epoch training loader that classification and the dense tasks share: ``Plan.batches`` of a map-style
data set, resumable exactly at any batch of any epoch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.samplers import SeededSamples, TrainSampler
from ..utils.seeding import derive_seed
from .signals import loader_worker_init


def epoch_loader(
    dataset: Dataset,
    sampler: TrainSampler,
    *,
    seed: int,
    batch_size: int,
    workers: int,
    collate: Callable[[list], Any] | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> Callable[[int, int], DataLoader]:
    """``(epoch, first batch) -> DataLoader`` of this rank's batches of that epoch, from that batch on.

    Augmentation is seeded per sample (:class:`SeededSamples`) and the sampler restarts at ``first batch``, so a run
    resumed mid-epoch sees the batches a straight run saw, whatever the number of workers."""

    def make(epoch: int, start: int) -> DataLoader:
        sampler.set_epoch(epoch, start * batch_size)
        return DataLoader(
            SeededSamples(dataset, seed, epoch),
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate,
            drop_last=drop_last,
            pin_memory=pin_memory,
            worker_init_fn=loader_worker_init,
            # Its own generator: otherwise creating the iterator draws from the global RNG, one draw more in a run
            # resumed mid-epoch than in a straight one.
            generator=torch.Generator().manual_seed(derive_seed(seed, epoch)),
        )

    return make
