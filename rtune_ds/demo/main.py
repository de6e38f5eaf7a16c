"""`rtune demo` as a protocol (the story it tells: the package docstring):

1. check what needs no compute: the ranks, the seeds, the DeepSpeed JSON, and that OUT holds no
   demo of another budget;
2. the data: prepared (or reused) and each task sampled to the budget in OUT/tasks;
3. the plan: the RunConfigs in OUT/configs and every job in order; the jobs not done yet run one
   after another in ONE deepspeed launch (demo.runner), so a second demo continues the first;
4. the report: every run read back, the findings judged, report.json, report.md and the plots.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from rtune_ds.demo import findings, render, results
from rtune_ds.demo.data import data_dir, sample_tasks
from rtune_ds.demo.plan import (
    PLAN,
    SECONDS,
    Job,
    ds_config_path,
    load_budget,
    plan_jobs,
    write_configs,
)
from rtune_ds.errors import ConfigError
from rtune_ds.io import save_json
from rtune_ds.launch import launcher_command, run_launch


def run(quick: bool, out: str, nproc: int, seeds: int | None, data: str | None,
        ds_config: str | None, command: str) -> dict:
    """The whole demo into `out`; returns the report (also printed as markdown)."""
    start = time.time()
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: must be >= 1")
    budget = load_budget(quick, seeds)
    ds = ds_config_path(ds_config, budget)
    out_dir = Path(out).resolve()
    check_budget_unchanged(out_dir, budget)

    data_path = data_dir(out_dir, data)
    counts = sample_tasks(data_path, out_dir / "tasks", budget["tasks"])

    jobs = plan_jobs(budget, out_dir, write_configs(budget, data_path, out_dir, ds))
    todo = {j.name for j in jobs if not j.is_done()}
    if todo:
        launch([j for j in jobs if j.name in todo], out_dir, nproc)
    seconds_path = out_dir / SECONDS
    seconds = json.loads(seconds_path.read_text()) if seconds_path.is_file() else {}

    meta = {"command": command, "profile": budget["profile"], "nproc": nproc,
            "seeds": budget["seeds"], "ds_config": ds, "data": str(data_path),
            "task_records": counts,
            "jobs": [{"name": j.name, "command": j.command(), "reused": j.name not in todo,
                      "seconds": seconds.get(j.name)} for j in jobs],
            "wall_time_s": time.time() - start, "budget": budget}
    report = build_report(jobs, out_dir, meta)
    print(render.markdown(report))
    print(f"rtune demo: report -> {out_dir / 'report.md'} ({report['wall_time_s']:.0f} s)",
          file=sys.stderr)
    return report


def check_budget_unchanged(out: Path, budget: dict) -> None:
    """A rerun into the same OUT reuses finished runs, so they must come from the same budget."""
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


def launch(todo: list[Job], out: Path, nproc: int) -> None:
    """The jobs in `todo`, in one deepspeed launch of `rtune demo --run-plan OUT/plan.json`."""
    plan = out / PLAN
    save_json({"jobs": [asdict(j) for j in todo]}, plan)
    run_launch(launcher_command(nproc, ["demo", "--run-plan", str(plan)]), f"demo (plan {plan})")


def build_report(jobs: list[Job], out: Path, meta: dict) -> dict:
    """Read every run, judge the findings, write the report files (demo.render)."""
    runs = out / "runs"
    found = results.read_results(jobs)
    logs = results.read_logs(jobs, found)
    rows = results.table(found)
    conv = results.convergence(found, logs)
    conn, sim = results.analyses(runs)
    report = {**meta, "pretraining": results.pretraining(runs), "runs": found, "table": rows,
              "convergence": conv,
              "connectivity": {n: {"barrier": p["barrier"], "curve": p["curve"]}
                               for n, p in conn.get("pairs", {}).items()},
              "similarity": {n: {"mean": p["mean"], "per_layer": p["per_layer"]}
                             for n, p in sim.get("pairs", {}).items()},
              "findings": findings.findings(rows, found, conv, conn, sim)}
    return render.write_report(report, logs, conn, sim, out)
