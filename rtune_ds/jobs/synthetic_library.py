"""Inputs for the recycling benchmarks, made here with random weights (what mapping and scoring
cost does not depend on the values): a preset base v0 with a byte-level BPE tokenizer trained on
synthetic text, a new version v1 (v0 moved a little), classification tasks of several label
counts, and bundles tuned on v0 written by the real bundle writer: full fine-tuning deltas, LoRA
and IA3 adapters with their heads, each recording the config it was "tuned" with."""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from rtune_ds.artifacts.bundle import save_bundle
from rtune_ds.config.schema import TuningMethod
from rtune_ds.data.tokenizer import load_tokenizer, train_tokenizer
from rtune_ds.models.adapters import resolve_peft_targets, wrap_peft
from rtune_ds.models.loader import load_task_model, module_names_of
from rtune_ds.models.presets import build_preset
from rtune_ds.train.inference import frozen_engine

ONE_RANK_STAGE0 = {"train_batch_size": 1, "train_micro_batch_size_per_gpu": 1,
                   "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 0}}
LABEL_COUNTS = (2, 3, 4, 6)  # one task per count; bundle i is for task i % len(LABEL_COUNTS)


def perturbed(model: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    """Every parameter moved by seeded N(0, scale²) noise, in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def _sentences(n: int, rng: random.Random, words: list[str]) -> list[str]:
    return [" ".join(rng.choices(words, k=rng.randint(8, 40))) for _ in range(n)]


def make_bases(preset: str, work: Path) -> tuple[Path, Path]:
    """(v0, v1): the preset with a tokenizer trained on synthetic text, and v0 moved a little."""
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
             for _ in range(3000)]
    corpus = work / "text.jsonl"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in _sentences(4000, rng, words)))
    tok = train_tokenizer([str(corpus)], "text", 4096, work / "tokenizer")
    v0, v1 = work / "v0", work / "v1"
    base = build_preset(preset, tok, 256, seed=0)
    base.save_pretrained(str(v0))
    tok.save_pretrained(str(v0))
    perturbed(base, 1e-3, seed=1).save_pretrained(str(v1))
    tok.save_pretrained(str(v1))
    (work / "words.json").write_text(json.dumps(words))
    return v0, v1


def make_tasks(work: Path, examples: int) -> list[Path]:
    """One classification task per label count: train/dev/test jsonl of `examples` rows each."""
    rng, words = random.Random(1), json.loads((work / "words.json").read_text())
    tasks = []
    for count in LABEL_COUNTS:
        task = work / f"task_{count}_labels"
        task.mkdir(parents=True, exist_ok=True)
        for split in ("train", "dev", "test"):
            rows = [{"text": t, "label": f"class_{i % count}"}
                    for i, t in enumerate(_sentences(examples, rng, words))]
            (task / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        tasks.append(task)
    return tasks


def job_config(v0: Path, task: Path, method: TuningMethod, max_len: int) -> dict:
    """The RunConfig a bundle records as the one it was tuned with."""
    return {"run_dir": "runs/synthetic", "seed": 0, "model": {"path": str(v0)},
            "task": {"type": "classification", "train": str(task / "train.jsonl"),
                     "dev": str(task / "dev.jsonl"), "test": str(task / "test.jsonl"),
                     "max_len": max_len},
            "tuning": {"method": method},
            "train": {"max_steps": 10, "micro_batch_size": 16, "global_batch_size": 32}}


def make_bundle(v0: Path, task: Path, method: TuningMethod, seed: int, out: Path,
                max_len: int) -> Path:
    """A bundle for `task` tuned on v0 by `method`: random tuned values, the real writer."""
    from rtune_ds.config.load import run_config_from

    config = job_config(v0, task, method, max_len)
    cfg = run_config_from(config, [], "synthetic bundle", "finetune")
    labels = sorted({json.loads(line)["label"]
                     for line in (task / "train.jsonl").read_text().splitlines()})
    pad = load_tokenizer(v0).pad_token_id
    model, head = load_task_model(v0, "classification", labels, pad, None, seed=seed)
    targets = resolve_peft_targets(cfg.tuning, "llama", module_names_of(v0, "classification"),
                                   "synthetic bundle")
    if method == TuningMethod.FULL:
        model = perturbed(model, 1e-3, seed=seed)
    else:
        model = wrap_peft(model, method, "classification", targets, cfg.tuning, seed)
        trainable = [p for p in model.parameters() if p.requires_grad]
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in trainable:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    engine = frozen_engine(model, ONE_RANK_STAGE0)
    for n, p in engine.module.named_parameters():  # the writer saves what was trained
        p.requires_grad_(n in trainable)
    save_bundle(engine, out, method=method, task_type="classification", base_dir=str(v0),
                label_names=labels, pad_token_id=pad, head_names=head, targets=targets,
                metrics={}, lineage={"command": "rtune bench (synthetic bundle)",
                                     "config": cfg.to_dict()},
                tuning={"method": method})
    return out


def make_library(preset: str, bundles: int, work: Path, examples: int, max_len: int
                 ) -> tuple[Path, Path, Path]:
    """(v0, v1, a directory of `bundles` bundles: methods and tasks in rotation)."""
    v0, v1 = make_bases(preset, work)
    tasks = make_tasks(work, examples)
    shelf = work / "bundles"
    for i in range(bundles):
        method = list(TuningMethod)[i % len(TuningMethod)]
        make_bundle(v0, tasks[i % len(tasks)], method, seed=100 + i,
                    out=shelf / f"b{i:03d}_{method}", max_len=max_len)
    return v0, v1, shelf
