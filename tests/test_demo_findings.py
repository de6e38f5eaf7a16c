"""The demo's verdicts on hand-made run results (no runs, no files): a world in which every finding
holds, and for each finding a change of its own inputs that turns it from yes to no while the
others stay yes; then the edges of each criterion (ties, partial wins, missing runs)."""
from __future__ import annotations

import pytest

from rtune_ds.demo import findings as F
from rtune_ds.demo.plan import (
    CONTROLS,
    FEW_METHODS,
    METRIC,
    NEW_TASK,
    OLD_TASK,
    recycled,
    run_name,
    tuned,
)
from rtune_ds.demo.results import convergence, table

SEEDS = (1, 2)
VANILLA = [(0, 0.2), (10, 0.5), (20, 0.8)]  # best 0.8: the target is 0.76, reached at step 20
FAST = [(0, 0.78), (10, 0.8), (20, 0.8)]  # reaches 0.76 at step 0
SLOW = [(0, 0.2), (10, 0.4), (20, 0.6), (30, 0.8)]  # reaches it at step 30
HOLDS = {"v0_own": 0.6, "rand_own": 0.5, "v0_new": 0.4, "rand_new": 0.45, "v1_new": 0.5,
         "compat_dev": 0.6, "old_dev": 0.7, "majority": 0.2, "init_curve": FAST,
         "few": {"vanilla": 0.3, "init": 0.4, "distill": 0.35, "init+distill": 0.45},
         "barrier": {"main": 0.01, "control": 0.2}, "js": {"main": 0.01, "control": 0.1}}


def run(info: dict, test: float, dev: float = 0.5, majority: float = 0.2, **extra) -> dict:
    return {**info, "source": "summary.json", "dev": dev, "test": test, "majority": majority,
            **extra}


def records(curve: list[tuple[int, float]]) -> list[dict]:
    return [{"step": step, METRIC: value, "train/tokens": 100 * step} for step, value in curve]


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


def judged(results: dict[str, dict], logs: dict[str, list] | None = None, conn: dict | None = None,
           sim: dict | None = None) -> dict:
    """The findings of `results` the way the demo makes them (table, convergence, findings)."""
    logs = logs or {}
    conv = convergence(results, logs) if logs else {"pairs": []}
    return F.findings(table(results), results, conv, conn or {}, sim or {})


def world(**change) -> tuple[dict, dict, dict, dict]:
    """(results, logs, connectivity.json, similarity.json) of a demo where every finding holds,
    with `change` applied to the knobs of HOLDS."""
    k = {**HOLDS, **change}
    runs = [run(tuned(OLD_TASK, base, tuning, regime), k[f"{base}_own"])
            for tuning, regime in CONTROLS for base in ("v0", "rand")]
    runs += [run(tuned(NEW_TASK, "v0"), k["v0_new"]), run(tuned(NEW_TASK, "rand"), k["rand_new"]),
             run(recycled("vanilla"), k["v1_new"]), run(recycled("init"), 0.5),
             run(recycled("compat"), 0.6, dev=k["compat_dev"], majority=k["majority"],
                 old_dev=k["old_dev"])]
    curves = {run_name(recycled("vanilla")): VANILLA, run_name(recycled("init")): k["init_curve"]}
    for seed in SEEDS:
        for m in FEW_METHODS:
            info = recycled(m, "few", seed)
            runs.append(run(info, k["few"][m] + (0.01 if seed == 1 else -0.01)))
            curves[run_name(info)] = VANILLA if m != "init" else k["init_curve"]
    return ({run_name(r): r for r in runs}, {n: records(c) for n, c in curves.items()},
            connectivity(k["barrier"]), similarity(k["js"]))


