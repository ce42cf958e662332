"""The V2 search space: width grid per stage, elastic depth, per-block expansion, per-block attention (stages 3-4).

A subnet is a :class:`~efficientformer.models.base.ModelSpec` (family ``v2``) whose widths are on the grid, whose
depths are within bounds (a stage keeps its *first* ``depth`` blocks of the supernet), whose expansion ratios are
among the choices and whose attention flags are set only in stages 3 and 4. The largest subnet has the widest
widths, the deepest stages, the largest ratio and attention in every block of stages 3-4; the supernet is that
network, and every subnet's weights are prefixes of its weights.

The default grid (ours; the paper gives no width sets) contains S0, S1, S2 and L: stage 1 in steps of 8 from 16
to 40, stage 2 in steps of 8 from 32 to 80, stage 3 in steps of 8 from 64 to 192 (S1's 120 is not a multiple of
16), stage 4 in steps of 16 from 128 to 384; depths up to L's (5, 5, 15, 10); ratios 2, 3 and 4 (the published
models use 3 and 4; 2 gives the search somewhere to go below them).
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..models.arch import ArchError
from ..models.base import ModelSpec

ATTENTION_STAGES = (2, 3)


def _grid(lo: int, hi: int, step: int) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1, step))


@dataclass(frozen=True)
class V2Space:
    """Choices of the V2 search space (see the module docstring for the defaults and why)."""

    widths: tuple[tuple[int, ...], ...] = field(
        default=(_grid(16, 40, 8), _grid(32, 80, 8), _grid(64, 192, 8), _grid(128, 384, 16))
    )
    max_depths: tuple[int, int, int, int] = (5, 5, 15, 10)
    min_depths: tuple[int, int, int, int] = (1, 1, 1, 1)
    ratios: tuple[float, ...] = (2.0, 3.0, 4.0)

    def __post_init__(self) -> None:
        if len(self.widths) != 4 or any(not w for w in self.widths):
            raise ArchError("a V2 space needs four non-empty width lists")
        for ws in self.widths:
            if list(ws) != sorted(set(ws)):
                raise ArchError(f"width choices must be ascending and distinct, got {list(ws)}")
        if any(w % 2 for w in self.widths[0]):
            raise ArchError(f"stage-1 widths must be even (the stem halves them), got {list(self.widths[0])}")
        if any(not 1 <= lo <= hi for lo, hi in zip(self.min_depths, self.max_depths, strict=True)):
            raise ArchError(f"depth bounds must satisfy 1 <= min <= max, got {self.min_depths} / {self.max_depths}")
        if list(self.ratios) != sorted(set(self.ratios)) or self.ratios[0] <= 0:
            raise ArchError(f"ratios must be positive, ascending and distinct, got {list(self.ratios)}")

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> V2Space:
        known = {"widths", "max_depths", "min_depths", "ratios"}
        unknown = set(data) - known
        if unknown:
            raise ArchError(f"unknown search-space keys {sorted(unknown)}; known: {sorted(known)}")
        kwargs: dict[str, Any] = {}
        if "widths" in data:
            kwargs["widths"] = tuple(tuple(int(w) for w in ws) for ws in data["widths"])
        for key in ("max_depths", "min_depths"):
            if key in data:
                kwargs[key] = tuple(int(d) for d in data[key])
        if "ratios" in data:
            kwargs["ratios"] = tuple(float(r) for r in data["ratios"])
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> V2Space:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.from_dict(data.get("space", data))

    def to_dict(self) -> dict[str, Any]:
        return {
            "widths": [list(ws) for ws in self.widths],
            "max_depths": list(self.max_depths),
            "min_depths": list(self.min_depths),
            "ratios": list(self.ratios),
        }

    # -- points ------------------------------------------------------------------------------------------------
    def make(
        self,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        ratios: tuple[tuple[float, ...], ...],
        attention: tuple[tuple[bool, ...], ...],
        name: str = "efficientformerv2_custom",
    ) -> ModelSpec:
        num_vit = max(sum(attention[2]), sum(attention[3]))
        return ModelSpec(
            name, "v2", tuple(widths), tuple(depths), num_vit=num_vit, mlp_ratios=tuple(ratios), attention=attention
        )

    def largest(self) -> ModelSpec:
        r = self.ratios[-1]
        return self.make(
            tuple(ws[-1] for ws in self.widths),
            self.max_depths,
            tuple((r,) * d for d in self.max_depths),
            tuple((i in ATTENTION_STAGES,) * d for i, d in enumerate(self.max_depths)),
            name="efficientformerv2_supernet_max",
        )

    def smallest(self) -> ModelSpec:
        r = self.ratios[0]
        return self.make(
            tuple(ws[0] for ws in self.widths),
            self.min_depths,
            tuple((r,) * d for d in self.min_depths),
            tuple((False,) * d for d in self.min_depths),
            name="efficientformerv2_supernet_min",
        )

    def sample(self, rng: random.Random) -> ModelSpec:
        """A uniformly random point: width, depth, every ratio and every stage-3/4 attention flag independent."""
        widths = tuple(rng.choice(ws) for ws in self.widths)
        depths = tuple(rng.randint(lo, hi) for lo, hi in zip(self.min_depths, self.max_depths, strict=True))
        ratios = tuple(tuple(rng.choice(self.ratios) for _ in range(d)) for d in depths)
        attention = tuple(
            tuple(rng.random() < 0.5 if i in ATTENTION_STAGES else False for _ in range(d))
            for i, d in enumerate(depths)
        )
        return self.make(widths, depths, ratios, attention, name="efficientformerv2_random")

    def check(self, spec: ModelSpec) -> None:
        """Raise :class:`ArchError` naming the first way ``spec`` leaves the space."""
        if spec.family != "v2":
            raise ArchError(f"{spec.name} is a {spec.family} model; the V2 space holds v2 models only")
        for i in range(4):
            if spec.widths[i] not in self.widths[i]:
                grid = list(self.widths[i])
                raise ArchError(f"{spec.name}: stage-{i + 1} width {spec.widths[i]} is not on the grid {grid}")
            if not self.min_depths[i] <= spec.depths[i] <= self.max_depths[i]:
                raise ArchError(
                    f"{spec.name}: stage-{i + 1} depth {spec.depths[i]} is outside "
                    f"{self.min_depths[i]}..{self.max_depths[i]}"
                )
            for j in range(spec.depths[i]):
                if spec.mlp_ratios[i][j] not in self.ratios:
                    raise ArchError(
                        f"{spec.name}: stage-{i + 1} block {j} ratio {spec.mlp_ratios[i][j]} not in {self.ratios}"
                    )
                if spec.has_attention(i, j) and i not in ATTENTION_STAGES:
                    raise ArchError(f"{spec.name}: attention in stage {i + 1}; the space allows it in stages 3-4")

    def contains(self, spec: ModelSpec) -> bool:
        try:
            self.check(spec)
        except ArchError:
            return False
        return True


def canonical_spec(spec: ModelSpec, name: str | None = None) -> ModelSpec:
    """The same network with explicit attention flags (so equal networks compare equal as specs)."""
    flags = tuple(tuple(spec.has_attention(i, j) for j in range(spec.depths[i])) for i in range(4))
    return ModelSpec(
        name or spec.name,
        "v2",
        tuple(spec.widths),
        tuple(spec.depths),
        num_vit=max(sum(flags[2]), sum(flags[3])),
        drop_path_rate=spec.drop_path_rate,
        mlp_ratios=tuple(tuple(float(r) for r in s) for s in spec.mlp_ratios),
        attention=flags,
    )


def arch_key(spec: ModelSpec) -> tuple:
    """A hashable identity of the network (name and drop path ignored)."""
    n = canonical_spec(spec)
    return (n.widths, n.depths, n.mlp_ratios, n.attention)


def __getattr__(name: str) -> Any:
    # normalise is search.train's image normalisation; this module's spec function is canonical_spec
    if name == "normalise":
        warnings.warn(
            "efficientformer.search.space.normalise is deprecated; use efficientformer.search.space.canonical_spec",
            DeprecationWarning,
            stacklevel=2,
        )
        return canonical_spec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
