"""Reading the demo's runs: each tuning or compat run's scores and per-example test predictions
(summary.json or compat.json, test_predictions.json), the runs' logged metrics (metrics.jsonl),
the pretraining evals and the analyses' JSON; then, from what was read (pure functions): the LR
grid's choice per arm, the results table, and the inputs of the gate and the contrasts."""
from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

from rtune_ds.demo.plan import (
    ARMS,
    CALIBRATION_SEED,
    METRIC,
    NEW_TASK,
    SECONDS,
    Job,
    arm,
    compat,
    data_regime,
    label_free_compat,
    run_name,
    tuning_method,
)
from rtune_ds.jobs.tuning import PREDICTIONS
from rtune_ds.train.monitor import read_metrics


def regime_label(regime: str | None) -> str:
    """few-shot or full data, with ", LoRA" for the LoRA regimes ("–": no regime)."""
    if regime is None:
        return "–"
    data = {"full": "full data", "few": "few-shot"}[data_regime(regime)]
    return data + (", LoRA" if tuning_method(regime) == "lora" else "")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------- reading

def job_seconds(job: Job) -> float | None:
    """The seconds the job took when it ran (whichever demo run that was)."""
    path = Path(job.run_dir) / SECONDS
    return read_json(path)["seconds"] if path.is_file() else None


def read_result(job: Job) -> dict:
    """One tuning or compat run: its info, dev and test accuracy, the dev majority baseline, and
    `correct` (1/0 per test item, in the test file's order) with the gold labels."""
    run = Path(job.run_dir)
    preds = read_json(run / PREDICTIONS)
    out = {**job.info, "correct": [int(g == p) for g, p in zip(preds["gold"], preds["predicted"])],
           "gold": preds["gold"], "labels": preds["labels"], "test_file": preds["file"]}
    if job.done == "compat.json":
        c = read_json(run / "compat.json")
        return {**out, "source": "compat.json", "dev": c["dev"]["accuracy"],
                "test": c["test"]["accuracy"], "majority": c["dev_majority_baseline"],
                "old_dev": c["old_metrics"]["dev"][METRIC], "label_free": c.get("label_free")}
    s = read_json(run / "summary.json")
    m = s["metrics"]
    return {**out, "source": "summary.json", "dev": m["dev"][METRIC], "test": m["test"][METRIC],
            "majority": m["dev_majority_baseline"], "best_step": m["best_step"],
            "steps": s["step"], "sizes": s["sizes"]}


def read_results(jobs: list[Job]) -> dict[str, dict]:
    """{run name: its result} of every tuning and compat job that is done."""
    kinds = ("bundle", "compat", "label-free compat", "arm", "grid")
    return {j.name: read_result(j) for j in jobs if j.info["kind"] in kinds and j.is_done()}


def read_logs(jobs: list[Job], names) -> dict[str, list[dict]]:
    """{run name: its metrics.jsonl records} of the jobs named in `names` that logged any."""
    paths = {j.name: Path(j.run_dir) / "metrics.jsonl" for j in jobs if j.name in names}
    return {name: read_metrics(path) for name, path in paths.items() if path.is_file()}


def pretraining(runs: Path) -> dict:
    """LM evals of each pretraining run made here (v0 when pretrained here, v1): every eval, the
    first (v1: at step 0, v0's encoder with its head warmed up if it had none), the final one,
    with steps, tokens and the median step time; v1's head warm-up, if it had one."""
    out = {}
    for v in ("v0", "v1"):
        if not (runs / v / "summary.json").is_file():
            continue
        evals = [r for r in read_metrics(runs / v / "metrics.jsonl") if "eval/loss" in r]
        s = read_json(runs / v / "summary.json")
        lineage = read_json(runs / v / "final" / "lineage.json")
        out[v] = {"steps": s["step"], "tokens": s["tokens"],
                  "first_eval": evals[0] if evals else None, "final_eval": s["final_eval"],
                  "median_step_time_s": s.get("median_step_time_s"), "evals": evals,
                  "new_head": lineage.get("new_head"),
                  "carried_from_parent": sorted((lineage.get("carried_from_parent")
                                                 or {}).get("tensors", {}))}
    return out


def analyses(runs: Path) -> dict[str, dict]:
    """{connectivity, connectivity-floor, similarity, similarity-floor: the JSON `rtune analyze`
    wrote} of those that ran."""
    out = {}
    for name in ("connectivity", "connectivity-floor", "similarity", "similarity-floor"):
        path = runs / name / f"{name.split('-')[0]}.json"
        if path.is_file():
            out[name] = read_json(path)
    return out


def chance_correct(tasks: Path, result: dict) -> list[int]:
    """1/0 per test item of the chance predictor: always the most frequent class of the task's
    train sample (ties: the first label name)."""
    counts = Counter(json.loads(line)["label"] for line in
                     (tasks / f"{NEW_TASK}_train.jsonl").read_text().splitlines() if line)
    majority = max(sorted(counts), key=counts.get)
    index = result["labels"].index(majority)
    return [int(g == index) for g in result["gold"]]


# ---------------------------------------------------------------- the LR grid (pure)

def grid_table(results: dict[str, dict]) -> list[dict]:
    """[{regime, arm, lr, dev, test, best_step}] of the grid runs (calibration seed)."""
    rows = [{k: r[k] for k in ("regime", "arm", "lr", "dev", "test", "best_step")}
            for r in results.values() if r["kind"] == "grid"]
    return sorted(rows, key=lambda r: (r["regime"], ARMS.index(r["arm"]), r["lr"]))


