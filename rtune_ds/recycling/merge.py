"""A bundle applied to the base it was tuned on, for use outside training: the tuned task model
(`rtune analyze`), and a plain Hugging Face model directory with the adapter merged in
(`rtune export`). The model is built by recycling.transplant, like every other one."""
from __future__ import annotations

from pathlib import Path

import torch

from rtune_ds.artifacts.bundle import SAVED_HEAD, open_old_weights, read_bundle
from rtune_ds.artifacts.lineage import code_version, fingerprint
from rtune_ds.errors import ConfigError
from rtune_ds.io import save_json, staged_dir
from rtune_ds.models.loader import load_task_model
from rtune_ds.recycling.transplant import transplant


def apply_bundle(bundle_dir: str | Path, base_dir: str | Path, merge: bool = True,
                 check_fingerprint: bool = True) -> torch.nn.Module:
    """The tuned task model: the base (loaded whole on CPU) with the bundle applied. For PEFT,
    `merge=False` keeps the PeftModel instead of merging the adapter into the weights."""
    meta = read_bundle(bundle_dir)
    if check_fingerprint:
        found = fingerprint(base_dir)
        if found != meta["base"]["fingerprint"]:
            raise ConfigError(f"--base {base_dir}: fingerprint {found} is not the one the bundle "
                              f"was tuned on ({meta['base']['fingerprint']}, "
                              f"{meta['base']['path']})")
    task = meta["task"]
    old = open_old_weights(bundle_dir, task["labels"], str(bundle_dir))  # safetensors only
    model = transplant(old, base_dir, labels=task["labels"], pad_token_id=task["pad_token_id"],
                       where=str(bundle_dir)).model
    if old.kind == "peft" and merge:
        plain, _ = load_task_model(base_dir, task["type"], task["labels"], task["pad_token_id"],
                                   None, seed=0)
        model = _merged(model, plain)
    return model.eval()


def _merged(peft_model, plain: torch.nn.Module) -> torch.nn.Module:
    """`plain` (a fresh base task model) holding the PeftModel's weights with the adapter merged
    in. (peft's merge_and_unload trips over composite heads such as RoBERTa's classifier.)"""
    peft_model.merge_adapter()
    want = plain.state_dict()
    state = {}
    for key, value in peft_model.get_base_model().state_dict().items():
        if ".original_module." in key:
            continue
        key = key.replace(SAVED_HEAD + ".", ".").replace(".base_layer.", ".")
        if key in want:
            state[key] = value
    missing = sorted(set(want) - set(state))
    if missing:
        raise RuntimeError(f"merging the adapter left base tensors unset: {missing[:3]}")
    plain.load_state_dict(state, strict=True)
    return plain


def export_merged(bundle_dir: str | Path, base_dir: str | Path, out_dir: str | Path,
                  command: str, check_fingerprint: bool = True) -> Path:
    """A plain HF model directory (weights, config, the base's tokenizer, lineage.json)."""
    from transformers import AutoTokenizer

    meta = read_bundle(bundle_dir)
    if not Path(base_dir, "config.json").is_file():
        raise ConfigError(f"--base {base_dir}: not a Hugging Face model directory (no config.json)")
    model = apply_bundle(bundle_dir, base_dir, merge=True, check_fingerprint=check_fingerprint)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    parent = {"path": str(Path(base_dir).resolve()), "fingerprint": fingerprint(base_dir)}
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        bundle = {"path": str(Path(bundle_dir).resolve()), "kind": meta["kind"],
                  "method": meta["method"]}
        save_json({"command": command, "kind": "merged", "bundle": bundle, "parent": parent,
                   "task": meta["task"], "metrics": meta["metrics"],
                   "code_version": code_version(), "fingerprint": fingerprint(tmp)},
                  tmp / "lineage.json")
    return out_dir
