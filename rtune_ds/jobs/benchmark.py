"""What the benchmarks share: the 1-rank guard and its threads, a config set up for timing, the
timed run of the real loop, two sides interleaved ABBA with their medians, and the JSON report
(printed, and written beside the run, since DeepSpeed logs to stdout too)."""
from __future__ import annotations

import json
import shutil
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from rtune_ds import dist
from rtune_ds.config.schema import PRESETS, RunConfig
from rtune_ds.data.blend import Blend
from rtune_ds.errors import ConfigError
from rtune_ds.io import save_json
from rtune_ds.jobs import pretraining
from rtune_ds.train import engine
from rtune_ds.train.objectives import make_objective

THREADS = 2  # the 1-rank benches: both sides get the same threads, and a laptop stays usable


def one_rank(command: str, steps: int, warmup: int, repeats: int) -> None:
    """Refuse a launch under the launcher or counts that time nothing; fix the threads."""
    if dist.world_size() != 1:
        raise ConfigError(f"rtune bench {command} runs on 1 rank; launch it without the launcher")
    if min(steps, repeats) < 1 or warmup < 0:
        raise ConfigError(f"rtune bench {command}: --steps and --repeats must be >= 1 and --warmup "
                          f">= 0 (got {steps}, {repeats}, {warmup})")
    torch.set_num_threads(THREADS)


def check_llama_preset(preset: str) -> None:
    if preset not in PRESETS or PRESETS[preset][0] != "llama":
        raise ConfigError(f"--preset {preset}: one of "
                          f"{', '.join(k for k, v in PRESETS.items() if v[0] == 'llama')}")


def timing_config(cfg: RunConfig, steps: int, warmup: int) -> RunConfig:
    """`cfg` for a timed run: warmup + steps steps, and no evaluation, checkpoint or stop."""
    return replace(cfg, train=replace(cfg.train, max_steps=warmup + steps, eval_every=0,
                                      save_every=0, stop_after=None))


def lm_inputs(p: pretraining.Plan) -> tuple:
    """(tokenizer, data, source) of a pretraining plan; source() makes a fresh Blend, so every run
    sees the same batches."""
    dist.init()
    cfg = p.cfg
    tokenizer, data = pretraining.load_inputs(p)
    objective = make_objective(p.objective, tokenizer, cfg.seed, cfg.model.mlm_probability)

    def source() -> Blend:
        return Blend(data.names, data.train_blocks, data.phases, p.switch_step, cfg.seed,
                     collate=objective.batch)

    return tokenizer, data, source


def lm_tokens_per_step(p: pretraining.Plan) -> int:
    t = p.cfg.train
    return t.micro_batch_size * p.grad_accum * dist.world_size() * p.cfg.data.seq_len


def timed_run(p, model, source, loss_fn, run_dir: Path,
              tokens_per_sample: float | None = None) -> list[float]:
    """Step times of the real loop over the plan's max_steps (see timing_config), in a fresh
    run_dir with no checkpoints."""
    cfg = p.cfg
    shutil.rmtree(run_dir, ignore_errors=True)
    spec = engine.LoopSpec(run_dir=run_dir, ds_config=p.ds_config, schedule=p.schedule,
                           max_steps=cfg.train.max_steps, micro_batch=cfg.train.micro_batch_size,
                           grad_accum=p.grad_accum,
                           tokens_per_sample=tokens_per_sample or cfg.data.seq_len,
                           log_every=cfg.train.log_every, save_checkpoints=False)
    result = engine.train(model, spec, source, loss_fn)
    result.engine.destroy()  # ZeRO-3's hooks and the optimizer state go before the next run
    return result.step_times


def rate(amount: float, step_times: list[float], warmup: int) -> float:
    """`amount` per second of a median step after `warmup` steps."""
    return amount / statistics.median(step_times[warmup:])


def interleaved(sides: Sequence[str], repeats: int,
                measure: Callable[[str, int], float]) -> dict[str, list[float]]:
    """{side: measure(side, repeat) per repeat}, run in ABBA order (A B, B A, A B, ...): neither
    side always goes first, so a drift of the machine weighs on both."""
    runs: dict[str, list[float]] = {side: [] for side in sides}
    for r in range(repeats):
        for side in sides if r % 2 == 0 else sides[::-1]:
            runs[side].append(measure(side, r))
    return runs


def medians(runs: dict[str, list[float]]) -> dict[str, float]:
    return {side: statistics.median(values) for side, values in runs.items()}


def header(command: str, p) -> dict:
    """The first keys of a report on a run config: what ran and how."""
    cfg = p.cfg
    return {"bench": command, "model": cfg.model.preset or cfg.model.path,
            "precision": p.precision, "precision_why": p.precision_why, "zero_stage": p.ds_config["zero_optimization"]["stage"],
            "world_size": dist.world_size()}


def new_out(out: str, *dirs: Path) -> None:
    """Refuse an --out whose run dirs exist: a benchmark never mixes its runs with older ones."""
    for d in dirs:
        if d.exists():
            raise ConfigError(f"--out {out}: {d} exists; choose a new --out")


def publish(report: dict, path: Path) -> dict:
    """Rank 0 writes the report to `path` and prints it."""
    if dist.is_main():
        save_json(report, path)
        print(json.dumps(report, indent=2))
    return report
