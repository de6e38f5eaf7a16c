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

import math
from pathlib import Path

from rtune_ds import dist
from rtune_ds.config.schema import RunConfig
from rtune_ds.data.examples import ExampleSource, real_token_fraction
from rtune_ds.jobs import benchmark, tuning
from rtune_ds.train.objectives import classification_loss, lm_loss

SIDES = {"before": {"grouped": False, "pad_to_max": True},
         "after": {"grouped": True, "pad_to_max": False}}


def _real_tokens_per_s(p: tuning.Plan, tokenizer, data, side: str, warmup: int,
                       global_batch: int, run_dir: Path) -> float:
    cfg, train = p.cfg, data.splits["train"]
    model, _ = tuning.build_model(p, tokenizer, data)
    loss = classification_loss if cfg.task.type == "classification" else lm_loss
    times = benchmark.timed_run(p, model, ExampleSource(train, cfg.seed, **SIDES[side]), loss,
                                run_dir, tokens_per_sample=train.lengths.double().mean().item())
    replay = ExampleSource(train, cfg.seed, **SIDES[side])  # the same seeded order again
    tokens = []
    for step in range(cfg.train.max_steps):
        replay.global_batch(step, global_batch)
        tokens.append(replay.step_tokens)
    return sum(tokens[warmup:]) / sum(times[warmup:])


def run(cfg: RunConfig, where: str, steps: int, warmup: int, repeats: int) -> dict:
    benchmark.one_rank("padding", steps, warmup, repeats)
    p = tuning.plan(benchmark.timing_config(cfg, steps, warmup), where, resume=None)
    dist.init()
    tokenizer, data = tuning.load_inputs(p)
    train, micro = data.splits["train"], cfg.train.micro_batch_size
    global_batch = micro * p.grad_accum
    epoch_steps = math.ceil(len(train) / global_batch)
    fraction = {name: real_token_fraction(ExampleSource(train, cfg.seed, **side), global_batch,
                                          micro, epoch_steps)
                for name, side in {**SIDES, "dynamic_ungrouped": {"grouped": False}}.items()}
    bench_dir = Path(cfg.run_dir) / "bench"
    runs = benchmark.interleaved(tuple(SIDES), repeats, lambda side, r: _real_tokens_per_s(
        p, tokenizer, data, side, warmup, global_batch, bench_dir / f"padding_{side}_{r}"))
    per_s = benchmark.medians(runs)
    return benchmark.publish({
        **benchmark.header("padding", p),
        "task": {"type": cfg.task.type, "train": cfg.task.train, "examples": len(train),
                 "max_len": cfg.task.max_len, "split_width": train.input_ids.shape[1],
                 "mean_real_tokens": train.lengths.double().mean().item()},
        "threads": benchmark.THREADS, "micro_batch_size": micro,
        "global_batch_size": global_batch, "steps": steps, "warmup": warmup, "repeats": repeats,
        "real_token_fraction": fraction, "real_tokens_per_s": per_s,
        "speedup": per_s["after"] / per_s["before"], "runs": runs}, bench_dir / "padding.json")
