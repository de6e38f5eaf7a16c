"""Checks of a RunConfig that need no model and no data: keys, ranges, paths that must exist (the
enum choices are checked as the loader reads them)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from rtune_ds.config.schema import PRESETS, Init, RunConfig, Schedule, Source, TaskType
from rtune_ds.errors import ConfigError


def _require(cond: bool, where: str, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: key '{key}': {msg}")


def check_writable(path: str, where: str, key: str) -> None:
    """`path`, or the nearest of its parents that exists, must be a directory this user can write."""
    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    _require(existing.is_dir(), where, key, f"cannot create {path}: {existing} is not a directory")
    _require(os.access(existing, os.W_OK | os.X_OK), where, key,
             f"cannot write {path}: {existing} is not writable")


def check_source_paths(sources: list[Source], key: str, where: str) -> None:
    for i, src in enumerate(sources):
        _require(Path(src.path).exists(), where, f"{key}[{i}]", f"data file not found: {src.path}")
        _require(src.weight > 0, where, f"{key}[{i}].weight", f"must be > 0, got {src.weight}")


def validate(cfg: RunConfig, where: str, command: str = "pretrain") -> None:
    """Checks that need no model and no data loading: keys, ranges, paths that must exist.
    `finetune` checks the task and tuning sections instead of the data section."""
    m = cfg.model
    _require(bool(cfg.run_dir), where, "run_dir", "is required")
    check_writable(cfg.run_dir, where, "run_dir")
    if command == "finetune":
        _require(m.path is not None and m.preset is None, where, "model.path",
                 "fine-tuning needs a base model directory (model.path), not a preset")
    _require((m.preset is None) != (m.path is None), where, "model.preset",
             "set exactly one of model.preset and model.path")
    if m.path is not None:
        _require(Path(m.path, "config.json").is_file(), where, "model.path",
                 f"not a Hugging Face model directory (no config.json): {m.path}")
        if m.architecture is not None:
            found = json.loads(Path(m.path, "config.json").read_text()).get("model_type")
            _require(found == m.architecture, where, "model.architecture",
                     f"'{m.architecture}', but the base model at {m.path} is a '{found}' model")
    if m.preset is not None:
        _require(m.preset in PRESETS, where, "model.preset",
                 f"unknown preset '{m.preset}' (known: {', '.join(PRESETS)})")
    if m.tokenizer is not None:
        _require(Path(m.tokenizer).is_dir(), where, "model.tokenizer",
                 f"tokenizer directory not found: {m.tokenizer}")
    _require(0 < m.mlm_probability < 1, where, "model.mlm_probability", "must be in (0, 1)")
    if m.head_warmup_steps is not None:
        _require(m.head_warmup_steps >= 0, where, "model.head_warmup_steps",
                 f"must be >= 0, got {m.head_warmup_steps}")
        _require(m.preset is None or m.head_warmup_steps == 0, where, "model.head_warmup_steps",
                 "a preset is built from scratch (every parameter is new, none to protect); "
                 "set 0 or leave it out")
    if m.head_warmup_lr is not None:
        _require(m.head_warmup_lr > 0, where, "model.head_warmup_lr",
                 f"must be > 0, got {m.head_warmup_lr}")
    if m.init == Init.RANDOM:
        _require(command == "pretrain" and m.path is not None, where, "model.init",
                 "'random' draws model.path's architecture afresh in `rtune pretrain` (a preset "
                 "is random already)")
        _require(not m.head_warmup_steps, where, "model.head_warmup_steps",
                 "every weight of a model.init 'random' model is new: nothing to protect")
    if command == "finetune":
        validate_task(cfg, where)
        validate_distill(cfg, where)
    else:
        validate_data(cfg, where)
    validate_train(cfg, where, command)


def validate_data(cfg: RunConfig, where: str) -> None:
    d, t = cfg.data, cfg.train
    _require(len(d.train) > 0, where, "data.train", "needs at least one source")
    check_source_paths(d.train, "data.train", where)
    check_source_paths(d.eval, "data.eval", where)
    _require(d.seq_len >= 8, where, "data.seq_len", f"must be >= 8, got {d.seq_len}")
    _require(0 <= d.eval_fraction < 1, where, "data.eval_fraction", "must be in [0, 1)")
    _require(bool(d.eval) or d.eval_fraction > 0, where, "data.eval",
             "give eval files or a data.eval_fraction > 0")
    if d.switch is not None:
        _require(len(d.switch.train) > 0, where, "data.switch.train", "needs at least one source")
        check_source_paths(d.switch.train, "data.switch.train", where)
        _require(d.switch.at_step is None or d.switch.lr_fraction is None, where,
                 "data.switch.at_step", "set only one of data.switch.at_step and lr_fraction")
        _require(t.schedule == Schedule.RECIPE or d.switch.at_step is not None
                 or d.switch.lr_fraction is not None, where, "data.switch.at_step",
                 "set data.switch.at_step or data.switch.lr_fraction (only the recipe "
                 "schedule has a default: lr_fraction 0.2)")
        if d.switch.lr_fraction is not None:
            _require(0 < d.switch.lr_fraction < 1, where, "data.switch.lr_fraction",
                     "must be in (0, 1)")


def validate_task(cfg: RunConfig, where: str) -> None:
    k, u = cfg.task, cfg.tuning
    _require(k.train is not None or cfg.distill.unlabeled is not None, where, "task.train",
             "is required (a jsonl/csv/parquet file), or distill.unlabeled for label-free "
             "recycling")
    _require(k.dev is not None or cfg.distill.unlabeled is not None, where, "task.dev",
             "is required (a jsonl/csv/parquet file), or distill.unlabeled for label-free "
             "recycling")
    for key in ("train", "dev", "test"):
        path = getattr(k, key)
        if path is not None:
            _require(Path(path).is_file(), where, f"task.{key}", f"data file not found: {path}")
    if k.labels is not None:
        _require(len(k.labels) >= 2 and len(set(k.labels)) == len(k.labels), where,
                 "task.labels", "needs at least two distinct labels")
    if k.few_shot is not None:
        _require(k.few_shot > 0, where, "task.few_shot", "must be > 0 (examples per class)")
        _require(k.type == TaskType.CLASSIFICATION, where, "task.few_shot",
                 "few-shot sampling needs classes (task.type classification)")
    _require(k.max_len >= 4, where, "task.max_len", f"must be >= 4, got {k.max_len}")
    _require(k.max_new_tokens > 0, where, "task.max_new_tokens", "must be > 0")
    _require(u.lora.r > 0 and u.lora.alpha > 0, where, "tuning.lora.r", "r and alpha must be > 0")
    _require(0 <= u.lora.dropout < 1, where, "tuning.lora.dropout", "must be in [0, 1)")
    if u.ia3.feedforward_modules is not None:
        _require(u.ia3.target_modules is not None
                 and set(u.ia3.feedforward_modules) <= set(u.ia3.target_modules), where,
                 "tuning.ia3.feedforward_modules", "must be a subset of tuning.ia3.target_modules")


def require_dev(cfg: RunConfig, where: str) -> None:
    """For the analyses that score the labeled dev set, which a label-free job may not have."""
    _require(cfg.task.dev is not None, where, "task.dev",
             "this analysis scores the labeled dev set, and the job has none (label-free: "
             "distill.unlabeled); name one with task.dev=FILE")


def validate_distill(cfg: RunConfig, where: str) -> None:
    d = cfg.distill
    _require(0 <= d.alpha <= 1, where, "distill.alpha", f"must be in [0, 1], got {d.alpha}")
    _require(d.temperature > 0, where, "distill.temperature", f"must be > 0, got {d.temperature}")
    _require(d.beta >= 0, where, "distill.beta", f"must be >= 0, got {d.beta}")
    _require(d.top_k is None or d.top_k >= 1, where, "distill.top_k",
             f"must be >= 1, got {d.top_k}")
    if d.hidden_layers is not None:
        _require(len(d.hidden_layers) > 0 and all(i >= 0 for i in d.hidden_layers), where,
                 "distill.hidden_layers", "a non-empty list of hidden_states indices (>= 0)")
    if d.teacher_deepspeed is not None:
        _require(Path(d.teacher_deepspeed).is_file(), where, "distill.teacher_deepspeed",
                 f"DeepSpeed JSON not found: {d.teacher_deepspeed}")
    if d.unlabeled is not None:
        _require(Path(d.unlabeled).is_file(), where, "distill.unlabeled",
                 f"file of unlabeled inputs not found: {d.unlabeled}")
    if d.teacher_cache_dir is not None:
        _require(not Path(d.teacher_cache_dir).exists() or Path(d.teacher_cache_dir).is_dir(),
                 where, "distill.teacher_cache_dir", f"not a directory: {d.teacher_cache_dir}")


def validate_train(cfg: RunConfig, where: str, command: str = "pretrain") -> None:
    t = cfg.train
    _require(t.max_steps > 0, where, "train.max_steps", "must be > 0")
    _require(t.micro_batch_size > 0, where, "train.micro_batch_size", "must be > 0")
    _require(t.grad_accum > 0, where, "train.grad_accum", "must be > 0")
    if t.schedule != Schedule.RECIPE:
        _require(t.lr is not None and t.lr > 0, where, "train.lr", "must be > 0")
    _require(0 <= t.min_lr_ratio <= 1, where, "train.min_lr_ratio", "must be in [0, 1]")
    _require(0 <= t.warmup_steps < t.max_steps, where, "train.warmup_steps",
             "must be in [0, train.max_steps)")
    _require(len(t.betas) == 2, where, "train.betas", "needs two values")
    _require(t.eval_every >= 0 and t.save_every >= 0 and t.log_every > 0, where,
             "train.eval_every", "eval_every/save_every >= 0 and log_every > 0")
    if t.stop_after is not None:
        _require(t.stop_after > 0, where, "train.stop_after", "must be > 0")
    if t.patience is not None:
        _require(command == "finetune", where, "train.patience",
                 "early stopping watches the best dev metric (task.best_metric) of fine-tuning "
                 "and recycling; pretraining keeps no best state: leave it out")
        _require(t.patience >= 1, where, "train.patience", f"must be >= 1, got {t.patience}")
        _require(t.eval_every > 0, where, "train.patience",
                 "needs train.eval_every > 0: it counts dev evals without improvement")
    for i, fraction in enumerate(t.export_fractions):
        _require(0 < fraction < 1, where, f"train.export_fractions[{i}]",
                 f"must be in (0, 1), got {fraction}")
    _require(not t.export_fractions or command != "finetune", where, "train.export_fractions",
             "intermediate HF exports are for pretraining; fine-tuning and recycling write "
             "their bundle to final/ only")
    if cfg.deepspeed is not None:
        _require(Path(cfg.deepspeed).is_file(), where, "deepspeed",
                 f"DeepSpeed JSON not found: {cfg.deepspeed}")


def resolve_batch(cfg: RunConfig, world_size: int, where: str) -> tuple[int, int]:
    """(grad_accum, global batch) for this world size; train.global_batch_size must divide."""
    t = cfg.train
    if t.global_batch_size is None:
        return t.grad_accum, t.micro_batch_size * t.grad_accum * world_size
    per_step = t.micro_batch_size * world_size
    _require(t.global_batch_size % per_step == 0, where, "train.global_batch_size",
             f"{t.global_batch_size} is not divisible by train.micro_batch_size "
             f"{t.micro_batch_size} x world size {world_size}")
    return t.global_batch_size // per_step, t.global_batch_size

