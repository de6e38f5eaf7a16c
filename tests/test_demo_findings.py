"""The demo's verdicts on hand-made run results (no runs, no files): a world in which every finding
holds, and for each finding a change of its own inputs that turns it from yes to no (or partly)
while the others stay yes; then the edges of each criterion (ties, missing runs, no gain, a capped
baseline) and the pure parts of demo.results the findings stand on (the grid's choice, the table,
the compat curve, convergence)."""
from __future__ import annotations

import pytest

from rtune_ds.demo import findings as F
from rtune_ds.demo.plan import (
    COMPAT_TUNINGS,
    METHODS,
    METRIC,
    NEW_TASK,
    OLD_TASK,
    REGIMES,
    compat,
    grid,
    recycled,
    run_name,
    tuned,
)
from rtune_ds.demo.results import chosen_lrs, compat_curve, convergence, table

SEEDS = (1, 2)
SPREAD = {1: 0.01, 2: -0.01}  # each seed's test accuracy around its setting's mean
LR_GRID = [1e-4, 3e-4, 1e-3]
GRID_DEV = {"full": {1e-4: 0.6, 3e-4: 0.7, 1e-3: 0.5}, "few": {1e-4: 0.4, 3e-4: 0.35, 1e-3: 0.3}}
CHOSEN = {"full": 3e-4, "few": 1e-4}
GLOBAL_BATCH = 16
MAJORITY = 0.25
POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # along v1's continual pretraining
VANILLA = [(0, 0.3), (10, 0.6), (20, 0.8), (30, 0.75)]  # best 0.8, first reached at step 20
FAST = [(0, 0.5), (10, 0.8), (20, 0.85)]  # reaches exactly vanilla's best, at step 10
SLOW = [(0, 0.3), (10, 0.5), (20, 0.7), (30, 0.8)]  # reaches it at step 30
NEVER = [(0, 0.3), (10, 0.7), (20, 0.79)]
HOLDS = {
    "early_stopped": {"full": True, "few": True},  # every vanilla run of the regime, grid included
    "loss": {"general": (3.0, 3.1), "computing": (4.0, 3.0)},  # v1's first and final MLM eval
    "own": {"v0": 0.6, "rand": 0.5},  # test on OLD_TASK, full FT, full data
    "rand_new": 0.3,  # rand tuned on NEW_TASK
    "v0_new": {"full": 0.5, "few": 0.3},  # v0 tuned on NEW_TASK (mean over seeds)
    "v1": {"full": {"vanilla": 0.6, "init": 0.65, "distill": 0.62, "init+distill": 0.66},
           "few": {"vanilla": 0.35, "init": 0.4, "distill": 0.38, "init+distill": 0.45}},
    "compat": {"full": (0.7, 0.68, 0.62, 0.6, 0.55),  # dev at POINTS; at 0 it is v0's own dev
               "lora": (0.65, 0.62, 0.58, 0.55, 0.5)},
    "init_curve": {"full": FAST, "few": FAST},
    "barrier": {"main": 0.01, "control": 0.2},
    "js": {"main": 0.01, "control": 0.1},
}
ALL_YES = dict.fromkeys(F.CLAIMS, "yes")


def merged(base: dict, change: dict) -> dict:
    """`base` with `change` applied; a nested dict changes key by key."""
    if set(change) - set(base):
        raise KeyError(f"not a knob: {set(change) - set(base)}")
    return {k: merged(v, change[k]) if k in change and isinstance(v, dict) else change.get(k, v)
            for k, v in base.items()}


def summary(info: dict, test: float, dev: float = 0.7, early_stopped: bool = True) -> dict:
    """A run's result as read from its summary.json."""
    return {**info, "source": "summary.json", "dev": dev, "test": test, "majority": MAJORITY,
            "best_step": 20, "steps": 30 if early_stopped else 40, "early_stopped": early_stopped}


def compat_run(tuning: str, point: float, dev: float, old_dev: float) -> dict:
    """A compat run's result as read from its compat.json."""
    return {**compat(tuning, point), "source": "compat.json", "dev": dev, "test": dev - 0.02,
            "majority": MAJORITY, "old_dev": old_dev}


