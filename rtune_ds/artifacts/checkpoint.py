"""DeepSpeed checkpoints with client state and per-rank RNG, written atomically; resume targets and
the universal-checkpoint policy (another world size or ZeRO stage)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from deepspeed.checkpoint.constants import (
    UNIVERSAL_CHECKPOINT_INFO,
    UNIVERSAL_CHECKPOINT_VERSION_KEY,
    UNIVERSAL_CHECKPOINT_VERSION_VALUE,
)

from rtune_ds import dist
from rtune_ds.artifacts import checkpoint
from rtune_ds.errors import ConfigError
from rtune_ds.io import WRITE_ERRORS, save_json, save_text, staged_dir, write_failed

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
            # Not io.staged_dir: DeepSpeed writes save_dir/<tag>/ from every rank, so the staging
            # dir is a tag all ranks know beforehand (no random name), and rank 0 renames it only
            # once every rank has written its part.
            os.replace(staging, ckpt_dir / tag)
            save_text(tag, ckpt_dir / "latest")
    except (*WRITE_ERRORS, RuntimeError) as err:  # torch.save: a failed write is a RuntimeError
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
    with staged_dir(target) as staging:
        proc = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
                               "--input_folder", str(ckpt_dir / tag),
                               "--output_folder", str(staging),
                               "--num_extract_workers", "1", "--num_merge_workers", "1"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ConfigError(f"{ckpt_dir / tag}: conversion to a universal checkpoint failed: "
                              f"{proc.stderr.strip()[-800:]}")
        for file in (ckpt_dir / tag).glob("rng_rank*.pt"):
            shutil.copy(file, staging)
        shutil.copy(ckpt_dir / tag / RUN_STATE, staging)


def load(engine, ckpt_dir: Path, tag: str) -> dict:
    """Restore engine, optimizer, scheduler and this rank's RNG; return the client state."""
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        raise ConfigError(f"{ckpt_dir / tag}: DeepSpeed could not load this checkpoint")
    rng_file = ckpt_dir / tag / f"rng_rank{dist.rank()}.pt"
    if rng_file.is_file():
        torch.set_rng_state(torch.load(rng_file, weights_only=True)["torch"])
    return client_state


def resume_tag_of(run_dir: Path, resume: str | None) -> str | None:
    ckpt_dir = run_dir / "checkpoints"
    tag = checkpoint.latest_tag(ckpt_dir)
    if resume is None:
        if tag is not None:
            raise ConfigError(f"{run_dir}: key 'run_dir': already holds checkpoints; pass "
                              "--resume auto to continue it, or choose a new run_dir")
        return None
    if resume == "required" and tag is None:
        raise ConfigError(f"--resume {resume}: no complete checkpoint in {ckpt_dir}")
    return tag


def needs_universal(saved: dict, world: int, stage: int, where: str, tag: str) -> bool:
    """Whether resuming `saved` (a checkpoint's run state) at `world` ranks and ZeRO `stage` goes
    through a universal checkpoint; a stage change DeepSpeed cannot convert is refused.

    ds_to_universal needs ZeRO optimizer files, which stage 0 does not write, and a stage-0 engine
    cannot load a universal checkpoint; the universal optimizer state of stage 3 and of stages 1/2
    differ in layout, and each loader reads only its own."""
    saved_stage = saved["zero_stage"]
    if saved_stage != stage and not {saved_stage, stage} <= {1, 2}:
        raise ConfigError(f"{where}: the checkpoint {tag} was saved under ZeRO stage {saved_stage} "
                          f"and this launch asks for stage {stage}; DeepSpeed can change the stage "
                          f"of a checkpoint only between 1 and 2: resume with a stage-{saved_stage} "
                          "DeepSpeed JSON")
    # a stage-0 checkpoint holds the whole optimizer state, which loads at any world size
    return saved_stage != stage or (saved["world_size"] != world and stage > 0)

