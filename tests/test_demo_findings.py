"""The study's verdicts on hand-made inputs (no runs, no files): the upgrade gate flips with each
of its checks, a failed gate blocks every method verdict, each contrast reaches each outcome when
its inputs do, the best single method is chosen on dev, convergence is measured only where it can
be, and the pure parts of demo.results they stand on (the grid's choice per arm, the table)."""
from __future__ import annotations

import pytest

from rtune_ds.demo import findings as F
from rtune_ds.demo.plan import ARMS, arm, compat, label_free_compat, run_name
from rtune_ds.demo.results import chosen_lrs, gate_bundles, table
from rtune_ds.demo.results import label_free_library as library

THRESHOLDS = {"fall_gap": 0.05, "max_gain_kept": 0.9}
N = 400  # test items


def v1_evals(general: tuple[float, float], computing: tuple[float, float]) -> dict:
    return {"first_eval": {"eval/loss/general": general[0], "eval/loss/computing": computing[0]},
            "final_eval": {"eval/loss/general": general[1], "eval/loss/computing": computing[1]}}


UPGRADE = v1_evals((6.0, 5.7), (6.0, 4.8))  # falls 5% and 20%: a gap of 15 points
LOSING = [{"seed": 0, "old_dev": 0.7, "compat_dev": 0.5, "majority": 0.2},  # keeps 60%
          {"seed": 1, "old_dev": 0.6, "compat_dev": 0.5, "majority": 0.2}]  # keeps 75%


def test_the_gate_passes_on_a_domain_shift_that_costs_the_bundles():
    gate = F.upgrade_gate(UPGRADE, LOSING, THRESHOLDS)
    assert gate["passed"] and gate["checks"] == {"domain_shift": True, "bundles_lose_gain": True}
    e = gate["evidence"]
    assert e["relative_fall"] == pytest.approx({"general": 0.05, "computing": 0.2})
    assert e["fall_gap"] == pytest.approx(0.15)
    assert e["gain_kept"] == pytest.approx({0: 0.6, 1: 0.75})
    assert e["mean_gain_kept"] == pytest.approx(0.675)


@pytest.mark.parametrize("v1, bundles, failed", [
    (v1_evals((6.0, 5.0), (6.0, 4.8)), LOSING, "domain_shift"),  # 16.7% vs 20%: gap 3.3 points
    (UPGRADE, [{"seed": 0, "old_dev": 0.7, "compat_dev": 0.68, "majority": 0.2}],
     "bundles_lose_gain"),  # keeps 96%
    (UPGRADE, [{"seed": 0, "old_dev": 0.7, "compat_dev": 0.75, "majority": 0.2}],
     "bundles_lose_gain")])  # better on v1: keeps 110%
def test_the_gate_fails_on_either_check(v1, bundles, failed):
    gate = F.upgrade_gate(v1, bundles, THRESHOLDS)
    assert not gate["passed"] and gate["says"] == F.NO_UPGRADE
    assert gate["checks"][failed] is False


def test_the_gate_fails_without_its_evidence():
    assert not F.upgrade_gate(None, LOSING, THRESHOLDS)["passed"]  # no v1 evals
    no_gain = [{"seed": 0, "old_dev": 0.2, "compat_dev": 0.3, "majority": 0.2}]
    gate = F.upgrade_gate(UPGRADE, no_gain, THRESHOLDS)  # no bundle gained over chance on v0
    assert not gate["passed"] and "bundles_lose_gain" not in gate["checks"]


def correct(accuracy: float, offset: int = 0, seeds: int = 3) -> list[list[int]]:
    """[seed][item]: right on the first accuracy × N items (shifted by `offset`, cyclically)."""
    k = round(accuracy * N)
    return [[int((i - offset) % N < k) for i in range(N)] for _ in range(seeds)]


def world(init=0.80, distill=0.62, both=0.85, vanilla=0.6, v0=0.5, compat=0.55,
          free=0.75) -> dict:
    arms = {"v0": correct(v0), "vanilla": correct(vanilla), "init": correct(init),
            "distill": correct(distill, offset=100), "init+distill": correct(both),
            "label-free": correct(free)}
    dev = {"v0": 0.5, "vanilla": 0.6, "init": 0.7, "distill": 0.61, "init+distill": 0.8,
           "label-free": 0.7}
    return {"correct": {"few": arms}, "dev_means": {"few": dev},
            "compat": {"full": correct(compat)}, "chance": correct(0.2)[0]}