def wall(step: int) -> float:
    return 3.0 + 1.5 * step


def records(curve: list[tuple[int, float]]) -> list[dict]:
    """A tuning run's metrics.jsonl: an eval row per point of `curve`, a train row after each."""
    rows = []
    for step, acc in curve:
        rows.append({"step": step, METRIC: acc, "train/tokens": 512 * step,
                     "wall_time": wall(step)})
        rows.append({"step": step + 5, "train/loss": 1.0, "train/tokens": 512 * (step + 5)})
    return rows


def pretraining(loss: dict[str, tuple[float, float]]) -> dict:
    """results.pretraining() of a v1 whose loss on each domain went from the first to the last."""
    first, final = ({f"eval/loss/{d}": pair[i] for d, pair in loss.items()} for i in (0, 1))
    return {"v1": {"steps": 200, "first_eval": {"step": 0, **first}, "final_eval": final}}


def connectivity(barriers: dict[str, float]) -> dict:
    """connectivity.json with these accuracy barriers (each pair's curve dips by it midway)."""
    return {"pairs": {name: {"barrier": {"accuracy": b},
                             "curve": [{"lambda": 0.0, "accuracy": 0.6},
                                       {"lambda": 0.5, "accuracy": 0.6 - b},
                                       {"lambda": 1.0, "accuracy": 0.6}]}
                      for name, b in barriers.items()}}


def similarity(js: dict[str, float]) -> dict:
    """similarity.json with these mean head divergences."""
    return {"js_max": 0.693, "pairs": {name: {"mean": x} for name, x in js.items()}}


def v1_runs(k: dict, regime: str) -> list[dict]:
    """The LR grid and the recycling comparison of one regime; vanilla's seed 1 is the grid run
    of the chosen LR."""
    means, stopped = k["v1"][regime], k["early_stopped"][regime]
    runs = []
    for lr, dev in GRID_DEV[regime].items():
        chosen = lr == CHOSEN[regime]
        test = means["vanilla"] + SPREAD[1] if chosen else 0.5
        runs.append(summary(grid(regime, lr, chosen), test, dev, stopped))
    runs += [summary(recycled("vanilla", regime, s), means["vanilla"] + SPREAD[s],
                     early_stopped=stopped) for s in SEEDS[1:]]
    return runs + [summary(recycled(m, regime, s), means[m] + SPREAD[s])
                   for m in METHODS[1:] for s in SEEDS]


def world(**change) -> dict:
    """The inputs of findings() in a demo where every finding holds, HOLDS with `change` applied:
    results and logs by run name, pretraining evals (pre), connectivity and similarity JSON."""
    k = merged(HOLDS, change)
    runs = [summary(tuned(OLD_TASK, base), k["own"][base]) for base in ("v0", "rand")]
    runs += [summary(tuned(NEW_TASK, "rand"), k["rand_new"]),
             summary(tuned(NEW_TASK, "v0", "lora"), 0.45)]
    runs += [summary(tuned(NEW_TASK, "v0", "full", regime, s), k["v0_new"][regime] + SPREAD[s])
             for regime in REGIMES for s in SEEDS]
    runs += [compat_run(t, point, dev, old_dev=k["compat"][t][0])
             for t in COMPAT_TUNINGS for point, dev in zip(POINTS, k["compat"][t])]
    runs += [r for regime in REGIMES for r in v1_runs(k, regime)]
    logs = {run_name(r): records(k["init_curve"][r["regime"]] if r["method"] == "init" else VANILLA)
            for r in runs if r["kind"] != "grid" and r["method"] in METHODS}
    return {"results": {run_name(r): r for r in runs}, "logs": logs,
            "pre": pretraining(k["loss"]), "conn": connectivity(k["barrier"]),
            "sim": similarity(k["js"])}


def dropping(w: dict, **info) -> dict:
    """World `w` without the runs (and their logs) whose info has all these values."""
    gone = {n for n, r in w["results"].items() if all(r.get(k) == v for k, v in info.items())}
    assert gone, info
    return {**w, "results": {n: r for n, r in w["results"].items() if n not in gone},
            "logs": {n: x for n, x in w["logs"].items() if n not in gone}}


