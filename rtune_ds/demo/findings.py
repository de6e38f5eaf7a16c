"""The controls and the paper's findings, judged on the demo's results: for each, the claim, the
criterion, the numbers it compared and the verdict. Pure functions of what demo.results made
(the table rows, the run results, the convergence comparisons, the analyses' JSON): nothing is
read from a file here, so every verdict is unit-tested with hand-made results."""
from __future__ import annotations

from rtune_ds.demo.plan import (
    CONTROLS,
    FEW_METHODS,
    FRACTION,
    NEW_TASK,
    OLD_TASK,
    TASKS,
    recycled,
    setting,
    tuned,
)

CLAIMS = {  # finding -> (claim, criterion); the controls (does pretraining help here?) first
    "v0_beats_random_init": (
        "pretraining helps: v0 beats the same preset from random init, tuned the same way, on "
        f"its own domain's task ({OLD_TASK})",
        "mean test accuracy of the v0-tuned runs > that of the rand-tuned runs, for each tuning "
        "setting (the computing task is listed too)"),
    "v1_beats_v0_on_new_domain": (
        f"continual pretraining helps: v1 beats v0 on the computing task ({NEW_TASK})",
        "test accuracy of v1 tuned (full FT, full data) > that of v0 tuned the same way"),
    "compat_far_above_chance": (
        "a bundle tuned on v0 still works on v1 with no training, far above chance",
        "on v1, the bundle keeps at least half of its dev-accuracy gain over the majority-class "
        "baseline: (compat − majority) / (dev on v0 − majority) >= 0.5"),
    "init_converges_faster": (
        "initialising from the recycled bundle converges faster than vanilla tuning of v1",
        f"init reaches {FRACTION:.0%} of the vanilla run's best dev accuracy in fewer steps than "
        "vanilla, in each comparison (full data, and every few-shot seed)"),
    "distill_beats_vanilla_few_shot": (
        "few-shot, distilling from the old model beats vanilla tuning of v1",
        "mean test accuracy over seeds: distill > vanilla"),
    "init_distill_best": (
        "few-shot, init+distill is the best of the four",
        "mean test accuracy over seeds: init+distill >= vanilla, init, distill"),
    "mode_connectivity": (
        "the models tuned on v0 and on v1 are linearly mode connected, more than a control pair "
        "not related by continual pretraining",
        "accuracy barrier along the straight line (max shortfall below the chord between the "
        "endpoints): main pair < control pair"),
    "similar_attention_heads": (
        "the attention heads of the models tuned on v0 and on v1 behave alike, more than those "
        "of the control pair",
        "mean Jensen–Shannon divergence of the heads' attention on the same dev inputs: main "
        "pair < control pair"),
}


def verdict(flags: list[bool]) -> str:
    """yes: every comparison holds; partly: some do; no: none does; not run: none was made."""
    if not flags:
        return "not run"
    return "yes" if all(flags) else ("partly" if any(flags) else "no")


def finding(key: str, evidence, flags: list[bool]) -> dict:
    """The report's entry of finding `key`: its claim and criterion, the numbers, the verdict."""
    claim, criterion = CLAIMS[key]
    return {"claim": claim, "criterion": criterion, "evidence": evidence,
            "reproduced": verdict(flags)}


def mean_test(rows: list[dict], info: dict) -> float | None:
    """The mean test accuracy of the table row of `info`'s setting, None if it has no row."""
    row = next((r for r in rows if r["setting"] == setting(info)), None)
    return None if row is None else row["test_mean"]


def v0_beats_random_init(rows: list[dict]) -> dict:
    """v0 against rand, per task and tuning setting of the table (judged: the own task)."""
    comps = []
    for task in TASKS:
        for (tuning, regime), (label, _) in CONTROLS.items():
            a = mean_test(rows, tuned(task, "v0", tuning, regime))
            r = mean_test(rows, tuned(task, "rand", tuning, regime))
            if a is not None or r is not None:  # a setting with one side only is not shown
                comps.append({"task": task, "tuning": label, "v0_test": a, "rand_test": r,
                              "v0_wins": a is not None and r is not None and a > r})
    return finding("v0_beats_random_init", comps,
                   [c["v0_wins"] for c in comps if c["task"] == OLD_TASK])


def v1_beats_v0_on_new_domain(rows: list[dict]) -> dict:
    """v1 against v0, both tuned the same way on the new task."""
    v1, v0 = mean_test(rows, recycled("vanilla")), mean_test(rows, tuned(NEW_TASK, "v0"))
    return finding("v1_beats_v0_on_new_domain", {"v1_test": v1, "v0_test": v0},
                   [] if v1 is None or v0 is None else [v1 > v0])