FLIPS = {  # finding -> a change of its own inputs that makes it fail
    "v0_beats_random_init": {"rand_own": 0.7},
    "v1_beats_v0_on_new_domain": {"v1_new": 0.3},
    "compat_far_above_chance": {"compat_dev": 0.3},  # keeps (0.3-0.2)/(0.7-0.2) = 20% of its gain
    "init_converges_faster": {"init_curve": SLOW},
    "distill_beats_vanilla_few_shot": {"few": {**HOLDS["few"], "distill": 0.25}},
    "init_distill_best": {"few": {**HOLDS["few"], "init+distill": 0.38}},
    "mode_connectivity": {"barrier": {"main": 0.2, "control": 0.01}},
    "similar_attention_heads": {"js": {"main": 0.1, "control": 0.01}},
}


def test_in_the_world_that_holds_every_finding_is_yes():
    found = judged(*world())
    assert list(found) == list(FLIPS)
    assert {key: f["reproduced"] for key, f in found.items()} == dict.fromkeys(FLIPS, "yes")


@pytest.mark.parametrize("key", FLIPS)
def test_each_finding_turns_no_on_its_own_inputs_alone(key):
    found = judged(*world(**FLIPS[key]))
    assert found[key]["reproduced"] == "no"
    assert {k: f["reproduced"] for k, f in found.items() if k != key} == \
        dict.fromkeys(set(FLIPS) - {key}, "yes")


def test_verdict():
    assert F.verdict([True, True]) == "yes"
    assert F.verdict([True, False]) == "partly"
    assert F.verdict([False]) == "no"
    assert F.verdict([]) == "not run"


# ---------------------------------------------------------------- the controls

def controls(task: str, v0: list[float], rand: list[float]) -> dict[str, dict]:
    """Tuning runs of v0 and rand on `task`, one per setting of CONTROLS (None: not run)."""
    runs = [run(tuned(task, base, tuning, regime), x)
            for base, xs in (("v0", v0), ("rand", rand))
            for (tuning, regime), x in zip(CONTROLS, xs) if x is not None]
    return {run_name(r): r for r in runs}


def test_v0_beats_random_init_looks_at_every_setting_of_its_own_task_only():
    def verdict(own_v0, own_rand, new_v0=(0.5,) * 3, new_rand=(0.5,) * 3):
        results = {**controls(OLD_TASK, own_v0, own_rand),
                   **controls(NEW_TASK, list(new_v0), list(new_rand))}
        return F.v0_beats_random_init(table(results))

    assert verdict([0.6] * 3, [0.5] * 3)["reproduced"] == "yes"
    for i in range(3):  # losing any one setting of the own task makes it partial
        rand = [0.5] * 3
        rand[i] = 0.7
        assert verdict([0.6] * 3, rand)["reproduced"] == "partly"
    assert verdict([0.5] * 3, [0.5] * 3)["reproduced"] == "no"  # a tie is no win
    # the computing task is listed but not judged: losing there changes nothing
    found = verdict([0.6] * 3, [0.5] * 3, new_v0=(0.1,) * 3)
    assert found["reproduced"] == "yes"
    assert [c["v0_wins"] for c in found["evidence"] if c["task"] == NEW_TASK] == [False] * 3
    assert verdict([0.4] * 3, [0.5] * 3, new_v0=(0.9,) * 3)["reproduced"] == "no"
    # a setting run on one side only does not count as a win
    assert verdict([0.6, 0.6, 0.6], [0.5, 0.5, None])["reproduced"] == "partly"
    assert verdict([0.6, None, None], [0.5, None, None])["reproduced"] == "yes"  # budget: full only
    assert F.v0_beats_random_init([])["reproduced"] == "not run"


def test_v1_beats_v0_on_the_new_task():
    def verdict(v1, v0):
        results = {run_name(r): r for r in (run(recycled("vanilla"), v1),
                                            run(tuned(NEW_TASK, "v0"), v0),
                                            run(recycled("init"), 0.99))}  # not the vanilla row
        return F.v1_beats_v0_on_new_domain(table(results))

    assert verdict(0.5, 0.4)["reproduced"] == "yes"
    assert verdict(0.4, 0.5)["reproduced"] == "no"
    assert verdict(0.5, 0.5)["reproduced"] == "no"
    assert verdict(0.5, 0.4)["evidence"] == {"v1_test": 0.5, "v0_test": 0.4}
    assert F.v1_beats_v0_on_new_domain([])["reproduced"] == "not run"


