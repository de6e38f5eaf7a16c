"""`rtune demo` as a protocol (the study it runs: the package docstring):

1. check what needs no compute: the ranks, the seeds, the DeepSpeed JSON, v0 (--base-dir, or the
   released model fetched and its files' sha256 checked), and that OUT holds no demo of another
   budget;
2. the data: prepared (or reused) and each task sampled to the budget in OUT/tasks;
3. stage one: the RunConfigs in OUT/configs, then the bases and the LR grid in one launch; the
   grid's best dev accuracy per regime chooses the LR of stage two, run in a second launch; a job
   already done is reused, so a second demo continues the first;
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
    Planner,
    ds_config_path,
    load_budget,
    write_configs,
)
from rtune_ds.errors import ConfigError
from rtune_ds.hardware import cpu_info
from rtune_ds.io import save_json
from rtune_ds.launch import launcher_command, run_launch
from rtune_ds.models.released import RELEASED, check_manifest, fetch_released, file_digests


def run(quick: bool, out: str, nproc: int, seeds: int | None, data: str | None,
        ds_config: str | None, base_dir: str | None, command: str) -> dict:
    """The whole demo into `out`; returns the report (also printed as markdown)."""
    start = time.time()
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: must be >= 1")
    budget = load_budget(quick, seeds)
    ds = ds_config_path(ds_config, budget)
    out_dir = Path(out).resolve()
    check_budget_unchanged(out_dir, {**budget, "base_dir": base_dir})
    base_dir, base = base_of(budget, base_dir)

    data_path = data_dir(out_dir, data)
    counts = sample_tasks(data_path, out_dir / "tasks", budget["tasks"])
    planner = Planner(budget, out_dir, write_configs(budget, data_path, out_dir, ds, base_dir),
                      base_dir)
    todo: set[str] = set()
    first = planner.stage_one()
    todo |= run_stage(first, out_dir, nproc)
    lrs = results.chosen_lrs(results.read_results(first), budget["tune"]["lr_grid"])
    jobs = planner.stage_one(lrs) + planner.stage_two(lrs)
    todo |= run_stage(jobs, out_dir, nproc)
    seconds_path = out_dir / SECONDS
    seconds = json.loads(seconds_path.read_text()) if seconds_path.is_file() else {}

    meta = {"command": command, "profile": budget["profile"], "nproc": nproc,
            "seeds": budget["seeds"], "ds_config": ds, "data": str(data_path), "base": base,
            "task_records": counts, "chosen_lr": lrs,
            "jobs": [{"name": j.name, "command": j.command(), "reused": j.name not in todo,
                      "seconds": seconds.get(j.name)} for j in jobs],
            "wall_time_s": time.time() - start, "budget": budget}
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


def run_stage(jobs: list[Job], out: Path, nproc: int) -> set[str]:
    """Launch the jobs not done yet (one deepspeed launch); returns their names."""
    todo = [j for j in jobs if not j.is_done()]
    if todo:
        launch(todo, out, nproc)
    return {j.name for j in todo}


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
    curve = results.compat_curve(found)
    conv = results.convergence(found, logs, meta["budget"]["tune"]["global_batch_size"])
    pre = results.pretraining(runs)
    conn, sim = results.analyses(runs)
    v1 = json.loads((runs / "v1" / "summary.json").read_text())
    report = {**meta, "cpu": cpu_info()["model"],
              "precision": {"chosen": v1["precision"], "why": v1.get("precision_why")},
              "pretraining": pre, "runs": found, "grid": results.grid_table(found),
              "table": rows, "compat_curve": curve, "convergence": conv,
              "phases": phases(jobs, meta),
              "connectivity": {n: {"barrier": p["barrier"], "curve": p["curve"]}
                               for n, p in conn.get("pairs", {}).items()},
              "similarity": {n: {"mean": p["mean"], "per_layer": p["per_layer"]}
                             for n, p in sim.get("pairs", {}).items()},
              "findings": findings.findings(rows, found, curve, conv, pre, conn, sim)}
    return render.write_report(report, logs, conn, sim, out)


def phases(jobs: list[Job], meta: dict) -> dict[str, float]:
    """Seconds per phase of the study (from seconds.json: a job's time when it ran, whichever
    demo run that was); the rest of this run's wall time is launching, data and the report."""
    seconds = {j["name"]: j["seconds"] or 0.0 for j in meta["jobs"]}
    out: dict[str, float] = {}
    for job in jobs:
        i = job.info
        phase = ("pretraining (v0 / v1 / rand)" if i["kind"] == "pretrain"
                 else "analyses" if i["kind"] == "analysis"
                 else "compat along v1" if i.get("method") == "compat"
                 else "LR grid (vanilla, seed 1)" if "lr" in i
                 else "tuning on v0 and the controls" if i["base"] != "v1"
                 else f"recycling arms, {i['regime']}")
        out[phase] = out.get(phase, 0.0) + seconds[job.name]
    ran = sum(seconds[j["name"]] for j in meta["jobs"] if not j["reused"])
    out["launches, data, report (this run)"] = max(0.0, meta["wall_time_s"] - ran)
    return out
