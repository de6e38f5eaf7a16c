"""Inside one of the demo's deepspeed launches: every job of its plan file in turn, in this
process, each run as `rtune <job.argv()>` through the CLI's table of commands (so the ranks start
once per launch); rank 0 prints one line per job and records the job's seconds in its run dir
(demo_seconds.json) as soon as the job is done, when its checkpoints are deleted."""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from rtune_ds import dist
from rtune_ds.demo.plan import SECONDS, Job
from rtune_ds.errors import ConfigError, RunError
from rtune_ds.io import save_json


def run_plan(plan: str, run: Callable[[list[str]], None]) -> None:
    """Run the jobs of the plan file `plan` (written by demo.main) one after another, each by
    `run` (the CLI's: `rtune ARGV` in this process, its errors raised)."""
    path = Path(plan)
    jobs = [Job(**job) for job in json.loads(path.read_text())["jobs"]]
    for n, job in enumerate(jobs, 1):
        if dist.is_main():
            print(f"rtune demo: [{n}/{len(jobs)}] {job.name}", file=sys.stderr, flush=True)
        t0 = time.time()
        try:
            run(job.argv())
        except (ConfigError, RunError) as err:  # the base class: a subclass may take other args
            kind = ConfigError if isinstance(err, ConfigError) else RunError
            raise kind(f"demo job {job.name} (run dir {job.run_dir}): {err}") from err
        check_done(job)
        if dist.is_main():
            save_json({"seconds": round(time.time() - t0, 1)}, Path(job.run_dir) / SECONDS)
            # a finished job is read through its final export only; its DeepSpeed checkpoints
            # (the optimizer state: ~350 MB a MiniLM job) would make the study tens of GB
            shutil.rmtree(Path(job.run_dir) / "checkpoints", ignore_errors=True)


def check_done(job: Job) -> None:
    """A job that returned without its `done` file (stopped by a signal: its checkpoint is saved)
    ends the launch, so no later job reads what it has not written; rank 0 looks for the file
    once every rank is through (similarity runs on rank 0 alone)."""
    dist.barrier()
    if not dist.broadcast_object(job.is_done() if dist.is_main() else None):
        raise RunError(f"demo job {job.name}: stopped before it finished (no {job.done} in "
                       f"{job.run_dir}); run the demo again to continue it")
