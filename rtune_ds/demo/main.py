"""`rtune demo` as a protocol (the study it runs: the package docstring):

1. check what needs no compute: the ranks and workers, the seeds, the DeepSpeed JSON, v0
   (--base-dir, or the released model fetched and its files' sha256 checked), and that OUT holds
   no demo of another budget;
2. the data: prepared (or reused), the tasks built and sampled to the budget in OUT/tasks, the
   pretraining corpora decontaminated into OUT/corpora;
3. the waves of the plan: each wave's jobs not done yet are spread over `workers` launches that
   run at once (a study of many small jobs gains more from running jobs side by side than from
   ranks); once the grid has run, each arm's LR is its best dev accuracy on the calibration seed;
   a job already done is reused, so a second demo continues the first;
4. the report: every run read back, the gate and the contrasts judged, report.json, report.md and
   the plots.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

from rtune_ds.demo import findings, render, results
from rtune_ds.demo.data import data_dir, study_data
from rtune_ds.demo.plan import (
    ARMS,
    PLAN,
    Job,
    Planner,
    arm,
    compat,
    data_regime,
    ds_config_path,
    gate_method,
    grid_of,
    load_budget,
    regimes_of,
    reported_seeds,
    run_name,
    tuning_methods,
    write_configs,
)
from rtune_ds.errors import ConfigError
from rtune_ds.hardware import cpu_info
from rtune_ds.io import save_json
from rtune_ds.jobs.released import RELEASED, check_manifest, fetch_released, file_digests
from rtune_ds.launch import launcher_command, run_launches


def run(profile: str, full: bool, out: str, nproc: int | None, workers: int | None,
        seeds: int | None, data: str | None, ds_config: str | None, base_dir: str | None,
        command: str) -> dict:
    """The whole demo into `out`; returns the report (also printed as markdown)."""
    start = time.time()
    budget = load_budget(profile, seeds, full)
    nproc, workers = nproc or budget["nproc"], workers or budget["workers"]
    for flag, value in (("--nproc", nproc), ("--workers", workers)):
        if value < 1:
            raise ConfigError(f"{flag} {value}: must be >= 1")
    ds = ds_config_path(ds_config, budget)
    out_dir = Path(out).resolve()
    check_budget_unchanged(out_dir, {**budget, "base_dir": base_dir})
    base_dir, base = base_of(budget, base_dir)

    data_path = data_dir(out_dir, data)
    prepared = study_data(data_path, out_dir, budget["tasks"], budget.get("task_limits"))
    planner = Planner(budget, out_dir,
                      write_configs(budget, out_dir / "corpora", out_dir, ds, base_dir), base_dir)
    todo: set[str] = set()
    timed = []
    for name, wave in planner.waves():
        todo |= run_wave(name, wave, out_dir, nproc, workers, timed)
    lrs = results.chosen_lrs(results.read_results([j for _, w in planner.waves() for j in w]),
                             {r: grid_of(budget, r) for r in planner.regimes()})
    waves = planner.waves(lrs)
    todo |= run_wave(*waves[-1], out_dir, nproc, workers, timed)
    jobs = [j for _, wave in waves for j in wave]
    meta = {"command": command, "profile": budget["profile"], "nproc": nproc,
            "workers": workers, "seeds": budget["seeds"], "ds_config": ds,
            "data": str(data_path), "base": base, **prepared, "chosen_lr": lrs,
            "jobs": [{"name": j.name, "command": j.command(), "reused": j.name not in todo,
                      "seconds": results.job_seconds(j)} for j in jobs],
            "waves": timed, "wall_time_s": time.time() - start, "budget": budget}
    report = build_report(jobs, out_dir, meta)
    print(render.markdown(report))
    print(f"rtune demo: report -> {out_dir / 'report.md'} ({report['wall_time_s']:.0f} s)",
          file=sys.stderr)
    return report


def base_of(budget: dict, base_dir: str | None) -> tuple[str | None, dict]:
    """(the v0 directory the plan uses, None when v0 is pretrained here; what the report says
    of v0): --base-dir as given, else the budget's released model (fetched, its files' sha256
    checked), else the preset v0 is pretrained from."""
    if base_dir is not None:
        path = Path(base_dir).resolve()
        if not (path / "config.json").is_file():
            raise ConfigError(f"--base-dir {base_dir}: not a Hugging Face model directory "
                              "(no config.json)")
        return str(path), {"source": "--base-dir", "path": str(path),
                           "sha256": file_digests(path)}
    if "released" in budget["base"]:
        name = budget["base"]["released"]
        path = fetch_released(name)
        return str(path), {"source": "released", "name": name, **RELEASED[name],
                           "path": str(path), "sha256": check_manifest(path)}
    return None, {"source": "pretrained here", "preset": budget["base"]["preset"]}


def run_wave(name: str, jobs: list[Job], out: Path, nproc: int, workers: int,
             timed: list[dict]) -> set[str]:
    """Launch the jobs not done yet, spread over at most `workers` launches of `nproc` ranks that
    run at once (the largest jobs first, each to the launch with the least work; each launch
    keeps the plan's order); appends the wave's wall time to `timed`; returns their names."""
    t0 = time.time()
    todo = [j for j in jobs if not j.is_done()]
    timed.append({"name": name, "jobs": len(jobs), "ran": len(todo), "wall_s": 0.0})
    if not todo:
        return set()
    shares: list[list[Job]] = [[] for _ in range(min(workers, len(todo)))]
    loads = [0.0] * len(shares)
    for job in sorted(todo, key=lambda j: -j.cost):
        k = loads.index(min(loads))
        shares[k].append(job)
        loads[k] += job.cost
    launches = []
    for k, share in enumerate(shares):
        plan = out / (PLAN if len(shares) == 1 else f"plan-{k}.json")
        share.sort(key=todo.index)
        save_json({"jobs": [asdict(j) for j in share]}, plan)
        launches.append((launcher_command(nproc, ["demo", "--run-plan", str(plan)]),
                         f"demo (plan {plan})"))
    cores = len(os.sched_getaffinity(0))
    run_launches(launches, max(1, cores // (len(launches) * nproc)))
    timed[-1]["wall_s"] = round(time.time() - t0, 1)
    return {j.name for j in todo}


def check_budget_unchanged(out: Path, budget: dict) -> None:
    """A rerun into the same OUT reuses finished runs, so they must come from the same budget; the
    regimes may differ (--full after the main study runs only the jobs main did not)."""
    budget = {k: v for k, v in budget.items() if k not in ("regimes", "full")}
    path = out / "demo.json"
    if path.is_file():
        before = json.loads(path.read_text())["budget"]
        if before != budget:
            raise ConfigError(f"--out {out}: holds a demo run with another budget "
                              f"({before.get('profile')}, seeds {before.get('seeds')}); "
                              "choose a new --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        save_json({"budget": budget}, path)


def build_report(jobs: list[Job], out: Path, meta: dict) -> dict:
    """Read every run, judge the gate and the contrasts, write the report files (demo.render)."""
    runs, b = out / "runs", meta["budget"]
    found = results.read_results(jobs)
    logs = results.read_logs(jobs, found)
    pre = results.pretraining(runs)
    seeds = list(reported_seeds(b))
    regimes = regimes_of(b)
    gated = gate_method(b)
    gate = findings.upgrade_gate(pre.get("v1"), results.gate_bundles(found, seeds, gated),
                                 b["gate"])
    by_arm = {regime: {name: results.of_arm(found, name, regime, seeds) for name in ARMS}
              for regime in regimes}
    complete = {regime: {name: rs for name, rs in arms.items() if len(rs) == len(seeds)}
                for regime, arms in by_arm.items()}
    compat_runs = {m: [found[run_name(compat(s, method=m))] for s in seeds]
                   for m in tuning_methods(b)}
    tested = findings.contrasts(
        {regime: {name: [r["correct"] for r in rs] for name, rs in arms.items()}
         for regime, arms in complete.items()},
        {regime: {name: statistics.fmean(r["dev"] for r in rs) for name, rs in arms.items()}
         for regime, arms in complete.items()},
        {m: [r["correct"] for r in runs] for m, runs in compat_runs.items()},
        results.chance_correct(out / "tasks", compat_runs[gated][0]), gate)
    conv = {regime: findings.convergence(
        {name: {r["seed"]: results.dev_curve(logs[run_name(arm(name, regime, r["seed"]))])
                for r in rs} for name, rs in arms.items()},
        b["tune"][data_regime(regime)]["max_steps"], b["tune"]["global_batch_size"])
        for regime, arms in complete.items()}
    found_analyses = results.analyses(runs)
    v1 = json.loads((runs / "v1" / "summary.json").read_text())
    report = {**meta, "cpu": cpu_info()["model"],
              "precision": {"chosen": v1["precision"], "why": v1.get("precision_why")},
              "pretraining": pre, "gate": gate,
              "runs": {n: {k: v for k, v in r.items() if k not in ("correct", "gold")}
                       for n, r in found.items()},
              "grid": results.grid_table(found), "table": results.table(found, regimes, seeds),
              "compat_curve": results.compat_curve(found, gated), "contrasts": tested,
              "label_free_decisions": findings.label_free_decisions(
                  results.label_free_library(found, tuning_methods(b), seeds, gated)),
              "convergence": conv, "analyses": findings.analyses_summary(found_analyses),
              "phases": phases(jobs, meta)}
    return render.write_report(report, logs, found_analyses, out)


def phases(jobs: list[Job], meta: dict) -> dict[str, float]:
    """The wall time of each wave as it ran in this demo run (a wave of reused jobs: 0), and the
    rest of the run's wall time: data, configs and the report."""
    out = {w["name"]: w["wall_s"] for w in meta["waves"]}
    out["data, configs, report (this run)"] = max(0.0, meta["wall_time_s"] - sum(out.values()))
    return out
