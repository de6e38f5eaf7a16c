"""A plain Hugging Face model directory consolidated from any ZeRO stage, written whole."""
from __future__ import annotations

from pathlib import Path

from rtune_ds import dist
from rtune_ds.artifacts.lineage import fingerprint
from rtune_ds.io import save_json, staged_dir
from rtune_ds.models.zero import gathered_state_dict


def export_hf(engine, tokenizer, out_dir: Path, lineage: dict) -> None:
    """Write a plain HF model directory (weights, config, tokenizer, lineage.json) atomically."""
    state_dict = gathered_state_dict(engine)
    if dist.is_main():
        with staged_dir(out_dir) as tmp:
            engine.module.save_pretrained(str(tmp), state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
            save_json({**lineage, "fingerprint": fingerprint(tmp)}, tmp / "lineage.json")
    dist.barrier()

