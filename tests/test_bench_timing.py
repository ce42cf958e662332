"""The interleaved timer: every candidate is timed once per round, in rotating order, after its own warm-up."""

import time

from efficientformer.utils.timing import p90, time_interleaved


def test_time_interleaved_rounds_and_rotation():
    calls: list[str] = []

    def make(name, seconds=0.0):
        def fn():
            calls.append(name)
            if seconds:
                time.sleep(seconds)

        return fn

    times = time_interleaved({"a": make("a"), "b": make("b", 0.004), "c": make("c")}, warmup=2, runs=3)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up, per candidate
    rounds = [calls[6 + 3 * r : 9 + 3 * r] for r in range(3)]
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]  # one call each, rotating start
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert min(times["b"]) >= 4.0 > max(times["a"])  # milliseconds, attributed to the right candidate


def test_p90():
    assert p90(list(range(11))) == 9
    assert p90([5.0]) == 5.0


def test_time_blocks_alternates_groups_and_keeps_rotating():
    from efficientformer.utils.timing import time_blocks

    calls: list[str] = []

    def make(name):
        return lambda: calls.append(name)

    groups = {"torch": {"a": make("a"), "b": make("b")}, "ort": {"c": make("c")}}
    times = time_blocks(groups, warmup=1, runs=4, blocks=2)
    assert calls[:3] == ["a", "b", "c"]  # warm-up, one call each
    # block 1: two torch rounds (a b, b a), then two ort rounds; block 2 continues the rotation (a b, b a)
    assert calls[3:] == ["a", "b", "b", "a", "c", "c", "a", "b", "b", "a", "c", "c"]
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}


def test_time_blocks_rejects_duplicate_keys_and_bad_blocks():
    import pytest

    from efficientformer.utils.timing import time_blocks

    with pytest.raises(ValueError, match="two groups"):
        time_blocks({"x": {"a": lambda: None}, "y": {"a": lambda: None}}, 0, 2)
    with pytest.raises(ValueError, match="blocks"):
        time_blocks({"x": {"a": lambda: None}}, 0, 2, blocks=0)
