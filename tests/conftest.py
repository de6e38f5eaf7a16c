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


def tiny_base(cache_dir: Path, preset: str = "llama-1m") -> Path:
    """A tiny untrained base (preset + a BPE tokenizer trained on the fixtures), built once per
    test session: stands in for an `rtune pretrain` export."""
    from rtune_ds.data.tokenizer import train_tokenizer
    from rtune_ds.models.presets import build_preset

    out = cache_dir / "bases" / preset
    if not (out / "config.json").is_file():
        tok = train_tokenizer([str(FIXTURES / "general.jsonl"), str(FIXTURES / "cls_train.jsonl")],
                              "text", 600,
                              cache_dir / "bases" / "tokenizer")
        model = build_preset(preset, tok, 64, 0)
        model.save_pretrained(str(out))
        tok.save_pretrained(str(out))
    return out


FINETUNE_STEPS = 30


def finetune_config(run_dir: Path, base: Path, method: str = "full", **sections) -> dict:
    cfg = {
        "run_dir": str(run_dir), "seed": 3, "model": {"path": str(base)},
        "task": {"type": "classification", "train": str(FIXTURES / "cls_train.jsonl"),
                 "dev": str(FIXTURES / "cls_dev.jsonl"), "test": str(FIXTURES / "cls_test.jsonl"),
                 "max_len": 32},
        "tuning": {"method": method},
        # global batch 32 on any world size: the data order does not depend on it
        "train": {"max_steps": FINETUNE_STEPS, "micro_batch_size": 8, "global_batch_size": 32,
                  "lr": 3e-3 if method == "full" else 2e-2, "warmup_steps": 2,
                  "eval_every": 15},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def derived_base(cache_dir: Path, name: str, change) -> Path:
    """A new base version: v0 with its weights perturbed (seeded), then `change(model)`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = cache_dir / "bases" / name
    if not (out / "config.json").is_file():
        v0 = tiny_base(cache_dir)
        model = AutoModelForCausalLM.from_pretrained(str(v0), dtype=torch.float32)
        torch.manual_seed(11)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        model = change(model)
        model.save_pretrained(str(out))
        AutoTokenizer.from_pretrained(str(v0)).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def recycle_env(tmp_path_factory, cache_dir):
    """(root, bases v0/v1, bundles full/lora tuned on v0 at 1 rank, cache dir), made once."""
    root = tmp_path_factory.mktemp("recycle")
    bases = {"v0": tiny_base(cache_dir), "v1": derived_base(cache_dir, "v1", lambda m: m)}
    bundles = {}
    for method in ("full", "lora"):
        cfg = finetune_config(root / f"ft_{method}", bases["v0"], method,
                              train={"max_steps": 20, "eval_every": 10})
        check(rtune(["finetune", "--config", str(write_config(root / f"ft_{method}.yaml", cfg))],
                    cache_dir))
        bundles[method] = root / f"ft_{method}" / "final"
    return root, bases, bundles, cache_dir


def recycle(env, name, bundle, base, method="compat", nproc=1, ds="zero0", extra=()):
    root, _, _, cache = env
    cfg = write_config(root / f"{name}.yaml", finetune_config(root / name, base, "full",
                                                              train={"max_steps": 10,
                                                                     "eval_every": 5}))
    return rtune(["recycle", "--config", str(cfg), "--ds-config", f"ds_configs/{ds}.json",
                  "--method", method, "--bundle", str(bundle), "--base", str(base), *extra],
                 cache, nproc)