# ---------------------------------------------------------------- the paper's findings

def compat(tuning: str, dev: float, old_dev: float, majority: float = 0.2) -> dict:
    return {**recycled("compat", tuning=tuning), "source": "compat.json", "dev": dev,
            "test": dev, "majority": majority, "old_dev": old_dev, "old_test": old_dev}


def test_compat_keeps_half_of_each_bundles_gain_over_chance():
    def verdict(*bundles):
        return F.compat_far_above_chance({f"c{i}": b for i, b in enumerate(bundles)})

    assert verdict(compat("full", 0.5, 0.75, 0.25))["reproduced"] == "yes"  # exactly half kept
    assert verdict(compat("full", 0.49, 0.75, 0.25))["reproduced"] == "no"
    assert verdict(compat("full", 0.6, 0.7), compat("lora", 0.3, 0.7))["reproduced"] == "partly"
    # a bundle that never beat chance on v0 has no gain to keep
    for old_dev, dev in ((0.2, 0.5), (0.1, 0.0)):  # at chance; below it (and further on v1)
        found = verdict(compat("full", dev, old_dev))
        assert found["reproduced"] == "no" and found["evidence"][0]["gain_kept"] is None
    assert verdict(compat("full", 0.6, 0.7))["evidence"][0]["gain_kept"] == pytest.approx(0.8)
    assert F.compat_far_above_chance({})["reproduced"] == "not run"


def comparisons(init_curves: dict[tuple[str, int], list | None]) -> dict:
    """Convergence of vanilla (VANILLA) against init, per (regime, seed) of `init_curves`
    (None: no init run in that comparison)."""
    results, logs = {}, {}
    for (regime, seed), init_curve in init_curves.items():
        for method, curve in (("vanilla", VANILLA), ("init", init_curve)):
            if curve is not None:
                info = recycled(method, regime, seed)
                results[run_name(info)] = run(info, 0.5)
                logs[run_name(info)] = records(curve)
    return convergence(results, logs)


def test_init_converges_faster_in_every_comparison():
    def verdict(**curves):
        return F.init_converges_faster(comparisons(
            {("full", 1): curves.get("full", FAST), ("few", 1): curves.get("s1", FAST),
             ("few", 2): curves.get("s2", FAST)}))

    found = verdict()
    assert found["reproduced"] == "yes"
    assert [(e["regime"], e["seed"]) for e in found["evidence"]] == [("full", 1), ("few", 1),
                                                                     ("few", 2)]
    assert all(e["target"] == pytest.approx(0.76) and e["vanilla_step"] == 20
               for e in found["evidence"])
    assert verdict(full=SLOW)["reproduced"] == "partly"
    assert verdict(s2=SLOW)["reproduced"] == "partly"
    assert verdict(full=SLOW, s1=SLOW, s2=SLOW)["reproduced"] == "no"
    assert verdict(full=VANILLA, s1=VANILLA, s2=VANILLA)["reproduced"] == "no"  # as fast: no
    never = [(0, 0.2), (10, 0.7)]
    assert verdict(full=never, s1=never, s2=never)["reproduced"] == "no"
    assert verdict(s2=None)["reproduced"] == "partly"  # a seed without its init run is not shown
    assert F.init_converges_faster({"pairs": []})["reproduced"] == "not run"
    # vanilla always reaches its own target; were it not to, init reaching it is faster
    pair = {"regime": "full", "seed": 1, "vanilla_best": 0.8, "fraction": 0.95,
            "methods": {"vanilla": None, "init": {"step": 10}}}
    assert F.init_converges_faster({"pairs": [pair]})["reproduced"] == "yes"


