"""The greedy MES search on a synthetic accuracy function whose optimum is known (and checked by brute force)."""

from __future__ import annotations

import itertools

import pytest

from efficientformer.models.base import ModelSpec
from efficientformer.search.greedy import GreedySearch, MESConfig, SearchTargets, actions
from efficientformer.search.latency import network_keys
from efficientformer.search.space import V2Space, arch_key

SPACE = V2Space(
    widths=((16, 24), (32, 40), (64, 72), (128, 144)),
    max_depths=(1, 1, 2, 2),
    min_depths=(1, 1, 1, 1),
    ratios=(2.0, 4.0),
)


def synthetic_ms(key: str) -> float:
    kind, *parts = key.split("/")
    p = {x[0]: int(x[1:]) for x in parts}
    if kind == "ffn":
        return p["w"] * p["h"] * 1e-4 * (5 - p["s"])
    if kind == "attn":
        return p["w"] * 1e-2
    if kind in ("down", "dual"):
        return p["i"] * p["o"] * 1e-5
    return p["w"] * 1e-3


def latency(spec: ModelSpec) -> float:
    return sum(synthetic_ms(k) for k in network_keys(spec))


def accuracy(spec: ModelSpec) -> float:
    """Only two things matter: the widest stage 4 and the attention of stage-3 block 0."""
    return 90.0 - 10.0 * (spec.widths[3] != 144) - 7.0 * (not spec.has_attention(2, 0))


def every_point(space: V2Space):
    for widths in itertools.product(*space.widths):
        for depths in itertools.product(*[range(lo, hi + 1) for lo, hi in zip(space.min_depths, space.max_depths)]):
            for flat_r in itertools.product(space.ratios, repeat=sum(depths)):
                it = iter(flat_r)
                ratios = tuple(tuple(next(it) for _ in range(d)) for d in depths)
                for flat_a in itertools.product((False, True), repeat=depths[2] + depths[3]):
                    a = iter(flat_a)
                    attn = tuple(tuple(next(a) if i >= 2 else False for _ in range(d)) for i, d in enumerate(depths))
                    yield space.make(widths, depths, ratios, attn)


def test_greedy_recovers_known_optimum():
    optimum = SPACE.make(
        (16, 32, 64, 144), (1, 1, 1, 1), ((2.0,), (2.0,), (2.0,), (2.0,)), ((False,), (False,), (True,), (False,))
    )
    target = latency(optimum)
    # brute force: the optimum is the only most-accurate point within the latency target
    feasible = [p for p in every_point(SPACE) if latency(p) <= target + 1e-12]
    best_acc = max(accuracy(p) for p in feasible)
    winners = [p for p in feasible if accuracy(p) == best_acc]
    assert [arch_key(p) for p in winners] == [arch_key(optimum)]

    search = GreedySearch(SPACE, accuracy, latency, mes=MESConfig())
    result = search.run(SearchTargets(latency_ms=target))
    assert arch_key(result.final.spec) == arch_key(optimum)
    assert result.final.accuracy == 90.0
    assert result.stopped == "target met"
    lat = [row["latency_ms"] for row in result.trajectory]
    assert all(b < a for a, b in zip(lat, lat[1:]))  # every step makes the network faster
    assert result.trajectory[0]["action"] == "start"


def test_actions_stay_in_space_and_reduce():
    spec = SPACE.largest()
    acts = actions(spec, SPACE)
    kinds = {name.split()[0] for name, _ in acts}
    assert kinds == {"depth", "width", "ratio", "attn"}
    for _, s in acts:
        SPACE.check(s)
        assert latency(s) < latency(spec)
    assert actions(SPACE.smallest(), SPACE) == []


def test_mes_matches_recalled_sanity_values():
    mes = MESConfig()
    # MobileNetV2 x1.0 (3.5M, 0.9 ms) scores 100 * (0.9 / 1)^-1 * (3.5 / 3)^-0.5 = 102.9 with the default constants
    # (formula: V2 paper, arXiv 2212.08059; units and exponents ours, docs/search.md "V2: supernet ...")
    assert mes(0.9, 3_500_000) == pytest.approx(102.9, abs=0.05)


def test_search_needs_a_target():
    with pytest.raises(ValueError, match="stopping target"):
        GreedySearch(SPACE, accuracy, latency).run(SearchTargets())


def test_several_actions_per_step_still_reach_the_target():
    target = latency(SPACE.largest()) * 0.5
    search = GreedySearch(SPACE, accuracy, latency)
    result = search.run(SearchTargets(latency_ms=target), actions_per_step=3)
    assert result.final.latency_ms <= target and result.stopped == "target met"
    assert any(" + " in row["action"] for row in result.trajectory[1:])
    assert result.final.accuracy == 90.0  # the free reductions alone reach half the latency here


def test_accuracy_gains_count_as_no_loss():
    """A noisy held-out gain on a tiny action must not outrank a free action that saves much more."""

    def noisy(spec: ModelSpec) -> float:  # lowering any ratio "gains" 0.5 points, everything else is free
        fewer = sum(r < 4.0 for stage in spec.mlp_ratios for r in stage)
        return 80.0 + 0.5 * fewer

    search = GreedySearch(SPACE, noisy, latency)
    result = search.run(SearchTargets(max_steps=1, latency_ms=0.0))
    start = SPACE.largest()
    mes = MESConfig()
    best_gain = max(
        mes(latency(s), search.params(s)) - mes(latency(start), search.params(start)) for _, s in actions(start, SPACE)
    )
    assert result.trajectory[1]["mes"] - result.trajectory[0]["mes"] == pytest.approx(best_gain)
