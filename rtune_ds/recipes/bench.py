"""Benchmarks that print JSON (and write it to run_dir/bench/, since DeepSpeed logs to stdout too).

- `throughput`: the trainer against a plain PyTorch loop, 1 rank, 2 threads.
- `compare`: under the launcher (N ranks), the trainer against Hugging Face `Trainer` with the same
  model, data, precision and DeepSpeed JSON, and against a plain PyTorch DDP loop.

The plain loop is what a user would write without DeepSpeed: AdamW, gradient clipping, the same LR
schedule, `torch.autocast(bfloat16)` for bf16, DDP when there are several ranks. Timing covers
whole optimizer steps (batch building included) after `warmup` steps; the median step time gives
tokens/s. `throughput` repeats each side `repeats` times, interleaved ABBA, and reports the
medians.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LambdaLR

from rtune_ds import dist
from rtune_ds.config.ds_config import read_ds_config
from rtune_ds.config.schema import RunConfig
from rtune_ds.data.blend import Blend
from rtune_ds.errors import ConfigError
from rtune_ds.jobs import benchmark
from rtune_ds.jobs.pretraining import build_model, plan
from rtune_ds.train.objectives import lm_loss


def _plain_loop(p, model, source: Blend) -> list[float]:
    """Step times of the loop a user would write, over the plan's max_steps."""
    t, s = p.cfg.train, p.schedule
    world, rank = dist.world_size(), dist.rank()
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=s.peak_lr, betas=tuple(t.betas), eps=t.eps,
                            weight_decay=t.weight_decay)
    sched = LambdaLR(opt, lambda i: s.lr(i) / s.peak_lr)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if p.precision == "bf16"
                else contextlib.nullcontext())
    micro, batch = t.micro_batch_size, t.micro_batch_size * p.grad_accum * world
    times = []
    model.train()
    for step in range(t.max_steps):
        started = time.perf_counter()
        rows = source.global_batch(step, batch)
        for m in range(p.grad_accum):
            start = (m * world + rank) * micro
            inputs = source.make_inputs(rows[start:start + micro],
                                        list(range(step * batch + start, step * batch + start + micro)))
            last = m == p.grad_accum - 1
            sync = contextlib.nullcontext() if last or world == 1 else model.no_sync()
            with sync, autocast:
                loss = lm_loss(model, inputs) / p.grad_accum
            with sync:
                loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the trainer reads its loss every step too
        times.append(time.perf_counter() - started)
    return times


def _hf_trainer_loop(p, model, blocks: torch.Tensor, run_dir: Path) -> list[float]:
    """HF Trainer + its own DeepSpeed integration, fed the raw DeepSpeed JSON ("auto" and all);
    the times between step ends (one fewer than steps)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Blocks(torch.utils.data.Dataset):
        def __len__(self):
            return len(blocks)

        def __getitem__(self, i):
            return {"input_ids": blocks[i], "labels": blocks[i]}

    marks: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    t, s = p.cfg.train, p.schedule
    raw_ds, _ = read_ds_config(p.cfg.deepspeed)
    args = TrainingArguments(
        output_dir=str(run_dir), max_steps=t.max_steps,
        per_device_train_batch_size=t.micro_batch_size, gradient_accumulation_steps=p.grad_accum,
        learning_rate=s.peak_lr, weight_decay=t.weight_decay, adam_beta1=t.betas[0],
        adam_beta2=t.betas[1], adam_epsilon=t.eps, max_grad_norm=t.grad_clip,
        lr_scheduler_type="cosine", warmup_steps=s.warmup_steps, bf16=p.precision == "bf16",
        logging_steps=t.log_every, save_strategy="no", report_to=[], deepspeed=raw_ds,
        dataloader_num_workers=0, seed=p.cfg.seed, disable_tqdm=True,
        use_cpu=not torch.cuda.is_available())  # else accelerate counts one process on CPU
    trainer = Trainer(model=model, args=args, train_dataset=Blocks(), callbacks=[StepTimer()])
    trainer.train()
    if not trainer.is_deepspeed_enabled:
        raise ConfigError("HF Trainer did not run DeepSpeed here; no fair comparison")
    return [b - a for a, b in zip(marks, marks[1:])]


def _setup(cfg: RunConfig, where: str, steps: int, warmup: int):
    p = plan(benchmark.timing_config(cfg, steps, warmup), where, resume=None)
    tokenizer, data, source = benchmark.lm_inputs(p)
    return p, tokenizer, data, source, benchmark.lm_tokens_per_step(p)


def _report(p, name: str, report: dict) -> dict:
    return benchmark.publish({**benchmark.header(name, p), "seq_len": p.cfg.data.seq_len, **report},
                             Path(p.cfg.run_dir) / "bench" / f"{name}.json")


def throughput(cfg: RunConfig, where: str, steps: int, warmup: int, repeats: int) -> dict:
    benchmark.one_rank("throughput", steps, warmup, repeats)
    p, tokenizer, _, source, tokens_per_step = _setup(cfg, where, steps, warmup)

    def measure(side: str, r: int) -> float:
        model = build_model(p, tokenizer)
        times = (_plain_loop(p, model, source()) if side == "plain" else
                 benchmark.timed_run(p, model, source(), lm_loss,
                                     Path(cfg.run_dir) / "bench" / f"trainer_{r}"))
        return benchmark.rate(tokens_per_step, times, warmup)

    runs = benchmark.interleaved(("plain", "trainer"), repeats, measure)
    per_s = benchmark.medians(runs)
    return _report(p, "throughput", {
        "threads": benchmark.THREADS, "tokens_per_step": tokens_per_step, "steps": steps,
        "repeats": repeats, "trainer_tokens_per_s": per_s["trainer"],
        "plain_pytorch_tokens_per_s": per_s["plain"], "ratio": per_s["trainer"] / per_s["plain"],
        "trainer_runs": runs["trainer"], "plain_runs": runs["plain"]})


def compare(cfg: RunConfig, where: str, steps: int, warmup: int) -> dict:
    """One run under the launcher: trainer, HF Trainer, plain DDP, in that order, same settings."""
    p, tokenizer, data, source, tokens_per_step = _setup(cfg, where, steps, warmup)
    bench_dir = Path(cfg.run_dir) / "bench"
    times = {
        "trainer": benchmark.timed_run(p, build_model(p, tokenizer), source(), lm_loss,
                                       bench_dir / "trainer"),
        "hf_trainer": _hf_trainer_loop(p, build_model(p, tokenizer), torch.cat(data.train_blocks),
                                       bench_dir / "hf_trainer"),
        "plain_ddp": _plain_loop(p, build_model(p, tokenizer), source())}
    per_s = {k: benchmark.rate(tokens_per_step, v, warmup) for k, v in times.items()}
    return _report(p, "compare", {
        "tokens_per_step": tokens_per_step, "steps": steps,
        **{f"{k}_tokens_per_s": v for k, v in per_s.items()},
        "trainer_over_hf_trainer": per_s["trainer"] / per_s["hf_trainer"],
        "trainer_over_plain_ddp": per_s["trainer"] / per_s["plain_ddp"]})