def judged(w: dict) -> dict[str, dict]:
    """Every finding on world `w`, made the way the demo's report makes them."""
    r = w["results"]
    conv = convergence(r, w["logs"], GLOBAL_BATCH)
    return F.findings(table(r), r, compat_curve(r), conv, w["pre"], w["conn"], w["sim"])


def verdicts(w: dict) -> dict[str, str]:
    return {key: f["reproduced"] for key, f in judged(w).items()}


def test_in_the_world_that_holds_every_finding_is_yes():
    found = judged(world())
    assert list(found) == list(F.CLAIMS)
    assert {key: f["reproduced"] for key, f in found.items()} == ALL_YES
    assert found["compat_far_above_chance"]["evidence"]["full"]["gain_kept"] == \
        pytest.approx((0.55 - 0.25) / (0.7 - 0.25))
    assert found["v1_learned_the_new_domain"]["evidence"]["relative_change"] == \
        pytest.approx({"general": 0.1 / 3, "computing": -0.25})
    assert found["init_beats_vanilla"]["evidence"]["few-shot"] == \
        {"init_test": pytest.approx(0.4), "vanilla_test": pytest.approx(0.35), "seeds_won": "2/2"}


SLOW_INIT, NEVER_CAPPED = {"full": SLOW, "few": SLOW}, {"full": False, "few": False}
TURNS = [  # (finding, a change of its own inputs, its verdict then)
    ("baseline_converged", {"early_stopped": NEVER_CAPPED}, "no"),
    ("baseline_converged", {"early_stopped": {"few": False}}, "partly"),
    ("v1_learned_the_new_domain",
     {"loss": {"general": (3.0, 3.3), "computing": (4.0, 4.5)}}, "no"),  # +10%, +12.5%
    ("v1_learned_the_new_domain", {"loss": {"general": (3.0, 3.3)}}, "partly"),
    # both fall by 20%: a head still learning, no shift between the domains
    ("v1_learned_the_new_domain",
     {"loss": {"general": (3.0, 2.4), "computing": (4.0, 3.2)}}, "partly"),
    ("v0_beats_random_init", {"own": {"rand": 0.7}, "rand_new": 0.6}, "no"),
    ("v0_beats_random_init", {"own": {"rand": 0.7}}, "partly"),
    ("v1_beats_v0_on_new_domain", {"v0_new": {"full": 0.7, "few": 0.5}}, "no"),
    ("v1_beats_v0_on_new_domain", {"v0_new": {"few": 0.5}}, "partly"),
    ("compat_far_above_chance",  # each bundle keeps 0.05/0.45 and 0.05/0.4 of its gain
     {"compat": {"full": (0.7, 0.68, 0.62, 0.6, 0.3), "lora": (0.65, 0.62, 0.58, 0.55, 0.3)}},
     "no"),
    ("compat_far_above_chance", {"compat": {"lora": (0.65, 0.62, 0.58, 0.55, 0.3)}}, "partly"),
    ("compat_decays_along_pretraining",
     {"compat": {"full": (0.6, 0.62, 0.64, 0.66, 0.7), "lora": (0.55, 0.56, 0.57, 0.58, 0.6)}},
     "no"),
    ("compat_decays_along_pretraining", {"compat": {"lora": (0.55, 0.56, 0.57, 0.58, 0.6)}},
     "partly"),
    ("init_converges_faster", {"init_curve": SLOW_INIT}, "no"),
    ("init_converges_faster", {"init_curve": {"few": SLOW}}, "partly"),
    ("init_beats_vanilla", {"v1": {"full": {"init": 0.55}, "few": {"init": 0.3}}}, "no"),
    ("init_beats_vanilla", {"v1": {"full": {"init": 0.55}}}, "partly"),
    ("distill_beats_vanilla_few_shot", {"v1": {"few": {"distill": 0.3}}}, "no"),
    ("init_distill_best_few_shot", {"v1": {"few": {"init+distill": 0.39}}}, "no"),
    ("mode_connectivity", {"barrier": {"main": 0.2, "control": 0.01}}, "no"),
    ("similar_attention_heads", {"js": {"main": 0.1, "control": 0.01}}, "no"),
]


