"""The protocol's checks, the controls and the paper's findings, judged on the demo's results: for
each, the claim, the criterion, the numbers it compared and the verdict. Pure functions of what
demo.results made (the table rows, the run results, the grid, compat along the continual
pretraining, convergence, the pretraining evals, the analyses' JSON): nothing is read from a file
here, so every verdict is unit-tested with hand-made results. Every criterion looks at each task,
regime and seed its claim covers."""
from __future__ import annotations

from rtune_ds.demo.plan import COMPAT_TUNINGS, METHODS, NEW_TASK, REGIMES, TASKS, recycled, tuned
from rtune_ds.demo.results import REGIME_LABEL

DOMAIN_SHIFT = 0.05  # v1: the computing MLM loss falls by at least 5%, the general one rises < 5%
KEPT_GAIN = 0.5  # compat: at least half of the bundle's gain over the majority class survives

CLAIMS = {  # finding -> (claim, criterion); the protocol and the controls first
    "baseline_converged": (
        "the protocol: every vanilla run converged before its step cap, so no comparison is a "
        "head start inside a truncated budget",
        "every vanilla run (grid and seeds, both regimes) was ended by early stopping"),
    "v1_learned_the_new_domain": (
        "continual pretraining shifted v1 towards the computing domain and kept the general one",
        f"v1's MLM eval loss on computing falls by >= {DOMAIN_SHIFT:.0%} from its first eval to "
        f"its last, on general it rises by < {DOMAIN_SHIFT:.0%}, and computing's falls by more "
        "than general's (a new MLM head lowers both losses as it learns: only the gap between "
        "the domains shows the shift)"),
    "v0_beats_random_init": (
        "pretraining helps: v0 beats the same architecture from random init, tuned the same way",
        "test accuracy of v0 tuned > that of rand tuned (full FT, full data; and on most seeds "
        "when there are several), on each task"),
    "v1_beats_v0_on_new_domain": (
        f"continual pretraining helps on the new domain: v1 beats v0 on {NEW_TASK}",
        "mean test accuracy over seeds of v1 tuned (vanilla) > that of v0 tuned the same way, "
        "and higher on most seeds, full data and few-shot"),
    "compat_far_above_chance": (
        "a bundle tuned on v0 still works on v1 with no training, far above chance",
        f"for the full-FT and the LoRA bundle, on v1: (compat dev − majority) / (dev on v0 − "
        f"majority) >= {KEPT_GAIN}"),
    "compat_decays_along_pretraining": (
        "compatibility decays as continual pretraining goes on",
        "for the full-FT and the LoRA bundle: dev accuracy on v1's final weights < on v0 (0%), "
        "and the curve's second half (>= 50%) does not average above its first half"),
    "init_converges_faster": (
        "initialising from the recycled bundle reaches vanilla's converged best dev accuracy in "
        "fewer steps than vanilla needs",
        "in each regime and seed: init's first eval at or above vanilla's best dev accuracy "
        "comes at an earlier step than vanilla's own first eval at it"),
    "init_beats_vanilla": (
        "initialising from the recycled bundle ends better than vanilla tuning of v1",
        "mean test accuracy over seeds: init > vanilla, and higher on most seeds, full data "
        "and few-shot"),
    "distill_beats_vanilla_few_shot": (
        "few-shot, distilling from the old model beats vanilla tuning of v1",
        "few-shot mean test accuracy over seeds: distill > vanilla, and higher on most seeds"),
    "init_distill_best_few_shot": (
        "few-shot, init+distill is the best of the four",
        "few-shot mean test accuracy over seeds: init+distill >= vanilla, init and distill"),
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


def row_of(rows: list[dict], info: dict) -> dict | None:
    """The table row of `info`'s setting, None if it has no runs."""
    want = {k: v for k, v in info.items() if k not in ("seed", "lr")}
    return next((r for r in rows if r["setting"] == want), None)


def seeds_won(a: dict, b: dict) -> tuple[int, int]:
    """(wins, seeds): of the seeds both rows ran on, those where a's test accuracy is above b's."""
    of_b = dict(zip(b["seeds"], b["test_per_seed"]))
    both = [(x, of_b[s]) for s, x in zip(a["seeds"], a["test_per_seed"]) if s in of_b]
    return sum(x > y for x, y in both), len(both)


def compare(rows: list[dict], a_info: dict, b_info: dict, a: str, b: str) -> tuple[dict, list]:
    """(evidence, flags) of 'a beats b' for two settings: a's mean test accuracy is higher AND a
    is higher on most of the seeds both ran (a mean carried by one lucky seed is not a win); no
    flag when either has no runs."""
    ra, rb = row_of(rows, a_info), row_of(rows, b_info)
    if ra is None or rb is None:
        return {a: ra and ra["test_mean"], b: rb and rb["test_mean"]}, []
    wins, n = seeds_won(ra, rb)
    return ({a: ra["test_mean"], b: rb["test_mean"], "seeds_won": f"{wins}/{n}"},
            [ra["test_mean"] > rb["test_mean"] and 2 * wins > n])


def baseline_converged(results: dict[str, dict]) -> dict:
    vanilla = {n: r for n, r in results.items() if r.get("method") == "vanilla"
               and r.get("base") == "v1" and "early_stopped" in r}
    evidence = {n: {"steps": r["steps"], "best_step": r["best_step"],
                    "early_stopped": r["early_stopped"]} for n, r in sorted(vanilla.items())}
    return finding("baseline_converged", evidence, [r["early_stopped"] for r in vanilla.values()])


def v1_learned_the_new_domain(pre: dict) -> dict:
    v1 = pre.get("v1")
    if not v1 or not v1["first_eval"]:
        return finding("v1_learned_the_new_domain", {}, [])
    first, last = v1["first_eval"], v1["final_eval"]
    change = {d: (last[f"eval/loss/{d}"] - first[f"eval/loss/{d}"]) / first[f"eval/loss/{d}"]
              for d in ("general", "computing")}
    evidence = {"first": {d: first[f"eval/loss/{d}"] for d in change},
                "last": {d: last[f"eval/loss/{d}"] for d in change}, "relative_change": change}
    return finding("v1_learned_the_new_domain", evidence,
                   [change["computing"] <= -DOMAIN_SHIFT, change["general"] < DOMAIN_SHIFT,
                    change["computing"] < change["general"]])


def v0_beats_random_init(rows: list[dict]) -> dict:
    evidence, flags = {}, []
    for task in TASKS:
        e, f = compare(rows, tuned(task, "v0"), tuned(task, "rand"), "v0_test", "rand_test")
        evidence[task], flags = e, flags + f
    return finding("v0_beats_random_init", evidence, flags)


def v1_beats_v0_on_new_domain(rows: list[dict]) -> dict:
    evidence, flags = {}, []
    for regime in REGIMES:
        e, f = compare(rows, recycled("vanilla", regime), tuned(NEW_TASK, "v0", "full", regime),
                       "v1_test", "v0_test")
        evidence[REGIME_LABEL[regime]], flags = e, flags + f
    return finding("v1_beats_v0_on_new_domain", evidence, flags)


def compat_far_above_chance(curve: dict[str, list[dict]]) -> dict:
    """Each bundle on v1's final weights: the share of its gain over chance that survives."""
    evidence, flags = {}, []
    for tuning in COMPAT_TUNINGS:
        final = next((p for p in curve.get(tuning, []) if p["point"] == 1.0), None)
        if final is None:
            continue
        gain = final["old_dev"] - final["majority"]
        kept = (final["dev"] - final["majority"]) / gain if gain > 0 else None
        flags.append(kept is not None and kept >= KEPT_GAIN)
        evidence[tuning] = {"compat_dev": final["dev"], "compat_test": final["test"],
                            "old_dev_on_v0": final["old_dev"], "majority": final["majority"],
                            "gain_kept": kept}
    return finding("compat_far_above_chance", evidence, flags)


def compat_decays_along_pretraining(curve: dict[str, list[dict]]) -> dict:
    evidence, flags = {}, []
    for tuning in COMPAT_TUNINGS:
        points = {p["point"]: p["dev"] for p in curve.get(tuning, [])}
        if 0.0 not in points or 1.0 not in points:
            continue
        early = [v for p, v in points.items() if p < 0.5]
        late = [v for p, v in points.items() if p >= 0.5]
        decays = points[1.0] < points[0.0] and sum(late) / len(late) <= sum(early) / len(early)
        evidence[tuning] = {"dev_by_point": points, "decays": decays}
        flags.append(decays)
    return finding("compat_decays_along_pretraining", evidence, flags)


def init_converges_faster(conv: dict) -> dict:
    evidence, flags = [], []
    for c in conv["pairs"]:
        v, i = c["methods"].get("vanilla"), c["methods"].get("init")
        if i is None and "init" not in c["methods"]:
            continue  # no init run in this comparison
        ok = i is not None and v is not None and i["step"] < v["step"]
        flags.append(ok)
        evidence.append({"regime": c["regime"], "seed": c["seed"], "target": c["vanilla_best"],
                         "vanilla_step": v and v["step"], "init_step": i and i["step"],
                         "init_faster": ok})
    return finding("init_converges_faster", evidence, flags)


def init_beats_vanilla(rows: list[dict]) -> dict:
    evidence, flags = {}, []
    for regime in REGIMES:
        e, f = compare(rows, recycled("init", regime), recycled("vanilla", regime),
                       "init_test", "vanilla_test")
        evidence[REGIME_LABEL[regime]], flags = e, flags + f
    return finding("init_beats_vanilla", evidence, flags)


def distill_beats_vanilla_few_shot(rows: list[dict]) -> dict:
    e, f = compare(rows, recycled("distill", "few"), recycled("vanilla", "few"),
                   "distill_test", "vanilla_test")
    return finding("distill_beats_vanilla_few_shot", e, f)


def init_distill_best_few_shot(rows: list[dict]) -> dict:
    few = {m: row_of(rows, recycled(m, "few")) for m in METHODS}
    if not all(few.values()):
        return finding("init_distill_best_few_shot", {}, [])
    means = {m: few[m]["test_mean"] for m in METHODS}
    evidence = {**means, "best": max(reversed(METHODS), key=means.get)}  # a tie: init+distill
    return finding("init_distill_best_few_shot", evidence,
                   [all(means["init+distill"] >= x for x in means.values())])


def mode_connectivity(conn: dict) -> dict:
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
    evidence, flags = {}, []
    if sim:
        js = {name: p["mean"] for name, p in sim["pairs"].items()}
        evidence = {"js_main": js["main"], "js_control": js.get("control"),
                    "js_max": sim["js_max"]}
        flags = [js["main"] < js["control"]] if "control" in js else []
    return finding("similar_attention_heads", evidence, flags)


def findings(rows: list[dict], results: dict[str, dict], curve: dict, conv: dict, pre: dict,
             conn: dict, sim: dict) -> dict[str, dict]:
    """Every finding, in the order of CLAIMS."""
    return {"baseline_converged": baseline_converged(results),
            "v1_learned_the_new_domain": v1_learned_the_new_domain(pre),
            "v0_beats_random_init": v0_beats_random_init(rows),
            "v1_beats_v0_on_new_domain": v1_beats_v0_on_new_domain(rows),
            "compat_far_above_chance": compat_far_above_chance(curve),
            "compat_decays_along_pretraining": compat_decays_along_pretraining(curve),
            "init_converges_faster": init_converges_faster(conv),
            "init_beats_vanilla": init_beats_vanilla(rows),
            "distill_beats_vanilla_few_shot": distill_beats_vanilla_few_shot(rows),
            "init_distill_best_few_shot": init_distill_best_few_shot(rows),
            "mode_connectivity": mode_connectivity(conn),
            "similar_attention_heads": similar_attention_heads(sim)}