PASSED, FAILED = {"passed": True}, {"passed": False}


def judged(w: dict, gate: dict = PASSED) -> dict:
    return F.contrasts(w["correct"], w["dev_means"], w["compat"], w["chance"], gate,
                       resamples=2000)


def test_every_contrast_is_judged_with_its_numbers():
    out = judged(world())
    assert set(out) == {"init − vanilla (few)", "distill − vanilla (few)",
                        "init+distill − best single (few)", "init − compat (few)",
                        "v1 − v0 (few)", "compat − chance", "label-free − compat (few)",
                        "label-free − vanilla (few)"}
    t = out["init − vanilla (few)"]
    assert t["difference"] == pytest.approx(0.2) and t["ci_low"] > 0
    assert t["verdict"] == "reproduced" and t["items"] == N and t["seeds"] == 3
    # an effect inside the noise: distill is 2 points above vanilla on 400 items
    assert out["distill − vanilla (few)"]["verdict"] == "inconclusive"
    assert out["distill − vanilla (few)"]["ci_low"] < 0 < out["distill − vanilla (few)"]["ci_high"]
    assert out["init+distill − best single (few)"]["best_single"] == "init"  # best dev of the three
    assert out["compat − chance"]["verdict"] == "reproduced"


def test_a_contrast_flips_to_contradicted_when_its_arm_is_worse():
    assert judged(world(init=0.4))["init − vanilla (few)"]["verdict"] == "contradicted"
    assert judged(world(v0=0.8))["v1 − v0 (few)"]["verdict"] == "contradicted"


@pytest.mark.parametrize("free, vs_compat, vs_vanilla", [
    (0.75, "reproduced", "reproduced"), (0.56, "inconclusive", "contradicted"),
    (0.45, "contradicted", "contradicted")])
def test_label_free_is_judged_against_the_bundle_as_it_is_and_against_vanilla(free, vs_compat,
                                                                               vs_vanilla):
    out = judged(world(free=free))  # compat 0.55, vanilla 0.6
    assert out["label-free − compat (few)"]["verdict"] == vs_compat
    assert out["label-free − vanilla (few)"]["verdict"] == vs_vanilla
    assert out["label-free − compat (few)"]["difference"] == pytest.approx(free - 0.55)


def bundle_scores(agreement: float, compat_dev: float) -> dict:
    return {"method": "full", "seed": 1, "old_dev": 0.7, "compat_dev": compat_dev,
            "majority": 0.2, "agreement": agreement, "mean_kl": 0.1}


@pytest.mark.parametrize("agreement, compat_dev, labeled, label_free", [
    (0.95, 0.69, "keep", "keep"), (0.95, 0.40, "re-tune", "keep"),
    (0.50, 0.69, "keep", "re-tune"), (0.50, 0.40, "re-tune", "re-tune")])
def test_the_label_free_decision_is_set_against_the_labeled_one(agreement, compat_dev, labeled,
                                                                label_free):
    d = F.label_free_decisions([bundle_scores(agreement, compat_dev)])
    row = d["bundles"][0]
    assert (row["labeled"], row["label_free"]) == (labeled, label_free)
    assert d["same"] == int(labeled == label_free) and d["of"] == 1
    assert row["gain_kept"] == pytest.approx((compat_dev - 0.2) / 0.5)


def test_init_distill_is_set_against_the_single_method_best_on_dev_not_on_test():
    w = world(init=0.7, distill=0.9, both=0.8)  # distill best on test, init best on dev
    t = judged(w)["init+distill − best single (few)"]
    assert t["best_single"] == "init" and t["difference"] == pytest.approx(0.1)
    w["dev_means"]["few"]["distill"] = 0.9
    t = judged(w)["init+distill − best single (few)"]
    assert t["best_single"] == "distill" and t["verdict"] == "contradicted"


def test_a_lora_regime_is_set_against_the_lora_bundles_compat():
    w, lora = world(), world(init=0.5)
    w["correct"]["few-lora"] = lora["correct"]["few"]
    w["dev_means"]["few-lora"] = lora["dev_means"]["few"]
    w["compat"]["lora"] = correct(0.7)
    out = judged(w)
    assert "compat − chance (lora)" in out and "v1 − v0 (few-lora)" in out
    # init beats the full-FT bundle's compat (0.55) but not the LoRA bundle's (0.7)
    assert out["init − compat (few)"]["verdict"] == "reproduced"
    assert out["init − compat (few-lora)"]["difference"] == pytest.approx(-0.2)
    assert out["init − compat (few-lora)"]["verdict"] == "contradicted"
    assert out["compat − chance (lora)"]["difference"] == pytest.approx(0.5)


