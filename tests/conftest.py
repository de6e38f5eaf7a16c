"""Shared helpers: launching real `rtune` processes (1 rank, or N ranks under the deepspeed
launcher on CPU/gloo) into a temporary run dir, with one packed-data cache per test session."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
DEEPSPEED = Path(sys.executable).parent / "deepspeed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rtune_cache")


def base_env(cache: Path) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", RTUNE_CACHE=str(cache), RTUNE_NO_PROGRESS="1",
               PYTHONUNBUFFERED="1")
    return env


def tiny_config(run_dir: Path, **sections) -> dict:
    """A small pretraining job on the committed WordNet-gloss fixture."""
    cfg = {
        "run_dir": str(run_dir),
        "seed": 3,
        "model": {"preset": "llama-1m"},
        "data": {"train": [str(FIXTURES / "general.jsonl")], "seq_len": 32, "eval_fraction": 0.1},
        "train": {"max_steps": 16, "micro_batch_size": 4, "grad_accum": 2, "lr": 3e-3,
                  "warmup_steps": 2, "eval_every": 8, "eval_max_blocks": 32},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def rtune(args: list[str], cache: Path, nproc: int = 1, timeout: int = 600,
          launcher_args: list[str] = ()) -> subprocess.CompletedProcess:
    """Run `rtune ARGS` plainly (nproc=1) or under the deepspeed launcher with nproc CPU ranks."""
    if nproc == 1 and not launcher_args:
        cmd = [sys.executable, "-m", "rtune_ds", *args]
    else:
        cmd = [str(DEEPSPEED), *(launcher_args or ["--num_gpus", str(nproc),
                                                   "--master_port", str(free_port())]),
               "--module", "rtune_ds", *args]
    return subprocess.run(cmd, cwd=REPO, env=base_env(cache), capture_output=True, text=True,
                          timeout=timeout)


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["train/loss"] for m in read_jsonl(run_dir / "metrics.jsonl")
            if "train/loss" in m}


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())