@pytest.mark.parametrize("key, change, verdict", TURNS,
                         ids=[f"{key}-{verdict}" for key, _, verdict in TURNS])
def test_each_finding_turns_on_its_own_inputs_alone(key, change, verdict):
    assert verdicts(world(**change)) == {**ALL_YES, key: verdict}


def test_every_finding_has_a_change_that_turns_it_no():
    assert {key for key, _, verdict in TURNS if verdict == "no"} == set(F.CLAIMS)


def test_verdict():
    assert F.verdict([True, True]) == "yes"
    assert F.verdict([True, False]) == "partly"
    assert F.verdict([False, False]) == "no"
    assert F.verdict([]) == "not run"


# ---------------------------------------------------------------- ties

TIES = [  # (finding, a change making a comparison a tie, its verdict then)
    ("v0_beats_random_init", {"own": {"rand": 0.6}}, "partly"),  # the new task still wins
    ("v1_beats_v0_on_new_domain", {"v0_new": {"full": 0.6, "few": 0.35}}, "no"),
    ("init_beats_vanilla", {"v1": {"full": {"init": 0.6}, "few": {"init": 0.35}}}, "no"),
    ("distill_beats_vanilla_few_shot", {"v1": {"few": {"distill": 0.35}}}, "no"),
    ("init_distill_best_few_shot", {"v1": {"few": {"init+distill": 0.4}}}, "yes"),  # = init
    ("init_converges_faster", {"init_curve": {"full": VANILLA, "few": VANILLA}}, "no"),
    ("compat_far_above_chance",  # exactly half of each gain kept: (0.5 - 0.25) / (0.75 - 0.25)
     {"compat": {"full": (0.75, 0.7, 0.65, 0.6, 0.5), "lora": (0.75, 0.7, 0.6, 0.55, 0.5)}},
     "yes"),
    ("compat_decays_along_pretraining",  # the second half averages exactly the first
     {"compat": dict.fromkeys(COMPAT_TUNINGS, (0.75, 0.5, 0.75, 0.625, 0.5))},
     "yes"),
    ("mode_connectivity", {"barrier": {"main": 0.125, "control": 0.125}}, "no"),
    ("similar_attention_heads", {"js": {"main": 0.05, "control": 0.05}}, "no"),
]


@pytest.mark.parametrize("key, change, verdict", TIES, ids=[key for key, _, _ in TIES])
def test_ties(key, change, verdict):
    assert verdicts(world(**change)) == {**ALL_YES, key: verdict}


NO_DECAY = {  # dev at POINTS of a bundle whose compat does not decay, though one test holds
    "second half above the first": (0.7, 0.5, 0.8, 0.8, 0.65),  # 0.75 against 0.6; ends lower
    "50% counts in the second half": (0.7, 0.6, 0.9, 0.6, 0.55),  # 0.683 against 0.65
    "ends above its start": (0.7, 0.7, 0.5, 0.5, 0.75),  # 0.583 against 0.7
}


@pytest.mark.parametrize("dev", NO_DECAY.values(), ids=NO_DECAY)
def test_compat_decays_needs_a_lower_end_and_a_second_half_not_above_the_first(dev):
    found = judged(world(compat={"full": dev}))["compat_decays_along_pretraining"]
    assert found["reproduced"] == "partly"
    assert found["evidence"]["full"]["decays"] is False


def test_seeds_won_pairs_the_same_seeds_and_a_tie_is_no_win():
    def seeds_won(vanilla: dict[int, float], distill: dict[int, float]) -> str:
        runs = [summary(recycled(m, "few", seed), x)
                for m, xs in (("vanilla", vanilla), ("distill", distill)) for seed, x in xs.items()]
        rows = table({run_name(r): r for r in runs})
        return F.distill_beats_vanilla_few_shot(rows)["evidence"]["seeds_won"]

    assert seeds_won({1: 0.5, 2: 0.1}, {2: 0.2}) == "1/1"
    assert seeds_won({1: 0.5, 2: 0.1}, {1: 0.4, 3: 0.9}) == "0/1"  # seed 3: no vanilla run
    assert seeds_won({1: 0.3, 2: 0.3}, {1: 0.3, 2: 0.4}) == "1/2"


