"""rtune bench throughput: tokens/s of the trainer against a plain PyTorch loop on the same model,
data, batch and precision, in one process (1 rank). Prints JSON.

The plain loop is what a user would write without DeepSpeed: AdamW, gradient clipping, the same LR
schedule, and `torch.autocast(bfloat16)` for bf16. Timing covers whole optimizer steps (batch
building included) after `warmup` steps; each side runs `repeats` times, interleaved, and the
median is reported. The JSON is printed and written to run_dir/bench/throughput.json.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LambdaLR

from rtune_ds import dist
from rtune_ds.config import ConfigError, RunConfig
from rtune_ds.data.blend import Blend
from rtune_ds.recipes.pretrain import build_model, load_inputs, plan
from rtune_ds.train import engine
from rtune_ds.train.objectives import lm_loss, make_objective


def _plain_loop(p, model, source: Blend, steps: int, warmup: int) -> list[float]:
    t, s = p.cfg.train, p.schedule
    opt = torch.optim.AdamW(model.parameters(), lr=s.peak_lr, betas=tuple(t.betas), eps=t.eps,
                            weight_decay=t.weight_decay)
    sched = LambdaLR(opt, lambda i: s.lr(i) / s.peak_lr)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if p.precision == "bf16"
                else contextlib.nullcontext())
    micro, batch = t.micro_batch_size, t.micro_batch_size * p.grad_accum
    times = []
    model.train()
    for step in range(warmup + steps):
        started = time.perf_counter()
        rows = source.global_batch(step, batch)
        for m in range(p.grad_accum):
            inputs = source.make_inputs(rows[m * micro:(m + 1) * micro],
                                        list(range(step * batch + m * micro, step * batch + (m + 1) * micro)))
            with autocast:
                loss = lm_loss(model, inputs) / p.grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the trainer reads its loss every step too
        times.append(time.perf_counter() - started)
    return times[warmup:]


def throughput(cfg: RunConfig, where: str, steps: int, warmup: int, repeats: int) -> dict:
    if dist.world_size() != 1:
        raise ConfigError("rtune bench throughput runs on 1 rank; launch it without the launcher")
    torch.set_num_threads(2)
    cfg = replace(cfg, train=replace(cfg.train, max_steps=warmup + steps, eval_every=0,
                                     save_every=0, stop_after=None))
    p = plan(cfg, where, resume=None)
    dist.init()
    tokenizer, data = load_inputs(p)
    objective = make_objective(p.objective, tokenizer, cfg.seed, cfg.model.mlm_probability)
    tokens_per_step = cfg.train.micro_batch_size * p.grad_accum * cfg.data.seq_len

    def blend() -> Blend:
        return Blend(data.names, data.train_blocks, data.phases, p.switch_step, cfg.seed,
                     collate=objective.batch)

    plain, trainer = [], []
    bench_dir = Path(cfg.run_dir) / "bench"
    for r in range(repeats):
        times = _plain_loop(p, build_model(p, tokenizer), blend(), steps, warmup)
        plain.append(tokens_per_step / statistics.median(times))
        run_dir = bench_dir / f"trainer_{r}"
        shutil.rmtree(run_dir, ignore_errors=True)
        spec = engine.LoopSpec(run_dir=run_dir, ds_config=p.ds_config, schedule=p.schedule,
                               max_steps=warmup + steps, micro_batch=cfg.train.micro_batch_size,
                               grad_accum=p.grad_accum, tokens_per_sample=cfg.data.seq_len,
                               log_every=cfg.train.log_every, save_checkpoints=False)
        result = engine.train(build_model(p, tokenizer), spec, blend(), lm_loss)
        trainer.append(tokens_per_step / statistics.median(result.step_times[warmup:]))
    report = {
        "model": cfg.model.preset or cfg.model.path, "precision": p.precision,
        "zero_stage": p.ds_config["zero_optimization"]["stage"], "threads": 2,
        "seq_len": cfg.data.seq_len, "tokens_per_step": tokens_per_step, "steps": steps,
        "repeats": repeats,
        "trainer_tokens_per_s": statistics.median(trainer),
        "plain_pytorch_tokens_per_s": statistics.median(plain),
        "ratio": statistics.median(trainer) / statistics.median(plain),
        "trainer_runs": trainer, "plain_runs": plain,
    }
    text = json.dumps(report, indent=2)
    (bench_dir / "throughput.json").write_text(text + "\n")  # DeepSpeed also logs to stdout
    print(text)
    return report
