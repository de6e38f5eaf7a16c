"""Inside the demo's one deepspeed launch: every job of the plan in turn, in this process, each a
direct call of its recipe (so the ranks start once); rank 0 prints one line per job and records
each job's seconds in seconds.json beside the plan as soon as the job is done."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rtune_ds import dist
from rtune_ds.config.load import load_run_config
from rtune_ds.demo.plan import SECONDS, Job
from rtune_ds.errors import ConfigError, RunError
from rtune_ds.io import save_json
from rtune_ds.jobs.pairs import open_pairs
from rtune_ds.recipes import connectivity, finetune, pretrain, recycle, similarity
from rtune_ds.recycling.mapping import Policy


def run_plan(plan: str) -> None:
    """Run the jobs of the plan file `plan` (written by demo.main) one after another."""
    path = Path(plan)
    jobs = [Job(**job) for job in json.loads(path.read_text())["jobs"]]
    seconds_path = path.with_name(SECONDS)
    for n, job in enumerate(jobs, 1):
        if dist.is_main():
            print(f"rtune demo: [{n}/{len(jobs)}] {job.name}", file=sys.stderr, flush=True)
        t0 = time.time()
        try:
            run_job(job)
        except (ConfigError, RunError) as err:
            raise type(err)(f"demo job {job.name} (run dir {job.run_dir}): {err}") from err
        check_done(job)
        if dist.is_main():
            seconds = json.loads(seconds_path.read_text()) if seconds_path.is_file() else {}
            save_json({**seconds, job.name: round(time.time() - t0, 1)}, seconds_path)


def run_job(job: Job) -> None:
    """One job, as `rtune <job.command()>` would run it."""
    where = f"{job.config} + the demo's overrides ({job.name})"
    o, overrides = job.options, job.run_overrides()
    if job.recipe in ("pretrain", "finetune"):
        cfg = load_run_config(job.config, overrides, job.recipe)
        (pretrain if job.recipe == "pretrain" else finetune).run(cfg, where, "auto", job.command())
    elif job.recipe == "recycle":
        cfg = load_run_config(job.config, [*overrides, f"model.path={o['base']}"], "finetune")
        recycle.run(cfg, where, "auto", job.command(), o["bundle"], o["method"], Policy(),
                    o["same_base"])
    else:
        p = o["pairs"]
        pairs = open_pairs(p["a"], p["base_a"], p["b"], p["base_b"],
                           (p["control_a"], p["control_base_a"], p["control_b"],
                            p["control_base_b"]))
        cfg = load_run_config(job.config, [*overrides, f"model.path={p['base_b']}"],
                              "finetune")
        if job.recipe == "connectivity":
            connectivity.run(cfg, where, pairs, o["points"], job.command())
        else:
            similarity.run(cfg, where, pairs, o["max_examples"], job.command())


def check_done(job: Job) -> None:
    """A job that returned without its `done` file (stopped by a signal: its checkpoint is saved)
    ends the launch, so no later job reads what it has not written; rank 0 looks for the file
    once every rank is through (similarity runs on rank 0 alone)."""
    dist.barrier()
    if not dist.broadcast_object(job.is_done() if dist.is_main() else None):
        raise RunError(f"demo job {job.name}: stopped before it finished (no {job.done} in "
                       f"{job.run_dir}); run the demo again to continue it")
