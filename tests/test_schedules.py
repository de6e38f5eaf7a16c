import math

import pytest

from rtune_ds.train.schedules import (
    constant,
    continual_pretraining_recipe,
    cosine_with_floor,
)


def test_cosine_with_floor_matches_formula():
    s = cosine_with_floor(peak_lr=1e-3, min_lr_ratio=0.1, warmup_steps=10, total_steps=110)
    assert s.lr(0) == pytest.approx(1e-4)  # first warmup step
    assert s.lr(9) == pytest.approx(1e-3)
    assert s.lr(10) == pytest.approx(1e-3)  # decay starts at the peak
    for step in (10, 35, 60, 85, 110):
        progress = (step - 10) / 100
        expected = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * progress))
        assert s.lr(step) == pytest.approx(expected, rel=1e-12)
    assert s.lr(60) == pytest.approx((1e-3 + 1e-4) / 2)
    assert s.lr(500) == pytest.approx(1e-4)  # holds the floor past the end


def test_recipe_starts_at_parent_min_no_warmup_and_ends_at_one_percent():
    s = continual_pretraining_recipe(parent_min_lr=3e-4, total_steps=200)
    assert s.lr(0) == pytest.approx(3e-4)
    assert s.lr(200) == pytest.approx(3e-6)
    assert all(s.lr(i) >= s.lr(i + 1) for i in range(200))


def test_recipe_switch_when_lr_reaches_a_fifth_of_start():
    total, eta = 1000, 3e-4
    s = continual_pretraining_recipe(eta, total)
    # closed form: eta_min + (eta - eta_min)(1 + cos(pi t/T))/2 = eta/5
    eta_min = 0.01 * eta
    t_exact = total / math.pi * math.acos(2 * (eta / 5 - eta_min) / (eta - eta_min) - 1)
    switch = s.first_step_at_or_below(0.2)
    assert switch == math.ceil(t_exact)
    assert s.lr(switch) <= eta / 5 < s.lr(switch - 1)
    assert 0.70 < switch / total < 0.72  # ~71% of the run, as in Parmar et al.


def test_constant():
    s = constant(2e-4, 50)
    assert {s.lr(i) for i in range(60)} == {2e-4}
