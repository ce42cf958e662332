"""How training and evaluation data are split over processes and made reproducible.

:class:`TrainSampler` gives each rank its share of a seeded per-epoch permutation (optionally with repeated
augmentation) and can start part-way through an epoch; :class:`SeededSamples` draws the random augmentation of
sample ``i`` in epoch ``e`` from a seed of ``(seed, e, i)`` alone. Together they make a resumed run train on
exactly the data of a straight one, whatever the number of loader workers. :class:`EvalSampler` counts every
image exactly once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..utils.seeding import derive_seed


class TrainSampler(Sampler[int]):
    """This rank's indices of a permutation seeded by ``(seed, epoch)``, identical on every rank.

    Rank ``r`` takes every ``world``-th position, so step ``i`` of all ranks together covers the samples a single
    process with the global batch sees at step ``i``; the permutation is padded by wrapping so every rank gets
    the same count. With ``repeats > 1`` every index is repeated (repeated augmentation, as in the recipe) and an
    epoch keeps ``floor(n / 256) * 256`` samples in total, about ``1/repeats`` unique images: the published
    convention. ``set_epoch(epoch, start)`` skips the ``start`` samples of this rank already consumed.
    """

    def __init__(
        self, n: int, rank: int = 0, world: int = 1, seed: int = 0, repeats: int = 1, shuffle: bool = True
    ) -> None:
        if n < 1:
            raise ValueError("the training split is empty")
        self.n, self.rank, self.world, self.seed = n, rank, world, seed
        self.repeats, self.shuffle = max(1, repeats), shuffle
        self.epoch, self.start = 0, 0
        total = ((n // 256) * 256 or n) if self.repeats > 1 else n
        self.per_rank = math.ceil(total / world)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.start, self.seed = int(state["epoch"]), int(state.get("start", 0)), int(state["seed"])

    def indices(self) -> list[int]:
        """All of this rank's indices for the current epoch (ignoring ``start``)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        if self.repeats > 1:
            order = order.repeat_interleave(self.repeats)
        needed = self.per_rank * self.world
        if needed > len(order):
            order = order.repeat(math.ceil(needed / len(order)))
        return order[:needed][self.rank :: self.world].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start


class EvalSampler(Sampler[int]):
    """Rank ``r`` gets indices ``r, r + world, ...`` in order, without padding: every image is counted once."""

    def __init__(self, n: int, rank: int = 0, world: int = 1) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class SeededSamples(Dataset):
    """A view of ``dataset`` whose random augmentation of sample ``i`` in epoch ``e`` comes from a seed of
    ``(seed, e, i)`` alone, in forks of the torch, Python and numpy RNGs that leave the caller's streams untouched.

    So the augmented data do not depend on the number of loader workers or on where in an epoch a resumed run
    starts, and the global RNG, which the checkpoint restores, is consumed by the model only."""

    def __init__(self, dataset: Dataset, seed: int, epoch: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        sample_seed = (derive_seed(self.seed, self.epoch) * 10_000_019 + index) % 2**63
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed)
                random.seed(sample_seed)
                np.random.seed(sample_seed % 2**32)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: numpy and Python RNGs of a loader worker follow its torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
