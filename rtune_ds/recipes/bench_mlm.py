"""`rtune bench mlm`: MLM training tokens/s with the head on the masked rows only against the full
head (the vocabulary decoder over every position), 1 rank, 2 threads, the real loop.

Both sides train the same model from the same weights on the same batches with the same DeepSpeed
JSON; they differ only by `lm_loss(masked_rows=...)`. Each side runs `repeats` times, interleaved
(ABBA, so a drift of the machine weighs on both), and tokens/s comes from a run's median step
time after `warmup` steps. Reported: both medians, their ratio, and the largest difference
between the two sides' micro-batch losses (they train the same model, so it stays ~1e-6).
"""
from __future__ import annotations

import json
import shutil
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from rtune_ds import dist
from rtune_ds.config.schema import RunConfig
from rtune_ds.data.blend import Blend
from rtune_ds.errors import ConfigError
from rtune_ds.io import save_json
from rtune_ds.jobs.pretraining import build_model, load_inputs, plan
from rtune_ds.train import engine
from rtune_ds.train.objectives import IGNORE, MLM_HEADS, lm_loss, make_objective, mlm_head_of

THREADS = 2
SIDES = ("masked_rows", "full_head")


def run(cfg: RunConfig, where: str, steps: int, warmup: int, repeats: int) -> dict:
    if dist.world_size() != 1:
        raise ConfigError("rtune bench mlm runs on 1 rank; launch it without the launcher")
    if min(steps, repeats) < 1 or warmup < 0:
        raise ConfigError(f"rtune bench mlm: --steps and --repeats must be >= 1 and --warmup >= 0 "
                          f"(got {steps}, {repeats}, {warmup})")
    torch.set_num_threads(THREADS)
    cfg = replace(cfg, train=replace(cfg.train, max_steps=warmup + steps, eval_every=0,
                                     save_every=0, stop_after=None))
    p = plan(cfg, where, resume=None)
    if p.objective != "mlm":
        raise ConfigError(f"{where}: key 'model': rtune bench mlm needs a masked LM; this model "
                          f"trains with objective '{p.objective}'")
    dist.init()
    tokenizer, data = load_inputs(p)
    objective = make_objective("mlm", tokenizer, cfg.seed, cfg.model.mlm_probability)

    def source() -> Blend:
        return Blend(data.names, data.train_blocks, data.phases, p.switch_step, cfg.seed,
                     collate=objective.batch)

    micro = cfg.train.micro_batch_size
    tokens_per_step = micro * p.grad_accum * cfg.data.seq_len
    bench_dir = Path(cfg.run_dir) / "bench"
    per_s: dict[str, list[float]] = {side: [] for side in SIDES}
    losses: dict[str, list[float]] = {side: [] for side in SIDES}
    for r in range(repeats):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            torch.manual_seed(cfg.seed)  # the same new head (if any) and dropout on both sides
            model = build_model(p, tokenizer)
            if mlm_head_of(model) is None:
                raise ConfigError(f"{where}: key 'model': {type(model).__name__} has no known MLM "
                                  f"head (known: {', '.join(MLM_HEADS)}); both sides would be one")
            times = _timed_run(p, model, source(), warmup + steps, bench_dir / f"mlm_{side}_{r}",
                               side == SIDES[0], losses[side] if r == 0 else [])
            per_s[side].append(tokens_per_step / statistics.median(times[warmup:]))
    first, rows_per_step = source(), micro * p.grad_accum
    labels = first.make_inputs(first.global_batch(0, rows_per_step),
                               list(range(rows_per_step)))["labels"]
    rows, full = (statistics.median(per_s[side]) for side in SIDES)
    report = {
        "bench": "mlm", "model": cfg.model.preset or cfg.model.path,
        "model_class": type(model).__name__, "vocab_size": model.config.vocab_size,
        "precision": p.precision, "zero_stage": p.ds_config["zero_optimization"]["stage"],
        "world_size": 1, "threads": THREADS, "seq_len": cfg.data.seq_len,
        "tokens_per_step": tokens_per_step, "steps": steps, "warmup": warmup, "repeats": repeats,
        "masked_fraction": (labels != IGNORE).float().mean().item(),
        "masked_rows_tokens_per_s": rows, "full_head_tokens_per_s": full, "ratio": rows / full,
        "masked_rows_runs": per_s["masked_rows"], "full_head_runs": per_s["full_head"],
        "max_abs_loss_diff": max(abs(a - b) for a, b in zip(*losses.values(), strict=True))}
    save_json(report, bench_dir / "mlm.json")
    print(json.dumps(report, indent=2))
    return report


def _timed_run(p, model, source: Blend, max_steps: int, run_dir: Path, masked_rows: bool,
               seen: list[float]) -> list[float]:
    """Step times of the real loop; each micro-batch's loss is appended to `seen`."""
    def loss_fn(module, batch):
        loss = lm_loss(module, batch, masked_rows)
        seen.append(loss.item())
        return loss

    shutil.rmtree(run_dir, ignore_errors=True)
    spec = engine.LoopSpec(run_dir=run_dir, ds_config=p.ds_config, schedule=p.schedule,
                           max_steps=max_steps, micro_batch=p.cfg.train.micro_batch_size,
                           grad_accum=p.grad_accum, tokens_per_sample=p.cfg.data.seq_len,
                           log_every=p.cfg.train.log_every, save_checkpoints=False)
    result = engine.train(model, spec, source, loss_fn)
    result.engine.destroy()  # ZeRO-3's hooks and the optimizer state go before the next run
    return result.step_times