def few_shot(means: dict[str, float]) -> list[dict]:
    """Table rows of the few-shot comparison: two seeds per method around `means`."""
    runs = [run(recycled(m, "few", seed), x + (0.02 if seed == 1 else -0.02))
            for m, x in means.items() for seed in SEEDS]
    return table({run_name(r): r for r in runs})


def test_distill_beats_vanilla_few_shot_on_the_mean_over_seeds():
    found = F.distill_beats_vanilla_few_shot(few_shot({"vanilla": 0.3, "distill": 0.35}))
    assert found["reproduced"] == "yes"
    assert found["evidence"]["distill_mean"] == pytest.approx(0.35)
    assert found["evidence"]["seeds_won"] == "2/2"
    assert F.distill_beats_vanilla_few_shot(
        few_shot({"vanilla": 0.35, "distill": 0.3}))["reproduced"] == "no"
    assert F.distill_beats_vanilla_few_shot(
        few_shot({"vanilla": 0.3, "distill": 0.3}))["reproduced"] == "no"
    assert F.distill_beats_vanilla_few_shot(few_shot({"vanilla": 0.3}))["reproduced"] == "not run"


def test_seeds_won_pairs_the_same_seeds():
    def seeds_won(vanilla: dict[int, float], distill: dict[int, float]) -> str:
        runs = [run(recycled(m, "few", seed), x) for m, xs in (("vanilla", vanilla),
                                                                ("distill", distill))
                for seed, x in xs.items()]
        rows = table({run_name(r): r for r in runs})
        return F.distill_beats_vanilla_few_shot(rows)["evidence"]["seeds_won"]

    assert seeds_won({1: 0.5, 2: 0.1}, {2: 0.2}) == "1/1"
    assert seeds_won({1: 0.5, 2: 0.1}, {1: 0.4, 3: 0.9}) == "0/1"  # seed 3: no vanilla run
    assert seeds_won({1: 0.3, 2: 0.3}, {1: 0.3, 2: 0.4}) == "1/2"  # a tie is no win


def test_init_distill_best_of_the_four():
    means = {"vanilla": 0.3, "init": 0.4, "distill": 0.35, "init+distill": 0.45}
    found = F.init_distill_best(few_shot(means))
    assert found["reproduced"] == "yes" and found["evidence"]["best"] == "init+distill"
    for other in ("vanilla", "init", "distill"):  # beaten by any one of the others: no
        found = F.init_distill_best(few_shot({**means, other: 0.5}))
        assert found["reproduced"] == "no" and found["evidence"]["best"] == other
    assert F.init_distill_best(few_shot({**means, "init": 0.45}))["reproduced"] == "yes"  # tie
    missing = {m: x for m, x in means.items() if m != "distill"}
    assert F.init_distill_best(few_shot(missing))["reproduced"] == "not run"


def test_mode_connectivity_needs_a_lower_barrier_than_the_control():
    def conn(**barriers):
        return connectivity(barriers)

    found = F.mode_connectivity(conn(main=0.01, control=0.2))
    assert found["reproduced"] == "yes"
    assert found["evidence"]["lowest_accuracy_control"] == pytest.approx(0.4)
    assert F.mode_connectivity(conn(main=0.2, control=0.01))["reproduced"] == "no"
    assert F.mode_connectivity(conn(main=0.0, control=0.0))["reproduced"] == "no"
    assert F.mode_connectivity(conn(main=0.01))["reproduced"] == "not run"
    assert F.mode_connectivity({})["reproduced"] == "not run"


def test_similar_attention_heads_need_less_divergence_than_the_control():
    def sim(**js):
        return similarity(js)

    assert F.similar_attention_heads(sim(main=0.01, control=0.1))["reproduced"] == "yes"
    assert F.similar_attention_heads(sim(main=0.1, control=0.01))["reproduced"] == "no"
    assert F.similar_attention_heads(sim(main=0.1, control=0.1))["reproduced"] == "no"
    assert F.similar_attention_heads(sim(main=0.01))["reproduced"] == "not run"
    assert F.similar_attention_heads({})["reproduced"] == "not run"
