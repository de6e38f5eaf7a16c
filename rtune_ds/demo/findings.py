"""The study's verdicts, judged on what demo.results read: the upgrade gate, the pre-registered
contrasts (paired bootstrap over test items pooled over seeds, Holm-corrected:
analysis.statistics), convergence, and where the analyses' main pair sits between its floor and
ceiling. Pure functions: nothing is read from a file here, so every verdict is unit-tested with
hand-made inputs."""
from __future__ import annotations

import statistics

from rtune_ds.analysis.statistics import judge, paired_bootstrap
from rtune_ds.demo.plan import tuning_method
from rtune_ds.recycling.advice import AGREE_AT, KEEP_AT, kept_gain, label_free_advice

NO_UPGRADE = "no upgrade: recycling is untestable here"
BLOCKED = "blocked (no upgrade)"
SINGLE = ("vanilla", "init", "distill")  # the single methods init+distill is set against

# key -> (claim, A, B): A − B > 0 is the claim; "best single" is the single method with the best
# mean dev accuracy over the reported seeds (chosen on dev, never on test); compat: the seed's v0
# bundle on v1 with no training; chance: always the train sample's most frequent class
CONTRASTS = {
    "init − vanilla": ("initialising from the old bundle beats plain tuning of v1",
                       "init", "vanilla"),
    "distill − vanilla": ("distilling from the old model beats plain tuning of v1",
                          "distill", "vanilla"),
    "init+distill − best single": ("init+distill beats the best single method",
                                   "init+distill", "best single"),
    "init − compat": ("tuning from the old bundle improves on the bundle as it is",
                      "init", "compat"),
    "v1 − v0": ("continual pretraining helps the new domain: v1 tuned beats v0 tuned alike",
                "vanilla", "v0"),
    "compat − chance": ("the old bundle still works on v1 with no training, above chance",
                        "compat", "chance"),
    "label-free − compat": ("label-free init+distill (no label read) improves on the bundle as "
                            "it is", "label-free", "compat"),
    "label-free − vanilla": ("label-free init+distill beats plain tuning of v1 with labels",
                             "label-free", "vanilla"),
}
# the contrasts about recycling methods: they rest on the premise that v1 is an upgrade
METHOD_CONTRASTS = ("init − vanilla", "distill − vanilla", "init+distill − best single",
                    "init − compat", "label-free − compat", "label-free − vanilla")


# ---------------------------------------------------------------- the gate

def upgrade_gate(v1: dict | None, bundles: list[dict], thresholds: dict) -> dict:
    """Is v1 a real upgrade of v0? (1) its computing LM (MLM or CLM) eval loss falls, relative to
    its first eval (after any head warm-up), by at least `fall_gap` more than the general one; (2)
    the v0 bundles keep, on average, at most `max_gain_kept` of their dev gain over the majority
    class when applied to v1 with no training. Both must hold."""
    gap, most = thresholds["fall_gap"], thresholds["max_gain_kept"]
    checks, evidence = {}, {"thresholds": thresholds}
    if v1 and v1.get("first_eval"):
        first, last = v1["first_eval"], v1["final_eval"]
        fall = {d: (first[f"eval/loss/{d}"] - last[f"eval/loss/{d}"]) / first[f"eval/loss/{d}"]
                for d in ("general", "computing")}
        evidence |= {"loss_first": {d: first[f"eval/loss/{d}"] for d in fall},
                     "loss_last": {d: last[f"eval/loss/{d}"] for d in fall},
                     "relative_fall": fall, "fall_gap": fall["computing"] - fall["general"]}
        checks["domain_shift"] = evidence["fall_gap"] >= gap
    kept = {b["seed"]: (b["compat_dev"] - b["majority"]) / (b["old_dev"] - b["majority"])
            for b in bundles if b["old_dev"] > b["majority"]}
    if kept:
        evidence |= {"gain_kept": kept, "mean_gain_kept": statistics.fmean(kept.values())}
        checks["bundles_lose_gain"] = evidence["mean_gain_kept"] <= most
    passed = len(checks) == 2 and all(checks.values())
    return {"passed": passed, "checks": checks, "evidence": evidence,
            "says": "v1 is an upgrade of v0" if passed else NO_UPGRADE}


# ---------------------------------------------------------------- the contrasts

def best_single(dev_means: dict[str, float]) -> str:
    """The single method with the best mean dev accuracy (a tie: the first of SINGLE)."""
    return max(SINGLE, key=lambda m: (dev_means[m], -SINGLE.index(m)))


