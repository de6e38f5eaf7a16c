"""Checkpoints (DeepSpeed's, plus client state and per-rank RNG), the HF export consolidated from
any ZeRO stage, and the lineage record that makes an artifact explain itself."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import deepspeed
import torch
from deepspeed.checkpoint.constants import (UNIVERSAL_CHECKPOINT_INFO,
                                            UNIVERSAL_CHECKPOINT_VERSION_KEY,
                                            UNIVERSAL_CHECKPOINT_VERSION_VALUE)
from safetensors import SafetensorError

from rtune_ds import __version__, dist
from rtune_ds.config import ConfigError, RunError, save_json


RUN_STATE = "rtune_state.json"


def _tag(step: int) -> str:
    return f"step_{step:08d}"


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag DeepSpeed's `latest` names, if that checkpoint exists."""
    latest = ckpt_dir / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    return tag if tag and (ckpt_dir / tag).is_dir() else None


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())


def write_failed(target: Path, err: Exception, staging: Path) -> RunError:
    """A failed write (a full disk, a lost permission): the partial `staging` dir is removed and
    the error says it in one line. torch.save reports a failed write as a RuntimeError."""
    shutil.rmtree(staging, ignore_errors=True)
    reason = " ".join(str(err).split())
    return RunError(f"{target}: writing it failed ({reason}); is the disk full? Nothing that was "
                    "already there was changed")


@contextmanager
def staged_dir(out_dir: Path):
    """A directory written whole or not at all: the body fills a staging dir beside `out_dir`,
    which then replaces `out_dir`; a failed write removes it and raises a RunError naming
    `out_dir`, any other error just removes it."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".tmp-{out_dir.name}-"))
    try:
        yield tmp
    except (OSError, SafetensorError) as err:
        raise write_failed(out_dir, err, tmp) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def save(engine, ckpt_dir: Path, step: int, client_state: dict) -> None:
    """All ranks call this. The checkpoint is written under a staging name, synced, renamed into
    place, and only then named in `latest`: a kill at any moment leaves the previous checkpoint
    the one a resume picks up. (Rank 0 renames: the checkpoint dir must be on a shared file
    system across nodes, as DeepSpeed's `latest` already assumes.)"""
    tag, staging = _tag(step), ckpt_dir / f".tmp-{_tag(step)}"
    if dist.is_main():
        shutil.rmtree(staging, ignore_errors=True)
    dist.barrier()
    try:
        staging.mkdir(parents=True, exist_ok=True)
        torch.save({"torch": torch.get_rng_state()}, staging / f"rng_rank{dist.rank()}.pt")
        # the marker ds_to_universal needs to convert this checkpoint for another world size
        ucp = {UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY:
                                           UNIVERSAL_CHECKPOINT_VERSION_VALUE}}
        engine.save_checkpoint(str(ckpt_dir), tag=staging.name,
                               client_state={**client_state, **ucp}, save_latest=False)
        if dist.is_main():
            save_json({k: client_state[k] for k in ("step", "world_size", "global_batch")}
                      | {"zero_stage": engine.zero_optimization_stage()}, staging / RUN_STATE)
            _fsync_tree(staging)
            shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
            os.replace(staging, ckpt_dir / tag)
            (ckpt_dir / "latest.tmp").write_text(tag)
            os.replace(ckpt_dir / "latest.tmp", ckpt_dir / "latest")
    except (OSError, RuntimeError) as err:
        raise write_failed(ckpt_dir / tag, err, staging) from err
    dist.barrier()


def saved_run_state(ckpt_dir: Path, tag: str) -> dict:
    """World size, global batch, step and ZeRO stage a checkpoint was saved with."""
    return json.loads((ckpt_dir / tag / RUN_STATE).read_text())


def universal_tag(tag: str) -> str:
    return f"{tag}_universal"


def convert_to_universal(ckpt_dir: Path, tag: str) -> None:
    """Rank 0 converts `tag` with DeepSpeed's ds_to_universal (once; written, then renamed)."""
    target = ckpt_dir / universal_tag(tag)
    if target.is_dir():
        return
    staging = ckpt_dir / f".tmp-{universal_tag(tag)}"
    shutil.rmtree(staging, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
                           "--input_folder", str(ckpt_dir / tag), "--output_folder", str(staging),
                           "--num_extract_workers", "1", "--num_merge_workers", "1"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigError(f"{ckpt_dir / tag}: conversion to a universal checkpoint failed: "
                          f"{proc.stderr.strip()[-800:]}")
    for file in (ckpt_dir / tag).glob("rng_rank*.pt"):
        shutil.copy(file, staging)
    shutil.copy(ckpt_dir / tag / RUN_STATE, staging)
    os.replace(staging, target)


def load(engine, ckpt_dir: Path, tag: str) -> dict:
    """Restore engine, optimizer, scheduler and this rank's RNG; return the client state."""
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        raise ConfigError(f"{ckpt_dir / tag}: DeepSpeed could not load this checkpoint")
    rng_file = ckpt_dir / tag / f"rng_rank{dist.rank()}.pt"
    if rng_file.is_file():
        torch.set_rng_state(torch.load(rng_file, weights_only=True)["torch"])
    return client_state


def settle_partitions(engine) -> None:
    """ZeRO-3: wait for prefetches still in flight after the last forward (an eval leaves some)
    and release every gathered parameter, so gathering one afresh is allowed."""
    if engine.zero_optimization_partition_weights():
        engine.empty_partition_cache()


def gathered_state_dict(engine) -> dict | None:
    """The full model state dict on rank 0 (None elsewhere); all ranks must call it."""
    if engine.zero_optimization_partition_weights():
        settle_partitions(engine)
        return engine._zero3_consolidated_16bit_state_dict()
    if not dist.is_main():
        return None
    return {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}


def weights_digest(engine) -> str:
    """sha256 of every full parameter, computed on this rank (ZeRO-3 shards are gathered)."""
    settle_partitions(engine)
    digest = hashlib.sha256()
    for name, param in engine.module.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def fingerprint(model_dir: str | Path) -> str:
    """Content fingerprint of a model directory: its config and weight files."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    for file in sorted(model_dir.iterdir()):
        if file.name == "config.json" or file.suffix in (".safetensors", ".bin"):
            digest.update(file.name.encode())
            with open(file, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:32]


def code_version() -> str:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def lineage_record(command: str, config: dict, parent: str | None, data: list[dict],
                   steps: int, tokens: int, extra: dict) -> dict:
    return {
        "command": command,
        "argv": sys.argv,
        "config": config,
        "parent": {"path": str(Path(parent).resolve()), "fingerprint": fingerprint(parent)}
        if parent else None,
        "data": data,
        "steps": steps,
        "tokens": tokens,
        "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }


def export_hf(engine, tokenizer, out_dir: Path, lineage: dict) -> None:
    """Write a plain HF model directory (weights, config, tokenizer, lineage.json) atomically."""
    state_dict = gathered_state_dict(engine)
    if dist.is_main():
        with staged_dir(out_dir) as tmp:
            engine.module.save_pretrained(str(tmp), state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
            save_json({**lineage, "fingerprint": fingerprint(tmp)}, tmp / "lineage.json")
    dist.barrier()
