"""`rtune bench mlm`: MLM training tokens/s with the head on the masked rows only against the full
head (the vocabulary decoder over every position), 1 rank, 2 threads, the real loop.

Both sides train the same model from the same weights on the same batches with the same DeepSpeed
JSON; they differ only by `lm_loss(masked_rows=...)`. Each side runs `repeats` times, interleaved
(ABBA, so a drift of the machine weighs on both), and tokens/s comes from a run's median step
time after `warmup` steps. Reported: both medians, their ratio, and the largest difference
between the two sides' micro-batch losses (they train the same model, so it stays ~1e-6).
"""
from __future__ import annotations

from pathlib import Path

import torch

from rtune_ds.config.schema import RunConfig
from rtune_ds.errors import ConfigError
from rtune_ds.jobs import benchmark
from rtune_ds.jobs.pretraining import build_model, plan
from rtune_ds.train.objectives import IGNORE, MLM_HEADS, lm_loss, mlm_head_of

SIDES = ("masked_rows", "full_head")


def run(cfg: RunConfig, where: str, steps: int, warmup: int, repeats: int) -> dict:
    benchmark.one_rank("mlm", steps, warmup, repeats)
    p = plan(benchmark.timing_config(cfg, steps, warmup), where, resume=None)
    if p.objective != "mlm":
        raise ConfigError(f"{where}: key 'model': rtune bench mlm needs a masked LM; this model "
                          f"trains with objective '{p.objective}'")
    tokenizer, _, source = benchmark.lm_inputs(p)
    tokens_per_step = benchmark.lm_tokens_per_step(p)
    bench_dir = Path(cfg.run_dir) / "bench"
    losses: dict[str, list[float]] = {side: [] for side in SIDES}
    model = None

    def measure(side: str, r: int) -> float:
        nonlocal model
        torch.manual_seed(cfg.seed)  # the same new head (if any) and dropout on both sides
        model = build_model(p, tokenizer)
        if mlm_head_of(model) is None:
            raise ConfigError(f"{where}: key 'model': {type(model).__name__} has no known MLM "
                              f"head (known: {', '.join(MLM_HEADS)}); both sides would be one")
        seen = losses[side] if r == 0 else []

        def loss_fn(module, batch):
            loss = lm_loss(module, batch, side == "masked_rows")
            seen.append(loss.item())
            return loss

        times = benchmark.timed_run(p, model, source(), loss_fn, bench_dir / f"mlm_{side}_{r}")
        return benchmark.rate(tokens_per_step, times, warmup)

    runs = benchmark.interleaved(SIDES, repeats, measure)
    per_s = benchmark.medians(runs)
    first, rows_per_step = source(), cfg.train.micro_batch_size * p.grad_accum
    labels = first.make_inputs(first.global_batch(0, rows_per_step),
                               list(range(rows_per_step)))["labels"]
    return benchmark.publish({
        **benchmark.header("mlm", p),
        "model_class": type(model).__name__, "vocab_size": model.config.vocab_size,
        "threads": benchmark.THREADS, "seq_len": cfg.data.seq_len,
        "tokens_per_step": tokens_per_step, "steps": steps, "warmup": warmup, "repeats": repeats,
        "masked_fraction": (labels != IGNORE).float().mean().item(),
        **{f"{side}_tokens_per_s": per_s[side] for side in SIDES},
        "ratio": per_s["masked_rows"] / per_s["full_head"],
        **{f"{side}_runs": runs[side] for side in SIDES},
        "max_abs_loss_diff": max(abs(a - b) for a, b in zip(*losses.values(), strict=True))},
        bench_dir / "mlm.json")
