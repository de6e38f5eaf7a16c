"""Many bundles on one loaded base: the new base is loaded once (under any ZeRO stage) and each
bundle is put onto it in place, scored, and taken off again, leaving the base exactly as it was.

- adapters are attached with peft's multi-adapter API before DeepSpeed starts (get_peft_model for
  the first, add_adapter for the others), so ZeRO-3 partitions them with the base; a bundle
  activates its own with set_adapter. peft cannot hold adapters of two types (LoRA and IA3) in
  one model, so a library mixing them loads the base once per adapter type;
- a delta is added to the backbone tensors it maps onto (mapping.apply_mapping, as for one
  bundle), with the adapters disabled;
- heads are swapped: a classifier base is loaded with as many label rows as the largest label
  set among its bundles; a bundle's head fills the first rows and evaluation reads only those
  logits (evaluate_classification slices to the task's labels), so bundles for different tasks
  and label sets share one model;
- every base tensor a bundle touches (its delta's targets, the head) is saved before it is
  applied (the tensor object that apply_mapping replaces, or a copy of this rank's ZeRO-3
  partition) and written back after it, so the base's weight digest after the whole library
  equals the digest before.

The plan (which tensors go where) is the one `rtune recycle` makes for the bundle, on a meta model
of the bundle's own label count; only the head moves are redirected to the head's first rows.
"""
from __future__ import annotations

import re
from contextlib import contextmanager, nullcontext
from pathlib import Path

import deepspeed
import torch

from rtune_ds import dist
from rtune_ds.artifacts.bundle import OldWeights
from rtune_ds.models.loader import load_task_model
from rtune_ds.models.zero import forget_trace, settle_partitions, weights_digest
from rtune_ds.recycling.mapping import Mapping, apply_mapping, mapping_targets, peft_saved_name
from rtune_ds.train.inference import frozen_engine

PEFT_PREFIX = "base_model.model."


def _saved(tensor: torch.Tensor) -> torch.Tensor:
    """What restores `tensor`: a copy of this rank's ZeRO-3 partition, or the tensor object itself
    (apply_mapping gives an unpartitioned tensor new storage and never writes into the old)."""
    if hasattr(tensor, "ds_id"):
        return tensor.ds_tensor.detach().clone()
    return tensor.data


def _restore(tensor: torch.Tensor, saved: torch.Tensor) -> None:
    if hasattr(tensor, "ds_id"):
        tensor.ds_tensor.data.copy_(saved)
    else:
        tensor.data = saved


def _write_head_rows(param: torch.Tensor, value: torch.Tensor) -> None:
    """The bundle's head (its label rows) into the first rows of the library's wider head."""
    partitioned = hasattr(param, "ds_id")
    with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
        if partitioned and not dist.is_main():
            return
        updated = param.data.clone()
        updated[:value.shape[0]] = value.to(param.dtype)
        if partitioned:
            param.data.copy_(updated)
        else:
            param.data = updated


def adapter_type(old: OldWeights) -> str | None:
    """The peft type a bundle needs attached (None for a delta): bundles of one type share a load."""
    return old.method if old.kind == "peft" else None


def _adapter_config(old: OldWeights):
    config = old.peft_config()
    # the head is the base model's own (swapped in place), never a modules_to_save copy
    config.modules_to_save, config.task_type = None, None
    return config


class LoadedBase:
    """The task model of a new base, loaded once with the adapters of `bundles` attached, wrapped
    by a frozen DeepSpeed engine."""

    def __init__(self, base: str, task_type: str, labels: list[str] | None,
                 pad_token_id: int | None, ds_config: dict, seed: int,
                 bundles: list[OldWeights], trust_remote_code: bool = False):
        from peft import get_peft_model

        self.model, self.head = load_task_model(base, task_type, labels, pad_token_id, ds_config,
                                                seed, trust_remote_code)
        self.names: dict[Path, str] = {}  # bundle -> its adapter's name
        self.peft = None
        for i, old in enumerate(b for b in bundles if b.kind == "peft"):
            name = self.names[old.path] = f"b{i}"
            if self.peft is None:
                self.peft = get_peft_model(self.model, _adapter_config(old), adapter_name=name)
            else:
                self.peft.add_adapter(name, _adapter_config(old))
        self.engine = frozen_engine(self.peft or self.model, ds_config)

    def digest(self) -> str:
        """sha256 of the base's own weights, adapters left out (all ranks call it)."""
        return weights_digest(self.engine, self._backbone())

    def _backbone(self) -> dict[str, torch.Tensor]:
        """The base model's tensors under their own names (no adapter's, no peft wrapper's)."""
        tensors, _ = mapping_targets(self.model, peft=False)
        adapter = re.compile(rf"\.({'|'.join(map(re.escape, self.names.values())) or '$^'})(\.|$)")
        return {n.replace(".base_layer.", "."): t for n, t in tensors.items()
                if not adapter.search(n)}

    @contextmanager
    def applied(self, old: OldWeights, mapping: Mapping):
        """Yield the model to score, holding `old` (mapped by `mapping`); then take it off."""
        settle_partitions(self.engine)
        forget_trace(self.engine)
        if old.kind == "peft":
            name = self.names[old.path]
            self.peft.set_adapter(name)
            tensors = {saved: p for n, p in self.peft.named_parameters()
                       if (saved := peft_saved_name(n, name)) != n}
            heads = {PEFT_PREFIX + h: self.model.get_parameter(h) for h in self.head}
        else:
            tensors = self._backbone()
            heads = {h: tensors[h] for h in self.head}
        head_moves = [m for m in mapping.moves if m.target in heads]
        body = Mapping([m for m in mapping.moves if m.target not in heads], mapping.kept,
                       mapping.dropped, mapping.renamed, mapping.grown, mapping.tied)
        touched = dict(heads)
        if old.kind != "peft":
            touched |= {m.target: tensors[m.target] for m in body.moves}
        saved = {n: _saved(t) for n, t in touched.items()}
        off = self.peft.disable_adapter() if self.peft is not None and old.kind != "peft" \
            else nullcontext()
        try:
            apply_mapping(tensors, body, old.read)
            for move in head_moves:
                _write_head_rows(heads[move.target], old.read(move.source))
            with off:
                yield self.engine.module
        finally:
            settle_partitions(self.engine)
            for n, t in touched.items():
                _restore(t, saved[n])
