"""Launches: the deepspeed launcher command of recipes that run other rtune jobs as real launches
(a sweep, a benchmark, the demo), running it with the environment every rank needs, and the check
of a hostfile the launch scripts run before the launcher reads it:
    python -m rtune_ds.launch --check-hostfile HOSTFILE"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from rtune_ds.errors import ConfigError

# DeepSpeed's runner reads `^(\S+)\s+slots=(\d+)` and raises a ValueError traceback on other lines
HOSTFILE_LINE = re.compile(r"(\S+)\s+slots=(\S+)(\s.*)?")


def free_port() -> int:
    """A TCP port free on this host now (the OS picks it), for a launch's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_command(nproc: int, rtune_args: list[str]) -> list[str]:
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    return [deepspeed, "--num_gpus", str(nproc), "--master_port", str(free_port()),
            "--log_level", os.environ.get("RTUNE_LOG_LEVEL", "warning"),
            "--module", "rtune_ds", *rtune_args]


def run_launch(cmd: list[str], what: str) -> None:
    """Run a launch in the foreground (its output passes through); a failure names `what`."""
    run_launches([(cmd, what)], int(os.environ.get("OMP_NUM_THREADS", "1")))


def run_launches(launches: list[tuple[list[str], str]], threads: int) -> None:
    """Run the launches (command, what it is) at once, each rank with `threads` threads, and
    wait for all of them; a failure names the `what` of every launch that failed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = []
    for cmd, what in launches:
        print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
        procs.append((subprocess.Popen(cmd, env=env), what))
    failed = [f"{what}: the launch failed with exit code {code}"
              for proc, what in procs if (code := proc.wait()) != 0]
    if failed:
        raise ConfigError("; ".join(failed))


def check_hostfile(path: str) -> dict[str, int]:
    """host -> slots of a hostfile: lines '<hostname> slots=<ranks>', '#' comments, blank lines;
    a line that is not that names the file and the line."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"hostfile {path}: cannot read it ({getattr(err, 'strerror', err)})")
    hosts: dict[str, int] = {}
    first_line: dict[str, int] = {}
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = HOSTFILE_LINE.fullmatch(line)
        if m is None:
            raise ConfigError(f"{path}:{n}: {line!r}: a hostfile line is "
                              "'<hostname> slots=<ranks on that host>'")
        host, slots = m.group(1), m.group(2)
        if not slots.isdigit() or int(slots) < 1:
            raise ConfigError(f"{path}:{n}: {line!r}: slots={slots} is not a whole number of "
                              "ranks (>= 1)")
        if host in hosts:
            raise ConfigError(f"{path}:{n}: host {host} is listed again (first on line "
                              f"{first_line[host]})")
        hosts[host], first_line[host] = int(slots), n
    if not hosts:
        raise ConfigError(f"{path}: no host in it (lines '<hostname> slots=<ranks>')")
    return hosts


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--check-hostfile":
        print("usage: python -m rtune_ds.launch --check-hostfile HOSTFILE", file=sys.stderr)
        return 2
    try:
        check_hostfile(argv[1])
    except ConfigError as err:
        print(f"rtune: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
