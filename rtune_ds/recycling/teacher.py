"""The frozen teacher of distillation: the old model under its own DeepSpeed engine.

The teacher is the old model: the old base with the old bundle applied, frozen (eval(), no
gradients, forwards under no_grad, its outputs dropped right after the loss). It has its own
DeepSpeed config (stock: ds_configs/teacher_offload.json, ZeRO-3 inference with its parameters
offloaded to CPU), independent of the student's, so offloading the teacher never changes how the
student is sharded. Every rank runs one teacher forward, then one student forward, per micro-batch:
ZeRO-3 gathers parameters collectively, so the sequence of forwards must match across ranks.
Without the hidden-state term the teacher's outputs are read from the teacher cache instead
(train/teacher_cache.py; class logits, or an LM task's top-k table): the teacher then runs once over
the train split, or not at all.
"""
from __future__ import annotations

from rtune_ds.artifacts.bundle import OldWeights
from rtune_ds.config.ds_config import read_ds_config, resolve_ds_config
from rtune_ds.config.schema import RunConfig
from rtune_ds.recycling.transplant import transplant
from rtune_ds.resources import DS_CONFIGS
from rtune_ds.train.inference import frozen_engine, inference_config


def teacher_ds_config(cfg: RunConfig, world: int, grad_accum: int, peak_lr: float,
                      hidden_size: int) -> dict:
    """The teacher's DeepSpeed JSON, its "auto" values filled from the run as the student's are."""
    path = cfg.distill.teacher_deepspeed or str(DS_CONFIGS / "teacher_offload.json")
    ds_in, where = read_ds_config(path)
    ds, _, _ = resolve_ds_config(ds_in, where, cfg, world, grad_accum, peak_lr, hidden_size)
    return inference_config(ds)


# The teacher is the old model alone, the same for every seed and arm (so its outputs can be
# cached across them): a head parameter the bundle does not set would be drawn from this seed.
TEACHER_SEED = 0


def build_teacher(old: OldWeights, old_base: str, label_names: list[str] | None,
                  pad_token_id: int | None, ds_config: dict):
    """The old model under its own frozen DeepSpeed engine (ZeRO-3: each rank loads its shard)."""
    model = transplant(old, old_base, labels=label_names, pad_token_id=pad_token_id,
                       where=str(old.path), ds_config=ds_config, seed=TEACHER_SEED).model
    return frozen_engine(model, ds_config)
