"""Reading the demo's runs: each tuning or recycling run's scores (summary.json or compat.json),
the runs' logged metrics (metrics.jsonl), the pretraining evals and the analyses' JSON; then,
from what was read (pure functions): the LR grid's choice, the results table (one row per setting
with its seeds), compat along v1's continual pretraining, and convergence (the steps, examples
and wall time each recycled run needs to reach vanilla's converged best dev accuracy)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from rtune_ds.analysis.convergence import steps_to_target
from rtune_ds.demo.plan import (
    COMPAT_TUNINGS,
    METHODS,
    METRIC,
    NEW_TASK,
    OLD_TASK,
    REGIMES,
    TASKS,
    Job,
    compat,
    recycled,
    setting,
    tuned,
)
from rtune_ds.train.monitor import read_metrics

INFO_KEYS = ("kind", "task", "base", "tuning", "regime", "method", "seed", "point")


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
            "best_step": m["best_step"], "steps": s["step"], "early_stopped": s["early_stopped"],
            "sizes": s["sizes"]}


def read_results(jobs: list[Job]) -> dict[str, dict]:
    """{run name: its result} of every tuning and recycling job."""
    kinds = ("finetune", "recycle", "grid")
    return {j.name: read_result(j) for j in jobs if j.info["kind"] in kinds}


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


def analyses(runs: Path) -> tuple[dict, dict]:
    """connectivity.json and similarity.json as written by `rtune analyze` ({} if absent)."""
    found = [runs / name / f"{name}.json" for name in ("connectivity", "similarity")]
    conn, sim = (read_json(path) if path.is_file() else {} for path in found)
    return conn, sim


# ---------------------------------------------------------------- the LR grid (pure)

def grid_table(results: dict[str, dict]) -> dict[str, list[dict]]:
    """{regime: [{lr, dev, test, best_step, early_stopped}, ...] in grid order} of the grid."""
    out: dict[str, list[dict]] = {regime: [] for regime in REGIMES}
    for r in results.values():
        if "lr" in r:
            out[r["regime"]].append({k: r[k] for k in ("lr", "dev", "test", "best_step",
                                                        "early_stopped")})
    return out


def chosen_lrs(results: dict[str, dict], lr_grid: list[float]) -> dict[str, float]:
    """Per regime, the grid LR with the best vanilla dev accuracy (seed 1); a tie goes to the
    LR listed first. Chosen on dev only: test plays no part."""
    table = grid_table(results)
    chosen = {}
    for regime in REGIMES:
        dev = {row["lr"]: row["dev"] for row in table[regime]}
        missing = [lr for lr in lr_grid if lr not in dev]
        if missing:
            raise ValueError(f"the LR grid of {regime} has no result for {missing}")
        chosen[regime] = max(lr_grid, key=lambda lr: (dev[lr], -lr_grid.index(lr)))
    return chosen


# ---------------------------------------------------------------- grouping (pure)

def matches(result: dict, info: dict, with_seed: bool = False) -> bool:
    """Whether `result` is a run of `info`'s setting (and seed)."""
    return all(result.get(k) == info.get(k) for k in INFO_KEYS if k != "seed" or with_seed)


def find(results: dict[str, dict], info: dict) -> str | None:
    """The name of the run of `info` (setting and seed), or None."""
    return next((n for n, r in results.items() if matches(r, info, with_seed=True)), None)


REGIME_LABEL = {"full": "full data", "few": "few-shot"}


def groups() -> list[tuple[str, str, dict]]:
    """(task, label, setting) of every row of the results table, in table order."""
    rows = [(task, f"{base} · full FT · full data", tuned(task, base))
            for task in TASKS for base in ("v0", "rand") if task == OLD_TASK or base == "rand"]
    rows += [(NEW_TASK, f"v0 · full FT · {REGIME_LABEL[regime]}",
              tuned(NEW_TASK, "v0", "full", regime)) for regime in REGIMES]
    rows.append((NEW_TASK, "v0 · LoRA · full data", tuned(NEW_TASK, "v0", "lora")))
    rows += [(NEW_TASK, f"v0 {'full-FT' if t == 'full' else 'LoRA'} bundle on v1 · compat",
              compat(t, 1.0)) for t in COMPAT_TUNINGS]
    rows += [(NEW_TASK, f"v1 · {m} · {REGIME_LABEL[regime]}", recycled(m, regime))
             for regime in REGIMES for m in METHODS]
    return rows


def table(results: dict[str, dict]) -> list[dict]:
    """One row per setting that has runs: its runs in order of seed, their dev and test
    accuracies, mean and sd over seeds, and the majority-class baseline."""
    rows = []
    for task, label, info in groups():
        names = sorted((n for n, r in results.items() if matches(r, info)),
                       key=lambda n: results[n]["seed"])
        if not names:
            continue
        dev = [results[n]["dev"] for n in names]
        test = [results[n]["test"] for n in names]
        rows.append({"task": task, "run": label, "setting": setting(info), "runs": names,
                     "seeds": [results[n]["seed"] for n in names],
                     "dev_mean": statistics.fmean(dev), "test_mean": statistics.fmean(test),
                     "test_std": statistics.stdev(test) if len(test) > 1 else 0.0,
                     "dev_per_seed": dev, "test_per_seed": test,
                     "majority": results[names[0]]["majority"]})
    return rows


def compat_curve(results: dict[str, dict]) -> dict[str, list[dict]]:
    """{bundle tuning: [{point, dev, test, old_dev, majority}] by point} of the compat runs."""
    out = {}
    for tuning in COMPAT_TUNINGS:
        rows = [r for r in results.values() if r.get("method") == "compat"
                and r["tuning"] == tuning]
        out[tuning] = [{k: r[k] for k in ("point", "dev", "test", "old_dev", "majority")}
                       for r in sorted(rows, key=lambda r: r["point"])]
    return out


# ---------------------------------------------------------------- convergence (pure)

def dev_curve(records: list[dict]) -> list[tuple[int, float]]:
    """(step, dev accuracy) of every eval in a run's metrics records."""
    return [(r["step"], r[METRIC]) for r in records if METRIC in r]


def convergence(results: dict[str, dict], logs: dict[str, list[dict]],
                global_batch: int) -> dict:
    """Per regime and seed: vanilla's converged best dev accuracy (its best eval under early
    stopping) and the step it first reached it; for each recycled method, the first eval at which
    it reaches that accuracy: step, examples (steps × global batch) and wall time (s, from the
    run's metrics.jsonl). A method's entry is None when its run never reaches it."""
    pairs = []
    for regime in REGIMES:
        seeds = sorted(r["seed"] for r in results.values()
                       if matches(r, recycled("vanilla", regime)))
        for seed in seeds:
            names = {m: find(results, recycled(m, regime, seed)) for m in METHODS}
            names = {m: n for m, n in names.items() if n is not None and n in logs}
            if "vanilla" not in names:
                continue
            best = max(v for _, v in dev_curve(logs[names["vanilla"]]))

            def reached(name: str) -> dict | None:
                hit = steps_to_target(logs[name], METRIC, best)
                return None if hit is None else {"step": hit["step"], "value": hit["value"],
                                                 "examples": hit["step"] * global_batch,
                                                 "wall_time_s": hit["wall_time_s"]}

            pairs.append({"regime": regime, "seed": seed, "vanilla_best": best, "runs": names,
                          "methods": {m: reached(n) for m, n in names.items()}})
    return {"metric": METRIC, "pairs": pairs}
