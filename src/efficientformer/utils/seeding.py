"""The one rule that turns a run's seed and a position in the run (an epoch, a step) into the seed of a stream
private to that position.

Every per-epoch or per-step stream (sampler permutation, loader generator, per-sample augmentation seeds, the
search's subnet draws) derives from it, so a run resumed at epoch ``e`` or step ``s`` rebuilds exactly the stream a
straight run used there. Changing the formula changes every such stream: resumed runs would no longer match the
checkpoints of straight ones.
"""

from __future__ import annotations

# A prime larger than any epoch or step count: distinct (seed, position) pairs give distinct seeds in practice.
_SEED_STRIDE = 1_000_003


def derive_seed(base: int, position: int) -> int:
    """``base * 1_000_003 + position``: the seed of the stream for ``position`` (epoch or step) of a run seeded
    ``base``."""
    return base * _SEED_STRIDE + position