def test_a_failed_gate_blocks_every_method_verdict_but_not_the_premises():
    out = judged(world(), FAILED)
    for key in F.METHOD_CONTRASTS:
        assert out[f"{key} (few)"]["verdict"] == F.BLOCKED
        assert out[f"{key} (few)"]["difference"] is not None  # still shown
    assert out["v1 − v0 (few)"]["verdict"] == "reproduced"
    assert out["compat − chance"]["verdict"] == "reproduced"


def test_compat_against_chance_is_judged_once_over_regimes():
    w = world()
    w["correct"]["full"], w["dev_means"]["full"] = w["correct"]["few"], w["dev_means"]["few"]
    out = judged(w)
    assert "init − vanilla (full)" in out and list(out).count("compat − chance") == 1
    assert len(out) == 15


def test_convergence_is_measured_only_where_the_arm_starts_below_vanillas_best():
    vanilla = {1: [(0, 0.2), (6, 0.5), (12, 0.6), (18, 0.55)], 2: [(0, 0.2), (6, 0.4)]}
    curves = {"vanilla": vanilla,
              "init": {1: [(0, 0.4), (6, 0.55), (12, 0.61)],  # reaches 0.6 at step 12
                       2: [(0, 0.5), (6, 0.5)]},  # starts above vanilla's best 0.4
              "init+distill": {1: [(0, 0.4), (6, 0.5), (12, 0.5)], 2: [(0, 0.3), (6, 0.4)]},
              "distill": {1: [(0, 0.2), (6, 0.5)]}}
    out = F.convergence(curves, budget=18, batch=32)
    init = {e["seed"]: e for e in out["init"]["per_seed"]}
    assert init[1]["reach"] == {"step": 12, "examples": 384} and init[1]["target"] == 0.6
    assert init[2]["reach"].startswith("not measurable")
    both = {e["seed"]: e for e in out["init+distill"]["per_seed"]}
    assert both[1]["reach"] == "not reached" and both[2]["reach"] == {"step": 6, "examples": 192}
    assert "reach" not in out["distill"]["per_seed"][0]  # a fresh head: its area only
    # areas over the 18-step budget: init seed 1 (6·0.475 + 6·0.58) / 18, vanilla seed 1
    # (6·0.35 + 6·0.55 + 6·0.575) / 18
    assert init[1]["auc_minus_vanilla"] == pytest.approx((6.33 - 8.85) / 18)


def test_the_analyses_sit_between_floor_and_ceiling():
    found = {"connectivity": {"pairs": {"main": {"barrier": {"accuracy": 0.1}},
                                        "control": {"barrier": {"accuracy": 0.5}}}},
             "connectivity-floor": {"pairs": {"main": {"barrier": {"accuracy": 0.0}}}},
             "similarity": {"pairs": {"main": {"mean": 0.3}, "control": {"mean": 0.3}}},
             "similarity-floor": {"pairs": {"main": {"mean": 0.3}}}}
    out = F.analyses_summary(found)
    assert out["connectivity"] == {"main": 0.1, "floor": 0.0, "ceiling": 0.5,
                                   "position": pytest.approx(0.2)}
    assert out["similarity"]["position"] is None  # floor and ceiling coincide


def result(name: str, seed: int, dev: float, test: float, **extra) -> dict:
    return {"kind": "arm", "arm": name, "regime": "few", "seed": seed, "dev": dev, "test": test,
            **extra}


