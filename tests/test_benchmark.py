"""The benches' shared protocol: ABBA order, medians, the timing config."""
from rtune_ds.jobs.benchmark import interleaved, medians, rate


def test_sides_alternate_abba_and_each_repeat_is_kept_in_order():
    calls = []

    def measure(side, r):
        calls.append((side, r))
        return 10 * r + (side == "b")

    runs = interleaved(("a", "b"), 3, measure)
    assert calls == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2)]
    assert runs == {"a": [0, 10, 20], "b": [1, 11, 21]}
    assert medians(runs) == {"a": 10, "b": 11}


def test_rate_uses_the_median_step_after_warmup():
    assert rate(100.0, [9.0, 1.0, 2.0, 4.0], warmup=1) == 50.0
