"""`rtune bench padding`: fine-tuning batches padded to the longest example of the split in a plain
seeded permutation (before) against batches padded per micro-batch in length-grouped order
(after); prints JSON and writes it to run_dir/bench/padding.json.

- real-token fraction: real ÷ padded tokens of the micro-batches of one epoch of the train split,
  cut the way the loop cuts them (also for dynamic padding without grouping, the grouping's share);
- tokens/s: real (non-pad) tokens per second of the real loop (1 process, 2 threads, the run's
  model, precision and DeepSpeed JSON), over whole steps after `warmup` steps; before and after
  alternate `repeats` times and the medians are reported.
"""
from __future__ import annotations

import json
import math
import shutil
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from rtune_ds import dist
from rtune_ds.config.schema import RunConfig
from rtune_ds.data.examples import ExampleSource, real_token_fraction
from rtune_ds.errors import ConfigError
from rtune_ds.io import save_json
from rtune_ds.jobs import tuning
from rtune_ds.train import engine
from rtune_ds.train.objectives import classification_loss, lm_loss

SIDES = {"before": {"grouped": False, "pad_to_max": True},
         "after": {"grouped": True, "pad_to_max": False}}


def _tokens_per_s(p: tuning.Plan, tokenizer, data, side: str, steps: int, warmup: int,
                  global_batch: int, run_dir: Path) -> float:
    cfg, train = p.cfg, data.splits["train"]
    shutil.rmtree(run_dir, ignore_errors=True)
    model, _ = tuning.build_model(p, tokenizer, data)
    spec = engine.LoopSpec(run_dir=run_dir, ds_config=p.ds_config, schedule=p.schedule,
                           max_steps=warmup + steps, micro_batch=cfg.train.micro_batch_size,
                           grad_accum=p.grad_accum,
                           tokens_per_sample=train.lengths.double().mean().item(),
                           log_every=cfg.train.log_every, save_checkpoints=False)
    loss = classification_loss if cfg.task.type == "classification" else lm_loss
    times = engine.train(model, spec, ExampleSource(train, cfg.seed, **SIDES[side]),
                         loss).step_times[warmup:]
    replay = ExampleSource(train, cfg.seed, **SIDES[side])  # the same seeded order again
    tokens = []
    for step in range(warmup + steps):
        replay.global_batch(step, global_batch)
        tokens.append(replay.step_tokens)
    return sum(tokens[warmup:]) / sum(times)


def run(cfg: RunConfig, where: str, steps: int, warmup: int, repeats: int) -> dict:
    if dist.world_size() != 1:
        raise ConfigError("rtune bench padding runs on 1 rank; launch it without the launcher")
    torch.set_num_threads(2)
    cfg = replace(cfg, train=replace(cfg.train, max_steps=warmup + steps, eval_every=0,
                                     save_every=0, stop_after=None))
    p = tuning.plan(cfg, where, resume=None)
    dist.init()
    tokenizer, data = tuning.load_inputs(p)
    train, micro = data.splits["train"], cfg.train.micro_batch_size
    global_batch = micro * p.grad_accum
    epoch_steps = math.ceil(len(train) / global_batch)
    fraction = {name: real_token_fraction(ExampleSource(train, cfg.seed, **side), global_batch,
                                          micro, epoch_steps)
                for name, side in {**SIDES, "dynamic_ungrouped": {"grouped": False}}.items()}
    runs: dict[str, list[float]] = {side: [] for side in SIDES}
    bench_dir = Path(cfg.run_dir) / "bench"
    for r in range(repeats):
        for side in (SIDES if r % 2 == 0 else reversed(SIDES)):  # neither side always goes first
            runs[side].append(_tokens_per_s(p, tokenizer, data, side, steps, warmup,
                                            global_batch, bench_dir / f"padding_{side}_{r}"))
    per_s = {side: statistics.median(v) for side, v in runs.items()}
    report = {"bench": "padding", "model": cfg.model.preset or cfg.model.path,
              "task": {"type": cfg.task.type, "train": cfg.task.train, "examples": len(train),
                       "max_len": cfg.task.max_len, "split_width": train.input_ids.shape[1],
                       "mean_real_tokens": train.lengths.double().mean().item()},
              "precision": p.precision, "zero_stage": p.ds_config["zero_optimization"]["stage"],
              "world_size": 1, "threads": 2, "micro_batch_size": micro,
              "global_batch_size": global_batch, "steps": steps, "warmup": warmup,
              "repeats": repeats, "real_token_fraction": fraction,
              "real_tokens_per_s": per_s, "speedup": per_s["after"] / per_s["before"],
              "runs": runs}
    save_json(report, bench_dir / "padding.json")
    print(json.dumps(report, indent=2))
    return report