@pytest.mark.parametrize("distill, verdict", [
    ({1: 0.70, 2: 0.60, 3: 0.61}, "no"),  # mean 0.637 > 0.62, carried by seed 1: 1/3 seeds
    ({1: 0.64, 2: 0.63, 3: 0.61}, "yes"),  # mean 0.627 > 0.62 and 2/3 seeds
    ({1: 0.63, 2: 0.63, 3: 0.50}, "no"),  # 2/3 seeds, but the mean 0.587 is lower
])
def test_a_win_needs_the_higher_mean_and_most_seeds(distill, verdict):
    vanilla = {1: 0.62, 2: 0.62, 3: 0.62}
    runs = [summary(recycled(m, "few", seed), x)
            for m, xs in (("vanilla", vanilla), ("distill", distill)) for seed, x in xs.items()]
    found = F.distill_beats_vanilla_few_shot(table({run_name(r): r for r in runs}))
    assert found["reproduced"] == verdict


# ---------------------------------------------------------------- missing runs and inputs

NOT_RUN = "not run"
MISSING = [  # (the runs dropped from the world, the verdicts that change)
    ({"method": "distill", "regime": "few"},
     {"distill_beats_vanilla_few_shot": NOT_RUN, "init_distill_best_few_shot": NOT_RUN}),
    ({"base": "v0", "task": NEW_TASK, "regime": "few"}, {}),  # full data alone still wins
    ({"base": "rand", "task": NEW_TASK}, {}),  # the old task alone still wins
    ({"method": "init", "regime": "few", "seed": 2}, {}),  # seed 2 few-shot: no init to compare
    ({"method": "compat", "tuning": "lora"}, {}),
    ({"method": "compat", "point": 1.0},
     {"compat_far_above_chance": NOT_RUN, "compat_decays_along_pretraining": NOT_RUN}),
    ({"method": "init"}, {"init_converges_faster": NOT_RUN, "init_beats_vanilla": NOT_RUN,
                          "init_distill_best_few_shot": NOT_RUN}),
    ({"method": "vanilla"},
     {key: NOT_RUN for key in ("baseline_converged", "v1_beats_v0_on_new_domain",
                               "init_converges_faster", "init_beats_vanilla",
                               "distill_beats_vanilla_few_shot", "init_distill_best_few_shot")}),
]


@pytest.mark.parametrize("dropped, changed", MISSING,
                         ids=["-".join(map(str, d.values())) for d, _ in MISSING])
def test_a_missing_run_gives_no_flag(dropped, changed):
    assert verdicts(dropping(world(), **dropped)) == {**ALL_YES, **changed}


def test_a_missing_setting_is_shown_as_none_and_the_other_regime_still_judged():
    found = judged(dropping(world(v0_new={"full": 0.7}), base="v0", task=NEW_TASK, regime="few"))
    v1_v0 = found["v1_beats_v0_on_new_domain"]
    assert v1_v0["reproduced"] == "no"
    assert v1_v0["evidence"]["few-shot"] == {"v1_test": pytest.approx(0.35), "v0_test": None}


MISSING_INPUTS = [  # (input, its value, the finding that is then not run)
    ("pre", {}, "v1_learned_the_new_domain"),
    ("pre", {"v1": {**pretraining(HOLDS["loss"])["v1"], "first_eval": None}},
     "v1_learned_the_new_domain"),
    ("conn", {}, "mode_connectivity"),
    ("conn", connectivity({"main": 0.01}), "mode_connectivity"),
    ("sim", {}, "similar_attention_heads"),
    ("sim", similarity({"main": 0.01}), "similar_attention_heads"),
]


@pytest.mark.parametrize("name, value, key", MISSING_INPUTS,
                         ids=[f"{name}-{i}" for i, (name, _, _) in enumerate(MISSING_INPUTS)])