def test_each_arm_gets_its_own_lr_chosen_on_dev():
    grid = {}
    devs = {"vanilla": (0.5, 0.6, 0.55), "init": (0.7, 0.6, 0.6)}
    for name, values in devs.items():
        for lr, dev in zip((1e-4, 3e-4, 1e-3), values):
            info = {**arm(name, "few", 0, lr), "dev": dev, "test": 1.0 - dev, "best_step": 0}
            grid[run_name(info)] = info
    grids = {"few": [1e-4, 3e-4, 1e-3]}
    assert chosen_lrs(grid, grids) == {"few": {"vanilla": 3e-4, "init": 1e-4}}
    tie = {n: {**r, "dev": 0.5} for n, r in grid.items()}
    assert chosen_lrs(tie, grids)["few"]["vanilla"] == 1e-4  # first listed
    # each regime on its own grid: a LoRA regime's grid has LRs the full-FT one lacks
    lora = {run_name(info): info for info in (
        {**arm("vanilla", "few-lora", 0, lr), "dev": dev, "test": 0.0, "best_step": 0}
        for lr, dev in ((1e-3, 0.4), (1e-2, 0.6)))}
    assert chosen_lrs({**grid, **lora}, {**grids, "few-lora": [1e-3, 1e-2]})["few-lora"] == \
        {"vanilla": 1e-2}
    del grid[run_name(arm("init", "few", 0, 3e-4))]
    with pytest.raises(ValueError, match="few/init has no result for"):
        chosen_lrs(grid, grids)


def test_the_table_has_every_arm_with_its_seeds_in_order():
    found = {run_name(arm(a, "few", s)): result(a, s, 0.5 + s / 100, 0.4 + s / 100)
             for a in ARMS for s in (2, 1)}
    rows = table(found, ["few"], [1, 2])
    assert [r["run"] for r in rows] == ["v0 · vanilla", "v1 · vanilla", "v1 · init",
                                        "v1 · distill", "v1 · init+distill", "v1 · label-free"]
    assert rows[0]["seeds"] == [1, 2] and rows[0]["test_per_seed"] == pytest.approx([0.41, 0.42])
    assert rows[0]["test_mean"] == pytest.approx(0.415)


def test_the_gate_reads_every_seeds_bundle_of_its_tuning_method_on_v1():
    found = {run_name(compat(s, method=m)): {**compat(s, method=m), "old_dev": 0.7,
                                              "dev": dev, "majority": 0.2}
             for s in (0, 1, 2) for m, dev in (("full", 0.5), ("lora", 0.3))}
    assert [(b["seed"], b["compat_dev"]) for b in gate_bundles(found, [1, 2], "full")] == \
        [(0, 0.5), (1, 0.5), (2, 0.5)]
    # an LLM budget has LoRA bundles only: the gate reads theirs
    assert [b["compat_dev"] for b in gate_bundles(found, [1, 2], "lora")] == [0.3, 0.3, 0.3]


def test_a_grid_of_one_lr_gives_every_arm_that_lr_without_a_run():
    assert chosen_lrs({}, {"few-lora": [3e-3]}) == {"few-lora": dict.fromkeys(ARMS, 3e-3)}
    with pytest.raises(ValueError, match="few-lora/vanilla has no result"):
        chosen_lrs({run_name(arm("vanilla", "few-lora", 0, 1e-3)):
                    {**arm("vanilla", "few-lora", 0, 1e-3), "dev": 0.5, "test": 0.5,
                     "best_step": 0}}, {"few-lora": [1e-3, 3e-3]})


def test_the_label_free_library_holds_the_bundles_on_v1_and_bundle_1_along_v1s_run():
    def scored(info, agreement):  # near v0: 0.97 of the gain kept
        return {**info, "old_dev": 0.8, "dev": 0.78, "majority": 0.2,
                "label_free": {"agreement": agreement, "mean_kl": 0.1}}

    found = {}
    for s in (0, 1):
        found[run_name(compat(s))] = {**compat(s), "old_dev": 0.8, "dev": 0.4, "majority": 0.2}
        found[run_name(label_free_compat(s))] = scored(label_free_compat(s), 0.7)
    for point in (0.0, 0.5, 0.25):  # v0 itself (point 0) is no recycling: left out
        found[run_name(compat(1, point))] = scored(compat(1, point), 0.95)
    found[run_name(compat(1, 0.5, "lora"))] = scored(compat(1, 0.5, "lora"), 0.9)
    rows = library(found, ["full"], [1], "full")
    assert [(r["seed"], r["point"], r["compat_dev"]) for r in rows] == \
        [(0, 1.0, 0.4), (1, 1.0, 0.4), (1, 0.25, 0.78), (1, 0.5, 0.78)]
    d = F.label_free_decisions(rows)
    assert [r["labeled"] for r in d["bundles"]] == ["re-tune", "re-tune", "keep", "keep"]
    assert d["same"] == 4 and d["of"] == 4
