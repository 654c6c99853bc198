import pytest

from evaluate import bench
from evaluate.bench import interleaved_latency, interleaved_speedup


def test_speedup_is_the_per_round_ratio_when_the_load_changes_between_two_turns(monkeypatch):
    clock = {"t": 0.0, "a": 0, "b": 0}

    def runner(name: str, cost: float, slow_calls: int):
        def run():  # one call: `cost` on the fake clock, 1.5x while the machine is busy
            clock["t"] += cost * (1.5 if clock[name] < slow_calls else 1.0)
            clock[name] += 1
        return run

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["t"])
    # b always runs 2x faster than a; a busy spell ends in round 5 after a's turn and before b's
    # (calls per variant: 10 timed in round 0, then 2 warm-up + 10 timed per round)
    lat = interleaved_latency({"a": runner("a", 2.0, 10 + 5 * 12), "b": runner("b", 1.0, 10 + 4 * 12)},
                              warmup=0, repeats=100, rounds=10)
    assert lat["a"]["p50"] / lat["b"]["p50"] == pytest.approx(2.4)  # pooled medians fall on either side of it
    assert len(lat["a"]["round_p50"]) == 10
    assert interleaved_speedup(lat, "a", "b") == pytest.approx(2.0)
