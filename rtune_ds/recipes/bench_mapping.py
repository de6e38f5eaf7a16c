"""`rtune bench mapping`: the time to map a full fine-tuning bundle onto a new base against the time
to load that base, for a preset of ~100M parameters, 1 rank on CPU; prints JSON.

The two bases and the bundle are made here with random weights (mapping cost does not depend on
their values): v0, a bundle tuned on v0 (v0 + a small delta, written by the real bundle writer),
and v1 = v0 moved a little. Each repeat times loading v1 as a task model from disk (load_s), and
recycling.transplant, the very function `rtune recycle` builds its model with: plan on a meta
model, load v1, read and add every delta tensor (transplant_s: the whole path from a bundle to the
mapped model, loading included). map_s is the mapping's own share: transplant_s less the lazy
from_pretrained it starts with (lazy_load_s, the same repeat). Medians over the repeats; target
map_s / load_s <= 1.5.

transformers loads safetensors lazily (memory-mapped): from_pretrained alone reads almost nothing
(lazy_load_s), and the first write to a weight copies its pages. Training writes every weight, so
the load a tuning run pays is from_pretrained plus making every weight resident and private
(load_s: a clone of each parameter); mapping pays that same cost while it adds the deltas.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from rtune_ds import dist
from rtune_ds.artifacts.bundle import open_old_weights, save_bundle
from rtune_ds.config.schema import PRESETS
from rtune_ds.errors import ConfigError
from rtune_ds.jobs import benchmark
from rtune_ds.jobs.synthetic_library import ONE_RANK_STAGE0, perturbed
from rtune_ds.models.loader import count_parameters, load_task_model
from rtune_ds.models.presets import build_preset
from rtune_ds.recycling.transplant import transplant
from rtune_ds.train.inference import frozen_engine

LABELS = ["negative", "positive"]


class PresetVocabulary:
    """What build_preset needs of a tokenizer: a size and the special ids."""

    def __init__(self, size: int):
        self.size, self.pad_token_id, self.bos_token_id, self.eos_token_id = size, 0, 1, 2

    def __len__(self) -> int:
        return self.size


def make_inputs(preset: str, work: Path) -> tuple[Path, Path, Path]:
    """(v0, v1, bundle tuned on v0) under `work`."""
    v0, v1, bundle = work / "v0", work / "v1", work / "bundle"
    vocab = PresetVocabulary(PRESETS[preset][1])
    base = build_preset(preset, vocab, 256, seed=0)
    base.save_pretrained(str(v0))
    perturbed(base, 1e-3, seed=1).save_pretrained(str(v1))
    del base
    tuned, head = load_task_model(v0, "classification", LABELS, 0, None, seed=0)
    engine = frozen_engine(perturbed(tuned, 1e-3, seed=2), ONE_RANK_STAGE0)
    save_bundle(engine, bundle, method="full", task_type="classification", base_dir=str(v0),
                label_names=LABELS, pad_token_id=0, head_names=head, targets={}, metrics={},
                lineage={"command": "rtune bench mapping"}, tuning={"method": "full"})
    return v0, v1, bundle


def run(preset: str, repeats: int, out: str) -> dict:
    benchmark.check_llama_preset(preset)
    if repeats < 1:
        raise ConfigError(f"--repeats {repeats}: must be >= 1")
    dist.init()
    out_dir = Path(out)
    work = out_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    v0, v1, bundle = make_inputs(preset, work)
    old = open_old_weights(bundle, None, "bench")  # headers only: what recycle reads up front
    lazy_load_s, load_s, transplant_s = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        model, _ = load_task_model(v1, "classification", LABELS, 0, None, seed=0)
        lazy_load_s.append(time.perf_counter() - started)
        for param in model.parameters():
            param.data = param.data.clone()
        load_s.append(time.perf_counter() - started)
        del model
        started = time.perf_counter()
        mapped = transplant(old, v1, labels=LABELS, pad_token_id=0, where="bench")
        transplant_s.append(time.perf_counter() - started)
        params, moved = count_parameters(mapped.model), len(mapped.mapping.moves)
        del mapped
    runs = {"lazy_load_s": lazy_load_s, "load_s": load_s, "transplant_s": transplant_s,
            "map_s": [t - lazy for t, lazy in zip(transplant_s, lazy_load_s)]}
    median = benchmark.medians(runs)
    bundle_bytes = sum(f.stat().st_size for f in bundle.rglob("*.safetensors"))
    shutil.rmtree(work, ignore_errors=True)
    return benchmark.publish({
        "bench": "mapping", "preset": preset, "parameters": params, "bundle_bytes": bundle_bytes,
        "repeats": repeats, **runs,
        **{f"{k}_median": median[k] for k in ("lazy_load_s", "load_s", "map_s")},
        "ratio_map_to_load": median["map_s"] / median["load_s"],
        "ratio_transplant_to_load": median["transplant_s"] / median["load_s"],
        "target_ratio": 1.5, "mapped_tensors": moved, "threads": torch.get_num_threads()},
        out_dir / "bench_mapping.json")
