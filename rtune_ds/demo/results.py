"""Reading the demo's runs: each tuning or recycling run's scores (summary.json or compat.json),
the runs' logged metrics (metrics.jsonl), the pretraining evals and the analyses' JSON; then,
from what was read (pure functions): the results table, one row per setting with its seeds, and
the steps each run needs to reach the vanilla run's target (convergence)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from rtune_ds.analysis.convergence import steps_to_target
from rtune_ds.demo.plan import (
    CONTROLS,
    FEW_METHODS,
    FRACTION,
    METRIC,
    NEW_TASK,
    TASKS,
    Job,
    recycled,
    setting,
    tuned,
)
from rtune_ds.train.monitor import read_metrics

INFO_KEYS = ("kind", "task", "base", "tuning", "regime", "method", "seed")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------- reading

def read_result(job: Job) -> dict:
    """The scores of one tuning or recycling run with its info, from summary.json or compat.json."""
    run = Path(job.run_dir)
    if job.done == "compat.json":
        c = read_json(run / "compat.json")
        old = c["old_metrics"]
        return {**job.info, "source": "compat.json", "dev": c["dev"]["accuracy"],
                "test": c["test"]["accuracy"], "dev_f1": c["dev"]["f1"], "test_f1": c["test"]["f1"],
                "majority": c["dev_majority_baseline"], "old_dev": old["dev"][METRIC],
                "old_test": old["test"][METRIC]}
    s = read_json(run / "summary.json")
    m = s["metrics"]
    return {**job.info, "source": "summary.json", "dev": m["dev"][METRIC],
            "test": m["test"][METRIC], "dev_f1": m["dev"]["eval/f1"],
            "test_f1": m["test"]["eval/f1"], "majority": m["dev_majority_baseline"],
            "best_step": m["best_step"], "steps": s["step"], "sizes": s["sizes"]}


def read_results(jobs: list[Job]) -> dict[str, dict]:
    """{run name: its result} of every tuning and recycling job."""
    return {j.name: read_result(j) for j in jobs if j.info["kind"] in ("finetune", "recycle")}


def read_logs(jobs: list[Job], names) -> dict[str, list[dict]]:
    """{run name: its metrics.jsonl records} of the jobs named in `names` that logged any."""
    paths = {j.name: Path(j.run_dir) / "metrics.jsonl" for j in jobs if j.name in names}
    return {name: read_metrics(path) for name, path in paths.items() if path.is_file()}


def pretraining(runs: Path) -> dict:
    """LM evals of v0 and v1: every eval, the first (v0: untrained; v1: step 0 = v0's weights),
    the final one, with steps, tokens and the median step time."""
    out = {}
    for v in ("v0", "v1"):
        evals = [r for r in read_metrics(runs / v / "metrics.jsonl") if "eval/loss" in r]
        s = read_json(runs / v / "summary.json")
        out[v] = {"steps": s["step"], "tokens": s["tokens"],
                  "first_eval": evals[0] if evals else None, "final_eval": s["final_eval"],
                  "median_step_time_s": s.get("median_step_time_s"), "evals": evals}
    return out


def analyses(runs: Path) -> tuple[dict, dict]:
    """connectivity.json and similarity.json as written by `rtune analyze` ({} if absent)."""
    found = [runs / name / f"{name}.json" for name in ("connectivity", "similarity")]
    conn, sim = (read_json(path) if path.is_file() else {} for path in found)
    return conn, sim


# ---------------------------------------------------------------- grouping (pure)

def matches(result: dict, info: dict, with_seed: bool = False) -> bool:
    """Whether `result` is a run of `info`'s setting (and seed)."""
    return all(result.get(k) == info[k] for k in INFO_KEYS if k != "seed" or with_seed)


def find(results: dict[str, dict], info: dict) -> str | None:
    """The name of the run of `info` (setting and seed), or None."""
    return next((n for n, r in results.items() if matches(r, info, with_seed=True)), None)


def groups() -> list[tuple[str, str, dict]]:
    """(task, label, setting) of every row of the results table, in table order."""
    rows = [(task, f"{base} · {label}", tuned(task, base, tuning, regime))
            for task in TASKS for (tuning, regime), (label, _) in CONTROLS.items()
            for base in ("v0", "rand")]
    return rows + [(NEW_TASK, label, info) for label, info in (
        ("v1 · full FT · full data (vanilla)", recycled("vanilla")),
        ("v0 full-FT bundle on v1 · compat (no training)", recycled("compat")),
        ("v0 LoRA bundle on v1 · compat (no training)", recycled("compat", tuning="lora")),
        ("v1 · init from the v0 bundle · full data", recycled("init")),
        *((f"v1 · {m} · few-shot", recycled(m, "few")) for m in FEW_METHODS))]


def table(results: dict[str, dict]) -> list[dict]:
    """One row per setting that has runs: its runs in order of seed, their dev and test
    accuracies, mean (test: and sd) over seeds, and the majority-class baseline."""
    rows = []
    for task, label, info in groups():
        names = sorted((n for n, r in results.items() if matches(r, info)),
                       key=lambda n: results[n]["seed"])
        if not names:
            continue
        dev = [results[n]["dev"] for n in names]
        test = [results[n]["test"] for n in names]
        rows.append({"task": task, "run": label,
                     "setting": setting(info), "runs": names,
                     "seeds": [results[n]["seed"] for n in names],
                     "dev_mean": statistics.fmean(dev), "test_mean": statistics.fmean(test),
                     "test_std": statistics.stdev(test) if len(test) > 1 else 0.0,
                     "dev_per_seed": dev, "test_per_seed": test,
                     "majority": results[names[0]]["majority"]})
    return rows


# ---------------------------------------------------------------- convergence (pure)

def dev_curve(records: list[dict]) -> list[tuple[int, float]]:
    """(step, dev accuracy) of every eval in a run's metrics records."""
    return [(r["step"], r[METRIC]) for r in records if METRIC in r]


def convergence(results: dict[str, dict], logs: dict[str, list[dict]]) -> dict:
    """Steps to FRACTION of the vanilla run's best dev accuracy, per comparison: full data
    (vanilla tuning of v1 against init) and each few-shot seed (vanilla, init, distill,
    init+distill). A method's entry is None when its run never reaches the target."""
    seeds = sorted(r["seed"] for r in results.values() if matches(r, recycled("vanilla", "few")))
    pairs = []
    for regime, seed, methods in [("full", 1, FEW_METHODS[:2]),
                                  *(("few", s, FEW_METHODS) for s in seeds)]:
        names = {m: find(results, recycled(m, regime, seed)) for m in methods}
        names = {m: n for m, n in names.items() if n is not None}
        if "vanilla" not in names:
            continue
        best = max(v for _, v in dev_curve(logs[names["vanilla"]]))

        def reached(name: str) -> dict | None:
            hit = steps_to_target(logs[name], METRIC, best, FRACTION)
            return None if hit is None else {k: hit[k] for k in ("step", "value", "tokens")}

        pairs.append({"regime": regime, "seed": seed, "vanilla_best": best, "fraction": FRACTION,
                      "runs": names, "methods": {m: reached(n) for m, n in names.items()}})
    return {"metric": METRIC, "fraction": FRACTION, "pairs": pairs}
