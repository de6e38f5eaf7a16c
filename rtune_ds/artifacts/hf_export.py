"""A plain Hugging Face model directory consolidated from any ZeRO stage, written whole, with the
parent's tensors the trained model does not hold carried over unchanged."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from rtune_ds import dist
from rtune_ds.artifacts.lineage import fingerprint
from rtune_ds.errors import RunError
from rtune_ds.io import save_json, staged_dir
from rtune_ds.models.loader import checkpoint_files, compare_with_parent, read_tensors
from rtune_ds.models.zero import gathered_state_dict


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's bytes as stored (any dtype)."""
    raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(raw.numpy().tobytes()).hexdigest()


def parent_carry(module: torch.nn.Module, parent: str | Path) -> tuple[dict, dict]:
    """(the parent's tensors `module` does not hold, under the names `module`'s class loads them
    by; their lineage record). A BertModel parent's pooler under BertForMaskedLM is one: without
    it every classifier on the new version would get a random pooler."""
    files = checkpoint_files(parent, str(parent))
    found = compare_with_parent(module, files)
    stored = read_tensors(files, found.carried.values())
    tensors = {mine: stored[theirs] for mine, theirs in found.carried.items()}
    record = {"tensors": {mine: {"from": theirs, "dtype": str(tensors[mine].dtype).split(".")[-1],
                                 "shape": list(tensors[mine].shape),
                                 "sha256": tensor_sha256(tensors[mine])}
                          for mine, theirs in found.carried.items()},
              "recomputed_buffers": found.recomputed}
    return tensors, record


def check_carried(out_dir: Path, carried: dict[str, torch.Tensor]) -> None:
    """The written directory holds every carried tensor bit for bit (dtype and bytes)."""
    written = read_tensors(checkpoint_files(out_dir, str(out_dir)), carried)
    changed = sorted(name for name, tensor in carried.items()
                     if written[name].dtype != tensor.dtype
                     or tensor_sha256(written[name]) != tensor_sha256(tensor))
    if changed:
        raise RunError(f"{out_dir}: the parent's tensors {changed} were not written unchanged")


def export_hf(engine, tokenizer, out_dir: Path, lineage: dict,
              parent: str | Path | None = None) -> None:
    """Write a plain HF model directory (weights, config, tokenizer, lineage.json) atomically.
    With `parent` (the model trained from), its tensors the model does not hold are written too,
    read from its safetensors, and lineage.json lists them under 'carried_from_parent'."""
    state_dict = gathered_state_dict(engine)
    if dist.is_main():
        carried, record = parent_carry(engine.module, parent) if parent else ({}, None)
        with staged_dir(out_dir) as tmp:
            engine.module.save_pretrained(str(tmp), state_dict={**state_dict, **carried},
                                          safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
            if record is not None:
                check_carried(tmp, carried)
                lineage = {**lineage, "carried_from_parent": {**record, "copied_unchanged": True}}
            save_json({**lineage, "fingerprint": fingerprint(tmp)}, tmp / "lineage.json")
    dist.barrier()
