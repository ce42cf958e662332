"""Samplers that split data over processes: training (optionally with repeated augmentation) and exact evaluation."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


class TrainSampler(Sampler[int]):
    """Shuffled indices for one rank, identical permutation on every rank (seeded by ``seed + epoch``).

    Rank ``r`` takes every ``world``-th position, so step ``i`` of all ranks together covers exactly the samples a
    single process with the global batch would see at step ``i``. With ``repeats > 1`` each index is repeated
    (repeated augmentation, as in the recipe) and an epoch keeps ``floor(len / 256) * 256`` samples in total,
    about ``1/repeats`` unique images, the published convention.
    """

    def __init__(self, n: int, rank: int = 0, world: int = 1, seed: int = 0, repeats: int = 1) -> None:
        self.n, self.rank, self.world, self.seed, self.repeats = n, rank, world, seed, max(1, repeats)
        self.epoch = 0
        if self.repeats > 1:
            total = (n // 256) * 256 if n >= 256 else n
        else:
            total = n
        self.num_samples = math.ceil(total / world) if self.repeats > 1 else n // world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g)
        if self.repeats > 1:
            order = order.repeat_interleave(self.repeats)
            needed = self.num_samples * self.world
            if needed > len(order):
                order = torch.cat([order, order[: needed - len(order)]])
        else:
            order = order[: self.num_samples * self.world]
        return iter(order[self.rank :: self.world][: self.num_samples].tolist())

    def __len__(self) -> int:
        return self.num_samples


class EvalSampler(Sampler[int]):
    """Rank ``r`` gets indices ``r, r + world, ...`` in order, without padding: every image is counted once."""

    def __init__(self, n: int, rank: int = 0, world: int = 1) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
