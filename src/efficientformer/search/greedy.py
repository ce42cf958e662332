"""The V2 fine-grained joint search: a greedy walk down from the largest subnet, scored by MES.

MES (Mobile Efficiency Score) = score * prod_i (M_i / U_i) ** (-alpha_i) over M = latency (from the table) and
size (parameters, exact and analytic). At each step every action is tried:

* ``depth``: drop the last block of a stage (the supernet runs the first ``d`` blocks of a stage, so the last
  one is the block that can go without moving weights);
* ``attn``: remove the attention mixer of one stage-3/4 block;
* ``width``: narrow a stage by one step of its grid;
* ``ratio``: lower one block's FFN expansion ratio by one step.

Each candidate is scored on held-out data (``evaluate(spec) -> accuracy in %``), its latency and size computed,
and the action with the smallest accuracy loss per MES gained is taken. The walk stops at the first point that
meets the latency, size or MES target (or when no action is left).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..models.arch import spec_to_arch
from ..models.base import ModelSpec
from .params import count_params
from .space import ATTENTION_STAGES, V2Space, arch_key, canonical_spec


@dataclass(frozen=True)
class MESConfig:
    """MES constants and where each comes from. The formula and ``score`` = 100 are the V2 paper's; the units
    (3 M parameters, 1 ms on iPhone 12) and exponents (1.0 for latency, 0.5 for size) are the values as we recall
    them from the paper, not verified against it here, so they count as ours (``sources``). Which action wins does
    not depend on the units (they scale every MES alike); they matter only for an MES stopping target. Set
    ``latency_unit_ms`` to a latency on your own device to make MES values comparable."""

    score: float = 100.0
    latency_unit_ms: float = 1.0
    size_unit_params: float = 3.0e6
    alpha_latency: float = 1.0
    alpha_size: float = 0.5
    source: str = "score and formula: V2 paper; units and exponents: ours (the paper's values as recalled, unverified)"

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> MESConfig:
        """The ``mes:`` block of a search config (its ``sources:`` mapping documents the values, it sets none)."""
        data = dict(data or {})
        sources = data.pop("sources", None)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown mes: keys {sorted(unknown)}; known: {sorted(known)}")
        if sources:
            data["source"] = "; ".join(f"{k}: {v}" for k, v in sources.items())
        return cls(**data)

    def __call__(self, latency_ms: float, params: int) -> float:
        return (
            self.score
            * (latency_ms / self.latency_unit_ms) ** (-self.alpha_latency)
            * (params / self.size_unit_params) ** (-self.alpha_size)
        )


@dataclass
class SearchTargets:
    latency_ms: float | None = None
    params: int | None = None
    mes: float | None = None
    max_steps: int = 10_000

    def met(self, latency_ms: float, params: int, mes: float) -> bool:
        return (
            (self.latency_ms is not None and latency_ms <= self.latency_ms)
            or (self.params is not None and params <= self.params)
            or (self.mes is not None and mes >= self.mes)
        )

    def any(self) -> bool:
        return self.latency_ms is not None or self.params is not None or self.mes is not None


@dataclass
class Point:
    spec: ModelSpec
    accuracy: float
    latency_ms: float
    params: int
    mes: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "latency_ms": self.latency_ms,
            "params": self.params,
            "mes": self.mes,
            "arch": spec_to_arch(self.spec),
        }


@dataclass
class SearchResult:
    final: Point
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0
    stopped: str = ""


def _with(spec: ModelSpec, **changes: Any) -> ModelSpec:
    base = canonical_spec(spec)
    data = {
        "widths": base.widths,
        "depths": base.depths,
        "mlp_ratios": base.mlp_ratios,
        "attention": base.attention,
    }
    data.update(changes)
    num_vit = max(sum(data["attention"][2]), sum(data["attention"][3]))
    return ModelSpec(
        "efficientformerv2_searched",
        "v2",
        tuple(data["widths"]),
        tuple(data["depths"]),
        num_vit=num_vit,
        mlp_ratios=tuple(tuple(s) for s in data["mlp_ratios"]),
        attention=tuple(tuple(s) for s in data["attention"]),
    )


@dataclass(frozen=True)
class Action:
    """One reduction: ``kind`` in depth/width/ratio/attn, its stage (0-based) and block (-1 for a whole stage)."""

    kind: str
    stage: int
    block: int = -1

    def conflicts(self, depth: int) -> set[tuple]:
        """What the action touches; two actions can be taken together only if these sets are disjoint."""
        if self.kind == "width":
            return {("width", self.stage)}
        if self.kind == "depth":
            return {("depth", self.stage), ("block", self.stage, depth - 1)}
        return {("block", self.stage, self.block)}


def apply_action(spec: ModelSpec, action: Action, space: V2Space) -> tuple[str, ModelSpec]:
    """The spec one action makes of ``spec``, and a description of the change."""
    s = canonical_spec(spec)
    i, j = action.stage, action.block
    widths, depths = list(s.widths), list(s.depths)
    ratios = [list(r) for r in s.mlp_ratios]
    attn = [list(a) for a in s.attention]
    if action.kind == "depth":
        depths[i] -= 1
        ratios[i].pop()
        attn[i].pop()
        name = f"depth s{i + 1} {s.depths[i]}->{depths[i]}"
    elif action.kind == "width":
        grid = space.widths[i]
        widths[i] = grid[grid.index(s.widths[i]) - 1]
        name = f"width s{i + 1} {s.widths[i]}->{widths[i]}"
    elif action.kind == "ratio":
        ratios[i][j] = space.ratios[space.ratios.index(s.mlp_ratios[i][j]) - 1]
        name = f"ratio s{i + 1}b{j} {s.mlp_ratios[i][j]:g}->{ratios[i][j]:g}"
    elif action.kind == "attn":
        attn[i][j] = False
        name = f"attn s{i + 1}b{j} off"
    else:
        raise ValueError(f"unknown action kind {action.kind!r}")
    return name, _with(s, widths=widths, depths=depths, mlp_ratios=ratios, attention=attn)


def available_actions(spec: ModelSpec, space: V2Space) -> list[Action]:
    s = canonical_spec(spec)
    out: list[Action] = []
    for i in range(4):
        if s.depths[i] > space.min_depths[i]:
            out.append(Action("depth", i))
        if space.widths[i].index(s.widths[i]) > 0:
            out.append(Action("width", i))
        for j in range(s.depths[i]):
            if space.ratios.index(s.mlp_ratios[i][j]) > 0:
                out.append(Action("ratio", i, j))
            if i in ATTENTION_STAGES and s.attention[i][j]:
                out.append(Action("attn", i, j))
    return out


def actions(spec: ModelSpec, space: V2Space) -> list[tuple[str, ModelSpec]]:
    """Every one-step reduction of ``spec`` that stays in ``space``: (description, resulting spec)."""
    return [apply_action(spec, a, space) for a in available_actions(spec, space)]


class GreedySearch:
    """The greedy MES walk. ``evaluate(spec)`` returns held-out accuracy (%) of the subnet; ``latency(spec)``
    its table latency (ms); ``params(spec)`` its exact parameter count."""

    def __init__(
        self,
        space: V2Space,
        evaluate: Callable[[ModelSpec], float],
        latency: Callable[[ModelSpec], float],
        params: Callable[[ModelSpec], int] | None = None,
        mes: MESConfig | None = None,
        log: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.space = space
        self._evaluate = evaluate
        self.latency = latency
        self.params = params or (lambda s: count_params(s))
        self.mes = mes or MESConfig()
        self.log = log
        self._cache: dict[tuple, float] = {}
        self.evaluations = 0

    def accuracy(self, spec: ModelSpec) -> float:
        key = arch_key(spec)
        if key not in self._cache:
            self._cache[key] = float(self._evaluate(spec))
            self.evaluations += 1
        return self._cache[key]

    def point(self, spec: ModelSpec) -> Point:
        lat, n = float(self.latency(spec)), int(self.params(spec))
        return Point(spec, self.accuracy(spec), lat, n, self.mes(lat, n))

    def run(self, targets: SearchTargets, start: ModelSpec | None = None, actions_per_step: int = 1) -> SearchResult:
        """Walk from ``start`` (default: the largest subnet) until a target is met.

        ``actions_per_step`` > 1 is our speed-up, not the paper's: the k best-ranked actions that touch different
        blocks/stages are taken together (the combined point is scored before the next step).
        """
        if not targets.any():
            raise ValueError("give the search a stopping target: latency (ms), parameters or MES")
        if actions_per_step < 1:
            raise ValueError(f"actions_per_step must be >= 1, got {actions_per_step}")
        current = self.point(canonical_spec(start or self.space.largest(), "efficientformerv2_searched"))
        result = SearchResult(current)
        self._record(result, 0, "start", current, candidates=0)
        step = 0
        result.stopped = "max steps"
        while step < targets.max_steps:
            if targets.met(current.latency_ms, current.params, current.mes):
                result.stopped = "target met"
                break
            acts = available_actions(current.spec, self.space)
            if not acts:
                result.stopped = "no action left"
                break
            ranked = []
            for act in acts:
                name, spec = apply_action(current.spec, act, self.space)
                cand = self.point(spec)
                gain = cand.mes - current.mes
                loss = current.accuracy - cand.accuracy
                # the paper's criterion: accuracy lost per MES gained; an action that gains no MES comes last.
                # Ours: an accuracy *gain* counts as no loss (held-out scores carry noise, and a negative loss
                # divided by a tiny MES gain would rank noise first); ties go to the larger MES gain.
                ratio = max(loss, 0.0) / gain if gain > 0 else math.inf
                ranked.append((ratio, -gain, name, act, cand))
            ranked.sort(key=lambda r: r[:3])
            ratio, _, name, act, best = ranked[0]
            if actions_per_step > 1:
                depth = canonical_spec(current.spec).depths
                taken, touched, spec = [name], act.conflicts(depth[act.stage]), best.spec
                for _, _, other_name, other, _ in ranked[1:]:
                    if len(taken) >= actions_per_step:
                        break
                    keys = other.conflicts(depth[other.stage])
                    if keys & touched:
                        continue
                    touched |= keys
                    taken.append(other_name)
                    spec = apply_action(spec, other, self.space)[1]
                if len(taken) > 1:
                    best, name = self.point(spec), " + ".join(taken)
            step += 1
            current = best
            self._record(result, step, name, current, candidates=len(acts), ratio=ratio)
        result.final = current
        result.evaluations = self.evaluations
        return result

    def _record(self, result: SearchResult, step: int, action: str, p: Point, **extra: Any) -> None:
        row = {"step": step, "action": action, **p.to_dict(), **extra}
        if row.get("ratio") is not None and not math.isfinite(row["ratio"]):
            row["ratio"] = None
        result.trajectory.append(row)
        if self.log:
            self.log(row)


def write_trajectory(result: SearchResult, path: str | Path, mes: MESConfig) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        f.write(json.dumps({"mes": asdict(mes), "stopped": result.stopped, "evaluations": result.evaluations}) + "\n")
        for row in result.trajectory:
            f.write(json.dumps(row) + "\n")
    return path


def plot_trajectory(
    result: SearchResult,
    path: str | Path,
    published: dict[str, Point],
    published_v1_ms: dict[str, float] | None = None,
    title: str = "",
) -> Path | None:
    """Accuracy against table latency along the walk; published V2 models as labelled points (scored like any
    subnet), published V1 models (another family's table) as labelled vertical lines at their latency."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    traj = result.trajectory
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot([r["latency_ms"] for r in traj], [r["accuracy"] for r in traj], "-o", ms=3, lw=1, label="greedy walk")
    ax.plot(traj[-1]["latency_ms"], traj[-1]["accuracy"], "r*", ms=14, label="searched")
    for name, p in published.items():
        ax.plot(p.latency_ms, p.accuracy, "ks", ms=6)
        ax.annotate(
            name.replace("efficientformerv2_", "V2-").upper(),
            (p.latency_ms, p.accuracy),
            fontsize=8,
            xytext=(4, -10),
            textcoords="offset points",
        )
    for name, ms in (published_v1_ms or {}).items():
        ax.axvline(ms, color="grey", ls=":", lw=1)
        ax.text(
            ms,
            ax.get_ylim()[0],
            name.replace("efficientformer_", "V1-").upper(),
            rotation=90,
            fontsize=7,
            va="bottom",
            ha="right",
            color="grey",
        )
    ax.set_xlabel("table latency (ms)")
    ax.set_ylabel("held-out accuracy of the subnet (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
