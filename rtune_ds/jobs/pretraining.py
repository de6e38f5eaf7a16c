"""The stages of a (continual) pretraining job before its loop: the plan (everything decided before
any compute), the tokenizer and packed data, the model."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rtune_ds import dist
from rtune_ds.artifacts import checkpoint
from rtune_ds.artifacts.checkpoint import needs_universal, resume_tag_of
from rtune_ds.artifacts.run_dir import hold_run_dir
from rtune_ds.config.checks import resolve_batch
from rtune_ds.config.ds_config import read_ds_config, resolve_ds_config
from rtune_ds.config.schema import RunConfig
from rtune_ds.data.corpus import default_cache_root
from rtune_ds.data.lm_data import build_lm_data
from rtune_ds.data.tokenizer import resolve_tokenizer, tokenizer_hash
from rtune_ds.errors import ConfigError
from rtune_ds.models.hf_config import check_positions, hidden_size_of, objective_of
from rtune_ds.models.loader import load_local
from rtune_ds.models.presets import (
    build_preset,
    preset_hidden_size,
    preset_objective,
    preset_vocab_size,
)
from rtune_ds.train.schedules import RECIPE_SWITCH_FRACTION, Schedule, make_schedule


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
    grad_accum: int
    resume_tag: str | None
    universal: bool  # resume through a universal checkpoint (other world size or ZeRO stage)


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
    schedule = make_schedule(cfg, where)
    ds_config, precision = resolve_ds_config(ds_in, ds_where, cfg, world, grad_accum,
                                             schedule.peak_lr, hidden)
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
                precision, grad_accum, tag, universal)


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
    model = load_local(m.path, p.objective, p.ds_config, m.trust_remote_code)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ConfigError(f"{p.where}: key 'model.tokenizer': {len(tokenizer)} tokens but the "
                          f"model at {m.path} embeds only "
                          f"{model.get_input_embeddings().num_embeddings}")
    return model