def chosen_lrs(results: dict[str, dict], grids: dict[str, list[float]]
               ) -> dict[str, dict[str, float]]:
    """{regime: {arm: the LR of the regime's grid (grids: {regime: [lr]}) with the arm's best
    dev accuracy on the calibration seed}}; a tie goes to the LR listed first; a grid of one LR
    (never run) gives every arm that LR. Chosen on dev only: test plays no part."""
    chosen: dict[str, dict[str, float]] = {}
    for row in grid_table(results):
        chosen.setdefault(row["regime"], {}).setdefault(row["arm"], [])
        chosen[row["regime"]][row["arm"]].append((row["lr"], row["dev"]))
    fixed = {regime: dict.fromkeys(ARMS, grid[0]) for regime, grid in grids.items()
             if len(grid) == 1}
    for regime, arms in chosen.items():
        lr_grid = grids[regime]
        for name, rows in arms.items():
            dev = dict(rows)
            missing = [lr for lr in lr_grid if lr not in dev]
            if missing:
                raise ValueError(f"the LR grid of {regime}/{name} has no result for {missing}")
            arms[name] = max(lr_grid, key=lambda lr: (dev[lr], -lr_grid.index(lr)))
    return {**chosen, **fixed}


# ---------------------------------------------------------------- grouping (pure)

def of_arm(results: dict[str, dict], name: str, regime: str, seeds) -> list[dict]:
    """The results of an arm for the given seeds, in order of seed (a missing run is skipped)."""
    found = (results.get(run_name(arm(name, regime, s))) for s in seeds)
    return [r for r in found if r is not None]


def table(results: dict[str, dict], regimes: list[str], seeds) -> list[dict]:
    """One row per arm and regime (and compat): its seeds, dev and test accuracy per seed, mean
    and sd of test over seeds."""
    groups = [(f"v1 · {name}" if name != "v0" else "v0 · vanilla", regime,
               of_arm(results, name, regime, seeds)) for regime in regimes for name in ARMS]
    for method in dict.fromkeys(tuning_method(r) for r in regimes):
        groups.append((f"v0 {'LoRA ' if method == 'lora' else ''}bundle on v1 · compat "
                       "(no training)", None,
                       [r for r in (results.get(run_name(compat(s, method=method)))
                                    for s in seeds) if r]))
    rows = []
    for label, regime, runs in groups:
        if not runs:
            continue
        test = [r["test"] for r in runs]
        rows.append({"run": label, "regime": regime, "seeds": [r["seed"] for r in runs],
                     "dev_per_seed": [r["dev"] for r in runs], "test_per_seed": test,
                     "test_mean": statistics.fmean(test),
                     "test_std": statistics.stdev(test) if len(test) > 1 else 0.0})
    return rows


def gate_bundles(results: dict[str, dict], seeds, method: str) -> list[dict]:
    """Per seed (the calibration seed too): the bundle's (of tuning `method`) dev accuracy on v0,
    its compat dev accuracy on v1 and the dev majority baseline: the gate's second check."""
    out = []
    for s in [CALIBRATION_SEED, *seeds]:
        c = results.get(run_name(compat(s, method=method)))
        if c is not None:
            out.append({"seed": s, "old_dev": c["old_dev"], "compat_dev": c["dev"],
                        "majority": c["majority"]})
    return out


def label_free_library(results: dict[str, dict], methods: list[str], seeds,
                       curve_method: str) -> list[dict]:
    """Per bundle (tuning method, seed; the calibration seed too) on v1, and bundle 1 (of
    `curve_method`) on each of v1's exports along its run (nearer v0: bundles that may be worth
    keeping): what its labeled compat says (dev accuracy on v0 and on that base, the majority
    baseline) and its label-free score there (agreement and mean KL with the old model over the
    train texts)."""
    pairs = [(results.get(run_name(compat(s, method=m))),
              results.get(run_name(label_free_compat(s, m))))
             for m in methods for s in [CALIBRATION_SEED, *seeds]]
    along = [r for r in results.values() if r["kind"] == "compat" and r["seed"] == 1
             and r["method"] == curve_method and 0 < r["point"] < 1]
    pairs += [(r, r) for r in sorted(along, key=lambda r: r["point"])]
    return [{"method": labeled["method"], "seed": labeled["seed"], "point": labeled["point"],
             "old_dev": labeled["old_dev"], "compat_dev": labeled["dev"],
             "majority": labeled["majority"],
             **{k: free["label_free"][k] for k in ("agreement", "mean_kl")}}
            for labeled, free in pairs if labeled and free and free.get("label_free")]


def compat_curve(results: dict[str, dict], method: str) -> list[dict]:
    """[{point, dev, test, old_dev, majority, method}] of bundle 1 (of tuning `method`) along v1's
    run, by point; none when v1 exported nothing along its run (its final point alone is no
    curve)."""
    rows = [r for r in results.values()
            if r["kind"] == "compat" and r["seed"] == 1 and r["method"] == method]
    if len(rows) < 2:
        return []
    return [{k: r[k] for k in ("point", "dev", "test", "old_dev", "majority", "method")}
            for r in sorted(rows, key=lambda r: r["point"])]


def dev_curve(records: list[dict]) -> list[tuple[int, float]]:
    """(step, dev accuracy) of every eval in a run's metrics records."""
    return [(r["step"], r[METRIC]) for r in records if METRIC in r]
