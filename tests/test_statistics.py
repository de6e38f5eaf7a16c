"""The study's statistics against hand computations: the paired bootstrap on a case small enough
to enumerate, Holm's correction, and each verdict reached when (and only when) its inputs say."""
from __future__ import annotations

import numpy as np
import pytest

from rtune_ds.analysis.statistics import (
    DETECTABLE_Z,
    holm,
    item_differences,
    judge,
    paired_bootstrap,
    verdict,
)


def test_the_bootstrap_of_two_items_matches_its_exact_distribution():
    # d = [1, 0]: a resample of 2 items has mean 0, 0.5 or 1 with probability 1/4, 1/2, 1/4
    t = paired_bootstrap([[1, 1]], [[0, 1]], resamples=20_000, seed=3)
    assert t["difference"] == 0.5 and t["items"] == 2 and t["seeds"] == 1
    assert (t["ci_low"], t["ci_high"]) == (0.0, 1.0)
    assert t["se"] == pytest.approx(np.sqrt(0.125), rel=0.02)  # sd of that distribution
    assert t["p_value"] == pytest.approx(0.5, abs=0.02)  # |mean − 0.5| >= 0.5: half the mass
    assert t["detectable"] == pytest.approx(DETECTABLE_Z * t["se"])


def test_differences_are_paired_per_item_and_averaged_over_seeds():
    a = [[1, 0, 1], [1, 1, 0]]
    b = [[0, 0, 1], [1, 0, 0]]
    assert item_differences(a, b).tolist() == [0.5, 0.5, 0.0]
    with pytest.raises(ValueError, match="same seeds and items"):
        item_differences([[1, 0]], [[1, 0, 1]])


def test_a_clear_effect_is_significant_and_no_effect_is_not():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, size=(3, 1000))
    better = base.copy()
    better[:, :150] = 1  # A right on 150 more items where B may be wrong
    strong = paired_bootstrap(better, base)
    assert strong["difference"] > 0 and strong["ci_low"] > 0 and strong["p_value"] < 0.001
    same = paired_bootstrap(base, base)
    assert same["difference"] == 0 and same["p_value"] == 1.0


def test_holm_by_hand():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    # sorted 0.01, 0.03, 0.04: 3 × 0.01 = 0.03; 2 × 0.03 = 0.06; max(0.06, 1 × 0.04) = 0.06
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert holm({"x": 0.6, "y": 0.7}) == pytest.approx({"x": 1.0, "y": 1.0})


@pytest.mark.parametrize("difference, p, outcome", [
    (0.05, 0.01, "reproduced"), (-0.05, 0.01, "contradicted"), (0.05, 0.2, "inconclusive"),
    (-0.05, 0.2, "inconclusive"), (0.05, 0.05, "inconclusive")])
def test_verdict_turns_on_the_sign_and_the_corrected_p(difference, p, outcome):
    assert verdict(difference, p) == outcome


def test_an_effect_significant_alone_can_be_inconclusive_after_correction():
    tests = {"x": {"difference": 0.02, "p_value": 0.03}, "y": {"difference": 0.1, "p_value": 0.001},
             "z": {"difference": 0.0, "p_value": 0.9}}
    judged = judge(tests)
    assert judged["y"]["verdict"] == "reproduced"
    assert judged["x"]["p_holm"] == pytest.approx(0.06) and judged["x"]["verdict"] == "inconclusive"
    assert judge({"x": tests["x"]})["x"]["verdict"] == "reproduced"  # alone it would pass
