"""Recipes that run other rtune jobs as real launches (a sweep, a benchmark): the deepspeed
launcher command, and running it with the environment every rank needs."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

from rtune_ds.errors import ConfigError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_command(nproc: int, rtune_args: list[str]) -> list[str]:
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    return [deepspeed, "--num_gpus", str(nproc), "--master_port", str(_free_port()),
            "--module", "rtune_ds", *rtune_args]


def run_launch(cmd: list[str], what: str) -> None:
    """Run a launch in the foreground (its output passes through); a failure names `what`."""
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise ConfigError(f"{what}: the launch failed with exit code {proc.returncode}")