def compat_far_above_chance(results: dict[str, dict]) -> dict:
    """Each compat run: the share of its bundle's gain over chance that survives on v1."""
    evidence, flags = [], []
    for r in (r for r in results.values() if r.get("method") == "compat"):
        gain = r["old_dev"] - r["majority"]
        kept = (r["dev"] - r["majority"]) / gain if gain > 0 else None
        flags.append(kept is not None and kept >= 0.5)
        evidence.append({"bundle": r["tuning"], "compat_dev": r["dev"], "compat_test": r["test"],
                         "old_dev_on_v0": r["old_dev"], "majority_baseline": r["majority"],
                         "gain_kept": kept})
    return finding("compat_far_above_chance", evidence, flags)


def init_converges_faster(conv: dict) -> dict:
    """Steps to target of init against vanilla, in each comparison of demo.results.convergence."""
    evidence, flags = [], []
    for c in conv["pairs"]:
        v, i = c["methods"].get("vanilla"), c["methods"].get("init")
        vs, is_ = (None if x is None else x["step"] for x in (v, i))
        # no init run, or an init run that never reaches the target: not faster
        ok = is_ is not None and (vs is None or is_ < vs)
        flags.append(ok)
        evidence.append({"regime": c["regime"], "seed": c["seed"],
                         "target": c["vanilla_best"] * c["fraction"],
                         "vanilla_step": vs, "init_step": is_, "init_faster": ok})
    return finding("init_converges_faster", evidence, flags)


def few_shot_rows(rows: list[dict]) -> dict[str, dict | None]:
    """The few-shot table row of each method of the recycling comparison (None: no runs)."""
    want = {m: setting(recycled(m, "few")) for m in FEW_METHODS}
    return {m: next((r for r in rows if r["setting"] == s), None) for m, s in want.items()}


def distill_beats_vanilla_few_shot(rows: list[dict]) -> dict:
    """Few-shot distill against vanilla: the means over seeds (and the seeds won, pairwise)."""
    d, v = (few_shot_rows(rows)[m] for m in ("distill", "vanilla"))
    evidence, flags = {}, []
    if d and v:
        vanilla_of = dict(zip(v["seeds"], v["test_per_seed"]))
        both = [(x, vanilla_of[s]) for s, x in zip(d["seeds"], d["test_per_seed"])
                if s in vanilla_of]
        evidence = {"distill_mean": d["test_mean"], "vanilla_mean": v["test_mean"],
                    "seeds_won": f"{sum(x > y for x, y in both)}/{len(both)}"}
        flags = [d["test_mean"] > v["test_mean"]]
    return finding("distill_beats_vanilla_few_shot", evidence, flags)


def init_distill_best(rows: list[dict]) -> dict:
    """Few-shot init+distill against each of the other three methods (means over seeds)."""
    few = few_shot_rows(rows)
    evidence, flags = {}, []
    if all(few.values()):
        means = {m: few[m]["test_mean"] for m in FEW_METHODS}
        evidence = {**means, "best": max(FEW_METHODS, key=means.get)}
        flags = [all(means["init+distill"] >= x for x in means.values())]
    return finding("init_distill_best", evidence, flags)


def mode_connectivity(conn: dict) -> dict:
    """The accuracy barriers of connectivity.json: the main pair against the control pair."""
    evidence, flags = {}, []
    if conn:
        pairs = conn["pairs"]
        barrier = {name: p["barrier"]["accuracy"] for name, p in pairs.items()}
        low = {name: min(c["accuracy"] for c in p["curve"]) for name, p in pairs.items()}
        evidence = {"barrier_main": barrier["main"], "barrier_control": barrier.get("control"),
                    "lowest_accuracy_main": low["main"],
                    "lowest_accuracy_control": low.get("control")}
        flags = [barrier["main"] < barrier["control"]] if "control" in barrier else []
    return finding("mode_connectivity", evidence, flags)


def similar_attention_heads(sim: dict) -> dict:
    """The mean head divergences of similarity.json: the main pair against the control pair."""
    evidence, flags = {}, []
    if sim:
        js = {name: p["mean"] for name, p in sim["pairs"].items()}
        evidence = {"js_main": js["main"], "js_control": js.get("control"),
                    "js_max": sim["js_max"]}
        flags = [js["main"] < js["control"]] if "control" in js else []
    return finding("similar_attention_heads", evidence, flags)


def findings(rows: list[dict], results: dict[str, dict], conv: dict, conn: dict,
             sim: dict) -> dict[str, dict]:
    """Every finding, in the order of CLAIMS."""
    return {"v0_beats_random_init": v0_beats_random_init(rows),
            "v1_beats_v0_on_new_domain": v1_beats_v0_on_new_domain(rows),
            "compat_far_above_chance": compat_far_above_chance(results),
            "init_converges_faster": init_converges_faster(conv),
            "distill_beats_vanilla_few_shot": distill_beats_vanilla_few_shot(rows),
            "init_distill_best": init_distill_best(rows),
            "mode_connectivity": mode_connectivity(conn),
            "similar_attention_heads": similar_attention_heads(sim)}