def test_a_missing_input_is_not_run(name, value, key):
    assert verdicts({**world(), name: value}) == {**ALL_YES, key: NOT_RUN}


# ---------------------------------------------------------------- the criteria's edges

@pytest.mark.parametrize("old_dev, dev", [(MAJORITY, 0.6), (0.15, 0.1)])
def test_a_bundle_with_no_gain_over_chance_on_v0_keeps_none(old_dev, dev):
    # (0.1 - 0.25) / (0.15 - 0.25) would be 1.5: losses on both sides are no gain kept
    curve = {"full": [{"point": 1.0, "dev": dev, "test": dev, "old_dev": old_dev,
                       "majority": MAJORITY}]}
    found = F.compat_far_above_chance(curve)
    assert found["reproduced"] == "no"
    assert found["evidence"]["full"]["gain_kept"] is None


def test_an_init_run_that_never_reaches_vanillas_best_is_not_faster():
    found = judged(world(init_curve={"few": NEVER}))["init_converges_faster"]
    assert found["reproduced"] == "partly"
    few = [e for e in found["evidence"] if e["regime"] == "few"]
    assert [(e["seed"], e["init_step"], e["init_faster"]) for e in few] == \
        [(1, None, False), (2, None, False)]


def test_init_converges_faster_is_judged_per_seed():
    w = world()
    w["logs"][run_name(recycled("init", "few", 2))] = records(SLOW)
    found = judged(w)["init_converges_faster"]
    assert found["reproduced"] == "partly"
    assert [(e["regime"], e["seed"], e["vanilla_step"], e["init_step"])
            for e in found["evidence"]] == \
        [("full", 1, 20, 10), ("full", 2, 20, 10), ("few", 1, 20, 10), ("few", 2, 20, 30)]


def test_baseline_converged_needs_every_vanilla_run_on_v1_early_stopped():
    results = world()["results"]
    name = run_name(recycled("vanilla", "few", 2))
    capped = {**results, name: summary(recycled("vanilla", "few", 2), 0.34, early_stopped=False)}
    found = F.baseline_converged(capped)
    assert found["reproduced"] == "partly"
    assert len(found["evidence"]) == 8  # 3 grid LRs and seed 2, per regime
    assert found["evidence"][name] == {"steps": 40, "best_step": 20, "early_stopped": False}
    # other runs that hit their cap (v0's, the recycled arms) are not the baseline
    others = {n: {**r, "early_stopped": False} if r.get("method") != "vanilla" else r
              for n, r in results.items()}
    assert F.baseline_converged(others)["reproduced"] == "yes"
    assert F.baseline_converged({})["reproduced"] == NOT_RUN


# ---------------------------------------------------------------- the LR grid's choice

def grid_results(devs: dict[str, list[float]], lrs: list[float] = LR_GRID) -> dict[str, dict]:
    """Grid runs with these dev accuracies; test is 1 - dev, so choosing on test would differ."""
    runs = [summary(grid(regime, lr, False), 1 - dev, dev)
            for regime, xs in devs.items() for lr, dev in zip(lrs, xs)]
    return {run_name(r): r for r in runs}


def test_chosen_lrs_pick_the_best_dev_per_regime():
    assert chosen_lrs(grid_results({"full": [0.6, 0.7, 0.5], "few": [0.4, 0.3, 0.2]}),
                      LR_GRID) == {"full": 3e-4, "few": 1e-4}
    assert chosen_lrs(world()["results"], LR_GRID) == CHOSEN  # the chosen runs are in the grid


def test_chosen_lrs_break_a_tie_toward_the_first_grid_lr():
    tied = grid_results({"full": [0.6, 0.7, 0.7], "few": [0.5, 0.4, 0.5]})
    assert chosen_lrs(tied, LR_GRID) == {"full": 3e-4, "few": 1e-4}
    assert chosen_lrs(tied, LR_GRID[::-1]) == {"full": 1e-3, "few": 1e-3}


def test_chosen_lrs_raise_when_a_grid_lr_has_no_result():
    with pytest.raises(ValueError, match=r"few.*0\.001"):
        chosen_lrs(dropping(world(), regime="few", lr=1e-3)["results"], LR_GRID)


