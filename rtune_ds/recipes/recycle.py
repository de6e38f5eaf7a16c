"""Recycling a bundle tuned on an older base version onto an upgraded one, as a protocol:

1. read the old bundle (metadata and tensor shapes, no tensor data); its task type, labels and
   tuning method become the run's; check config, DeepSpeed JSON and base as fine-tuning does;
   refuse the very base the bundle was tuned on unless forced; plan the mapping on a meta model
   of the new base, so a partial mapping is refused (strict) before any compute or output;
2. start the ranks; read and tokenise the task data;
3. record the configs and the mapping report; load the new base as a task model (ZeRO-3: each
   rank loads its shard), give it the bundle's adapter structure, apply the mapping;
4. compat: score dev and test as mapped, no training -> compat.json and TensorBoard;
   init: tune from the mapped state with the fine-tuning loop (first eval at step 0) -> a new
   bundle in final/ whose lineage names the old bundle and both bases;
   distill: tune the new base from scratch (fresh head/adapter) with the old model as a frozen
   teacher under its own DeepSpeed config (classification: its logits read from the teacher
   cache, built on a miss); init+distill: the mapped state plus the teacher. run_dir/teacher.json
   says how the cache served and, where the teacher ran, its weight digest before and after.
"""
from __future__ import annotations

from rtune_ds.config.schema import RecyclingMethod, RunConfig
from rtune_ds.jobs import recycling
from rtune_ds.recycling.mapping import Policy
from rtune_ds.train.engine import TrainResult


def run(cfg: RunConfig, where: str, resume: str | None, command: str, bundle: str,
        method: RecyclingMethod, policy: Policy, force_same_base: bool = False,
        old_base: str | None = None) -> dict | TrainResult:
    """The compat record, or (tuning methods) the training result."""
    r = recycling.prepare(cfg, where, resume, bundle, method, policy, force_same_base, old_base)
    started = recycling.start(r)
    if method == RecyclingMethod.COMPAT:
        return recycling.compat(r, started)
    return recycling.tune(r, started, command)