def contrasts(correct: dict[str, dict[str, list[list[int]]]], dev_means: dict[str, dict],
              compat: dict[str, list[list[int]]], chance: list[int], gate: dict,
              resamples: int = 10_000) -> dict[str, dict]:
    """Every pre-registered contrast of every regime, one Holm family.

    correct: {regime: {arm: [seed][item] 1/0}} with the seeds in the same order for every arm;
    dev_means: {regime: {arm: mean dev accuracy over those seeds}}; compat: {tuning method (full,
    lora): [seed][item] of each seed's bundle on v1 (same seeds)}; chance: [item]. A contrast
    missing an arm is left out; compat − chance is judged once per tuning method ("compat −
    chance (lora)" for the LoRA bundles). When the gate failed, the method contrasts are computed
    and shown but blocked: no verdict."""
    tests, claims = {}, {}
    for regime, arms in correct.items():
        sides = {**arms, "compat": compat[tuning_method(regime)]}
        if all(m in arms for m in SINGLE):
            single = best_single(dev_means[regime])
            sides["best single"] = arms[single]
            claims[regime] = single
        for key, (_, a, b) in CONTRASTS.items():
            if key != "compat − chance" and a in sides and b in sides:
                tests[f"{key} ({regime})"] = paired_bootstrap(sides[a], sides[b], resamples)
    for method, runs in compat.items():
        name = "compat − chance" + ("" if method == "full" else f" ({method})")
        tests[name] = paired_bootstrap(runs, [chance] * len(runs), resamples)
    judged = judge(tests)
    for name, t in judged.items():
        key = name.split(" (")[0]
        t["claim"], t["contrast"] = CONTRASTS[key][0], key
        if key == "init+distill − best single":
            t["best_single"] = claims[name.split("(")[1].rstrip(")")]
        if key in METHOD_CONTRASTS and not gate["passed"]:
            t["verdict"] = BLOCKED
    return judged


# ---------------------------------------------------------------- label-free decisions

def label_free_decisions(bundles: list[dict], keep_at: float = KEEP_AT,
                         agree_at: float = AGREE_AT) -> dict:
    """Does the label-free compat score decide as the labeled one does? Per bundle: labeled, keep
    when compat keeps at least `keep_at` of its dev gain over the majority class; label-free,
    keep when it agrees with the old model on at least `agree_at` of the inputs; else re-tune.
    Then how many bundles the two decisions agree on."""
    rows = []
    for b in bundles:
        kept = kept_gain("classification", b["old_dev"], b["compat_dev"], b["majority"])
        labeled = "keep" if kept is not None and kept >= keep_at else "re-tune"
        free = ("keep" if label_free_advice(b["agreement"], agree_at)["decision"] == "keep"
                else "re-tune")
        rows.append({**b, "gain_kept": kept, "labeled": labeled, "label_free": free,
                     "same": labeled == free})
    same = sum(r["same"] for r in rows)
    return {"bundles": rows, "same": same, "of": len(rows),
            "thresholds": {"keep_at": keep_at, "agree_at": agree_at}}


# ---------------------------------------------------------------- convergence

def area_under_curve(curve: list[tuple[int, float]], budget: int) -> float:
    """Mean dev accuracy over the budget: the trapezoid area under (step, dev) / budget steps."""
    area = sum((s1 - s0) * (y0 + y1) / 2 for (s0, y0), (s1, y1) in zip(curve, curve[1:]))
    return area / budget


def steps_to_reach(curve: list[tuple[int, float]], target: float, batch: int) -> dict | str:
    """The first eval at or above `target` (step, examples) of a run that starts below it."""
    if curve[0][1] >= target:
        return "not measurable (starts at or above the target)"
    hit = next((s for s, y in curve if y >= target), None)
    return "not reached" if hit is None else {"step": hit, "examples": hit * batch}


def convergence(curves: dict[str, dict[int, list[tuple[int, float]]]], budget: int,
                batch: int) -> dict:
    """Per seed, for init and init+distill against vanilla (curves: {arm: {seed: [(step, dev)]}}):
    the first step (and examples) at which the arm reaches vanilla's best dev accuracy of the
    same seed, only where the arm starts below it (its step-0 eval is the bundle on v1 with no
    training); else "not measurable". Plus the area under each arm's dev curve over the budget
    minus vanilla's, per seed and its mean."""
    out = {}
    for name in ("init", "init+distill", "distill"):
        if name not in curves or "vanilla" not in curves:
            continue
        per_seed = []
        for seed, curve in sorted(curves[name].items()):
            van = curves["vanilla"].get(seed)
            if not van or not curve:
                continue
            target = max(y for _, y in van)
            entry = {"seed": seed, "target": target, "start": curve[0][1],
                     "auc_minus_vanilla": area_under_curve(curve, budget)
                     - area_under_curve(van, budget)}
            if name != "distill":  # distill starts from a fresh head: its area only
                entry["reach"] = steps_to_reach(curve, target, batch)
            per_seed.append(entry)
        if per_seed:
            out[name] = {"per_seed": per_seed, "mean_auc_minus_vanilla":
                         statistics.fmean(e["auc_minus_vanilla"] for e in per_seed)}
    return out


# ---------------------------------------------------------------- the analyses

def between(main: float, floor: float, ceiling: float) -> float | None:
    """Where `main` sits from the floor (0) to the ceiling (1); None when they coincide."""
    return None if ceiling == floor else (main - floor) / (ceiling - floor)


def analyses_summary(found: dict[str, dict]) -> dict:
    """Accuracy barrier and head divergence of the main pair (tuned on v0 vs on v1) beside the
    floor (two seeds on v0) and the ceiling (tuned on v0 vs on rand), and its place between."""
    out = {}
    for analysis, value in (("connectivity", lambda p: p["barrier"]["accuracy"]),
                            ("similarity", lambda p: p["mean"])):
        main, floor = found.get(analysis), found.get(f"{analysis}-floor")
        if not main or not floor:
            continue
        v = {"main": value(main["pairs"]["main"]), "floor": value(floor["pairs"]["main"])}
        if "control" in main["pairs"]:
            v["ceiling"] = value(main["pairs"]["control"])
            v["position"] = between(v["main"], v["floor"], v["ceiling"])
        out[analysis] = v
    return out
