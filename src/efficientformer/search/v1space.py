"""The V1 slimming space: one width per stage (multiples of 16), depth per stage, Meta3D blocks at the end of stage 4.

The paper's MetaPath supernet allows MB3D in stages 3 and 4. A V1 network is dimension-consistent: once the
tokens are flattened for MB3D they stay 3-D to the head, so an MB3D in stage 3 would force the stage-4
downsample and every stage-4 block to be 3-D as well; the published L1/L3/L7 all put MB3D at the end of stage 4
only. We therefore allow MB3D only at the end of stage 4 (our choice; see ``docs/search.md``), and keep at least
one, which the V1 deploy form needs. The default supernet is L3-sized (widths 64/128/320/512, depths 4/4/12/6),
which contains L1 and L3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..models.arch import ArchError
from ..models.base import ModelSpec
from ..models.efficientformer import V1_VARIANTS

V1_PUBLISHED = dict(V1_VARIANTS)


@dataclass(frozen=True)
class V1Space:
    max_widths: tuple[int, int, int, int] = (64, 128, 320, 512)
    min_widths: tuple[int, int, int, int] = (32, 64, 128, 256)
    width_step: int = 16
    max_depths: tuple[int, int, int, int] = (4, 4, 12, 6)
    max_vit: int = 4  # MB3D slots at the end of stage 4 in the supernet

    def __post_init__(self) -> None:
        for lo, hi in zip(self.min_widths, self.max_widths, strict=True):
            if lo > hi or lo % self.width_step or hi % self.width_step:
                raise ArchError(f"V1 widths must be multiples of {self.width_step} with min <= max, got {lo}..{hi}")
        if not 1 <= self.max_vit <= self.max_depths[3]:
            raise ArchError(f"max_vit must be in 1..{self.max_depths[3]}, got {self.max_vit}")

    def width_choices(self) -> tuple[tuple[int, ...], ...]:
        return tuple(
            tuple(range(lo, hi + 1, self.width_step)) for lo, hi in zip(self.min_widths, self.max_widths, strict=True)
        )

    def largest(self) -> ModelSpec:
        return ModelSpec("efficientformer_supernet_max", "v1", self.max_widths, self.max_depths, num_vit=self.max_vit)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_widths": list(self.max_widths),
            "min_widths": list(self.min_widths),
            "width_step": self.width_step,
            "max_depths": list(self.max_depths),
            "max_vit": self.max_vit,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> V1Space:
        known = {"max_widths", "min_widths", "width_step", "max_depths", "max_vit"}
        if set(data) - known:
            raise ArchError(f"unknown V1 space keys {sorted(set(data) - known)}; known: {sorted(known)}")
        kw: dict[str, Any] = {}
        for key in ("max_widths", "min_widths", "max_depths"):
            if key in data:
                kw[key] = tuple(int(v) for v in data[key])
        for key in ("width_step", "max_vit"):
            if key in data:
                kw[key] = int(data[key])
        return cls(**kw)
