"""Base + bundle -> model: the only copy of "load a base, give it the bundle's structure, plan and
apply the mapping". `rtune recycle` (the mapped student), the distillation teacher, `rtune export`
and the analyses (a bundle on its own base) and `rtune bench mapping` all build their model here.

Loading goes through the one loader (ZeRO-3 aware: each rank loads its shard, the head the base
lacks is initialised from the seed); a PEFT bundle's adapter structure is made with peft itself;
the mapping (recycling.mapping) is planned on a meta model, from names and shapes alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rtune_ds.artifacts.bundle import OldWeights
from rtune_ds.models.loader import load_task_model, meta_task_model
from rtune_ds.recycling.mapping import (
    Mapping,
    Policy,
    apply_mapping,
    full_shapes,
    mapping_targets,
    plan_mapping,
)


@dataclass
class Transplanted:
    model: torch.nn.Module  # the task model of the base (a PeftModel for a PEFT bundle)
    head: list[str]  # the parameters the base did not have (the task head)
    mapping: Mapping


def plan(old: OldWeights, base: str | Path, policy: Policy, where: str) -> Mapping:
    """The mapping of `old` onto the task model of `base`, made on the meta device (no weights
    read, no compute): a partial mapping is refused here, before anything runs or is written."""
    peft = old.kind == "peft"
    meta = meta_task_model(base, old.task_type, old.labels, old.peft_config() if peft else None)
    tensors, aliases = mapping_targets(meta, peft=peft)
    return plan_mapping(old.sources, full_shapes(tensors), policy, where, aliases)


def transplant(old: OldWeights, base: str | Path, *, labels: list[str] | None,
               pad_token_id: int | None, where: str, mapping: Mapping | None = None,
               ds_config: dict | None = None, seed: int = 0,
               trust_remote_code: bool = False) -> Transplanted:
    """The task model of `base` holding the bundle `old`, before DeepSpeed starts. `mapping`: the
    plan made beforehand (recycle plans before any compute); without one it is planned here with
    the strict default policy. `ds_config`: the DeepSpeed JSON the model will run under (ZeRO-3:
    loaded and mapped shard by shard); None loads it whole on CPU."""
    if mapping is None:
        mapping = plan(old, base, Policy(), where)
    model, head = load_task_model(base, old.task_type, labels, pad_token_id, ds_config, seed,
                                  trust_remote_code)
    if old.kind == "peft":
        from peft import get_peft_model

        model = get_peft_model(model, old.peft_config())
    tensors, _ = mapping_targets(model, peft=old.kind == "peft")
    apply_mapping(tensors, mapping, old.read)
    return Transplanted(model, head, mapping)
