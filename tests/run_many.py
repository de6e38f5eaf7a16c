"""Several `rtune` command lines in one deepspeed launch, in turn, so the ranks start once (as the
demo's plan runs its jobs): `deepspeed --num_gpus N tests/run_many.py PLAN.json`, where PLAN.json
is {"jobs": [argv, ...], "codes": PATH}. Rank 0 writes each job's exit code to PATH as it ends;
a job that fails does not stop the ones after it (each names its own run dir)."""
import json
import os
import sys
from pathlib import Path

from rtune_ds import cli, dist
from rtune_ds.artifacts.run_dir import release_run_dirs
from rtune_ds.io import save_json


def main(plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    codes = []
    for argv in plan["jobs"]:
        codes.append(cli.main(argv))
        release_run_dirs()
        if dist.is_main():
            save_json(codes, Path(plan["codes"]))
        print(f"run_many: exit {codes[-1]}: rtune {' '.join(argv)}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(next(a for a in sys.argv[1:] if not a.startswith("--local_rank")))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as cli.entry does once a process group exists (pytorch/pytorch#190489)
