"""The stages of a (continual) pretraining job before its loop: the plan (everything decided before
any compute), the tokenizer and packed data, the model, and the warm-up of a head the checkpoint
lacks."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig

from rtune_ds import dist
from rtune_ds.artifacts import checkpoint
from rtune_ds.artifacts.checkpoint import needs_universal, resume_tag_of
from rtune_ds.artifacts.run_dir import hold_run_dir
from rtune_ds.config.checks import resolve_batch
from rtune_ds.config.ds_config import read_ds_config, resolve_ds_config
from rtune_ds.config.schema import Init, RunConfig
from rtune_ds.data.corpus import default_cache_root
from rtune_ds.data.lm_data import build_lm_data
from rtune_ds.data.tokenizer import resolve_tokenizer, tokenizer_hash
from rtune_ds.errors import ConfigError, RunError
from rtune_ds.models.hf_config import check_positions, hidden_size_of, objective_of
from rtune_ds.models.loader import (
    ParentTensors,
    base_auto_class,
    checkpoint_files,
    compare_with_parent,
    init_head,
    load_local,
    meta_base_model,
)
from rtune_ds.models.presets import (
    build_preset,
    preset_hidden_size,
    preset_objective,
    preset_vocab_size,
)
from rtune_ds.train import engine
from rtune_ds.train.monitor import read_metrics
from rtune_ds.train.objectives import lm_loss
from rtune_ds.train.schedules import RECIPE_SWITCH_FRACTION, Schedule, constant, make_schedule

HEAD_WARMUP_FRACTION, HEAD_WARMUP_MAX = 0.1, 100  # of train.max_steps; a head converges quickly


@dataclass
class Plan:
    """Everything decided before any compute."""
    cfg: RunConfig
    where: str
    objective: str
    schedule: Schedule
    switch_step: int | None
    ds_config: dict
    precision: str
    precision_why: str
    grad_accum: int
    resume_tag: str | None
    universal: bool  # resume through a universal checkpoint (other world size or ZeRO stage)
    parent: ParentTensors | None  # model.path's tensors against the model trained from them
    head_warmup_steps: int
    head_warmup_lr: float


def switch_step_of(cfg: RunConfig, schedule: Schedule) -> int | None:
    switch = cfg.data.switch
    if switch is None:
        return None
    if switch.at_step is not None:
        return switch.at_step
    return schedule.first_step_at_or_below(switch.lr_fraction or RECIPE_SWITCH_FRACTION)


def plan(cfg: RunConfig, where: str, resume: str | None) -> Plan:
    world = dist.world_size()
    grad_accum, _ = resolve_batch(cfg, world, where)
    ds_in, ds_where = read_ds_config(cfg.deepspeed)
    m = cfg.model
    objective = m.objective or (preset_objective(m.preset) if m.preset else objective_of(m.path))
    hidden = preset_hidden_size(m.preset) if m.preset else hidden_size_of(m.path)
    if m.path:  # a preset is built with positions for data.seq_len
        check_positions(m.path, cfg.data.seq_len, "data.seq_len", "per block", where)
    # a random init takes nothing from model.path's weights: no head to warm, no tensor to carry
    parent = (compare_with_parent(meta_base_model(m.path, objective, m.trust_remote_code),
                                  checkpoint_files(m.path, where))
              if m.path and m.init == Init.PRETRAINED else None)
    head_warmup_steps = head_warmup_steps_of(cfg, parent, where)
    schedule = make_schedule(cfg, where)
    ds_config, precision, precision_why = resolve_ds_config(ds_in, ds_where, cfg, world,
                                                            grad_accum, schedule.peak_lr, hidden)
    hold_run_dir(cfg.run_dir, where)
    tag = resume_tag_of(Path(cfg.run_dir), resume)
    universal = False
    if tag is not None:
        saved = checkpoint.saved_run_state(Path(cfg.run_dir) / "checkpoints", tag)
        if saved["global_batch"] != ds_config["train_batch_size"]:
            raise ConfigError(
                f"{where}: key 'train.global_batch_size': the checkpoint {tag} was trained with a "
                f"global batch of {saved['global_batch']} (world size {saved['world_size']}); this "
                f"launch has {ds_config['train_batch_size']}: set train.global_batch_size="
                f"{saved['global_batch']}")
        universal = needs_universal(saved, world, ds_config["zero_optimization"].get("stage", 0),
                                    f"{where}: key 'deepspeed' ({ds_where})", tag)
        if universal:
            ds_config.setdefault("checkpoint", {})["load_universal"] = True
    return Plan(cfg, where, objective, schedule, switch_step_of(cfg, schedule), ds_config,
                precision, precision_why, grad_accum, tag, universal, parent, head_warmup_steps,
                m.head_warmup_lr or schedule.peak_lr)


def head_warmup_steps_of(cfg: RunConfig, parent: ParentTensors | None, where: str) -> int:
    """model.head_warmup_steps, or its default: a share of the run when the checkpoint lacks its
    head, else 0; a warm-up with no new head to train is refused."""
    m, new = cfg.model, parent.new if parent else []
    if m.head_warmup_steps is None:
        share = round(HEAD_WARMUP_FRACTION * cfg.train.max_steps)
        return min(HEAD_WARMUP_MAX, max(1, share)) if new else 0
    if m.head_warmup_steps and not new:
        raise ConfigError(f"{where}: key 'model.head_warmup_steps': {m.head_warmup_steps}, but "
                          f"{'the checkpoint at ' + m.path if m.path else 'a preset'} lacks no "
                          "head: nothing to warm up; set 0 or leave it out")
    return m.head_warmup_steps


def load_inputs(p: Plan):
    """(tokenizer, LMData): rank 0 trains/packs into the cache first, then the others read it."""
    cfg = p.cfg
    cache_root = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_root()
    vocab = preset_vocab_size(cfg.model.preset) if cfg.model.preset else 0

    def load():
        tok = resolve_tokenizer(cfg.model.path, cfg.model.tokenizer,
                                [s.path for s in cfg.data.train], cfg.data.text_field, vocab,
                                cache_root)
        data = build_lm_data(cfg.data, tok, tokenizer_hash(tok), cache_root,
                             cfg.train.eval_max_blocks, p.where)
        return tok, data

    return dist.main_first(load)


def build_model(p: Plan, tokenizer):
    m = p.cfg.model
    if m.preset:
        return build_preset(m.preset, tokenizer, p.cfg.data.seq_len, p.cfg.seed)
    if m.init == "random":  # the seed alone draws every weight, the same on every rank
        torch.manual_seed(p.cfg.seed)
        return base_auto_class(p.objective).from_config(
            AutoConfig.from_pretrained(m.path, trust_remote_code=m.trust_remote_code),
            trust_remote_code=m.trust_remote_code)
    model, missing = load_local(m.path, p.objective, p.ds_config, m.trust_remote_code)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ConfigError(f"{p.where}: key 'model.tokenizer': {len(tokenizer)} tokens but the "
                          f"model at {m.path} embeds only "
                          f"{model.get_input_embeddings().num_embeddings}")
    loaded_new = missing & {name for name, _ in model.named_parameters()}
    if loaded_new != set(p.parent.new):  # the plan read the names; the load must agree
        raise RunError(f"{m.path}: transformers initialised {sorted(loaded_new)} afresh, but the "
                       f"checkpoint's names say {sorted(p.parent.new)}")
    # transformers draws a missing head per rank from the global RNG; the seed alone decides it
    init_head(model, p.parent.new, p.cfg.seed)
    return model


def warm_up_head(p: Plan, model, source: engine.BatchSource, run_dir: Path):
    """Train only the head the checkpoint lacked, the rest frozen, at a constant LR, through the
    one loop (its own metrics in run_dir/head_warmup/, no checkpoints): the pretrained weights
    then get no gradient through a random head. A fresh start only: the main run's checkpoints
    hold the warmed head, so a resume goes straight on. The data continues after its batches.
    Returns its TrainResult, or None when there is nothing to warm up."""
    if not p.head_warmup_steps or p.resume_tag:
        return None
    head = set(p.parent.new)
    frozen = [param for name, param in model.named_parameters()
              if name not in head and param.requires_grad]
    for param in frozen:
        param.requires_grad_(False)
    ds_config = copy.deepcopy(p.ds_config)  # the engine's LR is the JSON's times the schedule's
    ds_config["optimizer"]["params"]["lr"] = p.head_warmup_lr
    t = p.cfg.train
    spec = engine.LoopSpec(
        run_dir=run_dir / "head_warmup", ds_config=ds_config,
        schedule=constant(p.head_warmup_lr, p.head_warmup_steps), max_steps=p.head_warmup_steps,
        micro_batch=t.micro_batch_size, grad_accum=p.grad_accum,
        tokens_per_sample=p.cfg.data.seq_len, log_every=t.log_every, save_checkpoints=False,
        nonfinite=t.nonfinite)
    if dist.is_main():
        spec.run_dir.mkdir(exist_ok=True)
    result = engine.train(model, spec, source, lm_loss)
    result.engine.destroy()  # its ZeRO-3 hooks would otherwise run beside the main engine's
    for param in frozen:
        param.requires_grad_(True)
    return result


def head_lineage(p: Plan, run_dir: Path) -> dict | None:
    """What lineage.json says of a head the checkpoint lacked: its tensors, how they were
    initialised, and the warm-up (its loss from head_warmup/metrics.jsonl, kept across resumes)."""
    if p.parent is None or not p.parent.new:
        return None
    log = run_dir / "head_warmup" / "metrics.jsonl"
    losses = [m["train/loss"] for m in read_metrics(log) if "train/loss" in m] \
        if log.is_file() else []
    return {"initialised": p.parent.new,
            "init": f"seed {p.cfg.seed}: weights N(0, initializer_range), norm scales 1, biases 0",
            "warmup_steps": p.head_warmup_steps, "warmup_lr": p.head_warmup_lr,
            "warmup_tokens": p.head_warmup_steps * p.ds_config["train_batch_size"]
            * p.cfg.data.seq_len,
            "warmup_loss": {"first": losses[0], "last": losses[-1]} if losses else None}


def carry_from(p: Plan) -> str | None:
    """The parent whose tensors the trained class does not hold go into the exports: model.path,
    unless the model was drawn at random (model.init), which holds nothing of the parent's."""
    return p.cfg.model.path if p.parent is not None else None