# ---------------------------------------------------------------- the table, compat, convergence

def test_a_table_row_has_its_seeds_in_order_with_mean_and_sd():
    runs = [summary(tuned(NEW_TASK, "v0", "full", "few", seed), test, dev)
            for seed, test, dev in ((10, 0.6, 0.5), (1, 0.5, 0.3), (2, 0.7, 0.4))]
    [row] = table({run_name(r): r for r in runs})
    assert row["run"] == "v0 · full FT · few-shot"
    assert row["seeds"] == [1, 2, 10]  # by seed, not by name (s10 < s2)
    assert row["runs"] == [f"{NEW_TASK}-v0-full-few-s{s}" for s in (1, 2, 10)]
    assert row["test_per_seed"] == [0.5, 0.7, 0.6]
    assert row["dev_per_seed"] == [0.3, 0.4, 0.5]
    assert row["test_mean"] == pytest.approx(0.6)
    assert row["dev_mean"] == pytest.approx(0.4)
    assert row["test_std"] == pytest.approx(0.1)
    assert row["majority"] == MAJORITY
    [single] = table({"one": summary(tuned(OLD_TASK, "v0"), 0.6)})
    assert single["test_std"] == 0.0


def test_the_table_of_the_world():
    rows = table(world()["results"])
    assert len(rows) == 16  # 3 controls, v0 x 3, 2 compat bundles, 4 methods x 2 regimes
    controls = ["v0 · full FT · full data"] + ["rand · full FT · full data"] * 2
    assert [r["run"] for r in rows[:3]] == controls
    assert [r["task"] for r in rows[:3]] == [OLD_TASK, OLD_TASK, NEW_TASK]
    # vanilla's seed 1 is the chosen grid run; the other grid runs are in no row
    assert F.row_of(rows, recycled("vanilla", "full"))["runs"] == \
        ["grid-full-lr0.0003", "recycle-vanilla-full-s2"]
    assert F.row_of(rows, compat("lora", 1.0))["runs"] == ["compat-lora-100"]  # v1's final weights


def test_compat_curve_is_ordered_by_point_per_bundle():
    runs = [compat_run("full", point, dev, 0.7) for point, dev in ((1.0, 0.5), (0.0, 0.7),
                                                                   (0.5, 0.6))]
    curve = compat_curve({run_name(r): r for r in runs})
    assert [(p["point"], p["dev"]) for p in curve["full"]] == [(0.0, 0.7), (0.5, 0.6), (1.0, 0.5)]
    assert curve["full"][0] == {"point": 0.0, "dev": 0.7, "test": pytest.approx(0.68),
                                "old_dev": 0.7, "majority": MAJORITY}
    assert curve["lora"] == []


def test_convergence_counts_examples_and_wall_time_at_the_first_eval_at_vanillas_best():
    w = world()
    conv = convergence(w["results"], w["logs"], GLOBAL_BATCH)
    assert conv["metric"] == METRIC
    assert [(p["regime"], p["seed"]) for p in conv["pairs"]] == \
        [("full", 1), ("full", 2), ("few", 1), ("few", 2)]
    first = conv["pairs"][0]
    assert first["runs"]["vanilla"] == "grid-full-lr0.0003"
    assert first["vanilla_best"] == 0.8
    assert first["methods"]["vanilla"] == {"step": 20, "value": 0.8, "examples": 320,
                                           "wall_time_s": 33.0}
    assert first["methods"]["init"] == {"step": 10, "value": 0.8, "examples": 160,
                                        "wall_time_s": 18.0}
    assert convergence(w["results"], w["logs"], 4)["pairs"][0]["methods"]["init"]["examples"] == 40


def test_convergence_gives_none_for_a_run_that_never_reaches_vanillas_best():
    w = world(init_curve={"full": NEVER})
    pair = convergence(w["results"], w["logs"], GLOBAL_BATCH)["pairs"][0]
    assert pair["methods"]["init"] is None
    assert pair["methods"]["distill"]["step"] == 20
