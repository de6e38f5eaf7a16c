"""Pretraining and continual pretraining, as a protocol:

1. check everything that needs no compute (config, DeepSpeed JSON, batch sizes, resume target);
2. start the ranks; get the tokenizer and the packed data (rank 0 fills the caches);
3. record the resolved configs in the run dir; build or load the model;
4. run the one training loop; export the model with its lineage when the schedule is done.
"""
from __future__ import annotations

import json
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

from rtune_ds import checkpoint, dist
from rtune_ds.config import ConfigError, RunConfig, resolve_batch, save_json, save_yaml
from rtune_ds.data.blend import Blend
from rtune_ds.data.corpus import default_cache_root
from rtune_ds.data.lm_data import LMData, build_lm_data
from rtune_ds.data.tokenizer import resolve_tokenizer, tokenizer_hash
from rtune_ds.ds_config import read_ds_config, resolve_ds_config
from rtune_ds.models import (build_preset, hidden_size_of, load_local, objective_of,
                             preset_hidden_size, preset_objective, preset_vocab_size)
from rtune_ds.train import engine
from rtune_ds.train.evaluate import evaluate_lm
from rtune_ds.train.objectives import lm_loss, make_objective
from rtune_ds.train.schedules import (RECIPE_SWITCH_FRACTION, Schedule, constant,
                                      continual_pretraining_recipe, cosine_with_floor)


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


def parent_min_lr(model_path: str, where: str) -> float:
    lineage = Path(model_path, "lineage.json")
    if lineage.is_file():
        min_lr = json.loads(lineage.read_text()).get("schedule", {}).get("min_lr")
        if min_lr:
            return float(min_lr)
    raise ConfigError(f"{where}: key 'train.lr': schedule 'recipe' starts at the parent's minimum "
                      f"LR, but {lineage} does not record one; give train.lr")


def make_schedule(cfg: RunConfig, where: str) -> Schedule:
    t = cfg.train
    if t.schedule == "recipe":
        if t.lr is None and cfg.model.path is None:
            raise ConfigError(f"{where}: key 'train.lr': schedule 'recipe' needs a parent model "
                              "(model.path) or an explicit train.lr")
        start = t.lr if t.lr is not None else parent_min_lr(cfg.model.path, where)
        return continual_pretraining_recipe(start, t.max_steps)
    if t.schedule == "constant":
        return constant(t.lr, t.max_steps)
    return cosine_with_floor(t.lr, t.min_lr_ratio, t.warmup_steps, t.max_steps)


def switch_step_of(cfg: RunConfig, schedule: Schedule) -> int | None:
    switch = cfg.data.switch
    if switch is None:
        return None
    if switch.at_step is not None:
        return switch.at_step
    return schedule.first_step_at_or_below(switch.lr_fraction or RECIPE_SWITCH_FRACTION)


def resume_tag_of(run_dir: Path, resume: str | None) -> str | None:
    ckpt_dir = run_dir / "checkpoints"
    tag = checkpoint.latest_tag(ckpt_dir)
    if resume is None:
        if tag is not None:
            raise ConfigError(f"{run_dir}: key 'run_dir': already holds checkpoints; pass "
                              "--resume auto to continue it, or choose a new run_dir")
        return None
    if resume == "required" and tag is None:
        raise ConfigError(f"--resume {resume}: no complete checkpoint in {ckpt_dir}")
    return tag


def needs_universal(saved: dict, world: int, stage: int, where: str, tag: str) -> bool:
    """Whether resuming `saved` (a checkpoint's run state) at `world` ranks and ZeRO `stage` goes
    through a universal checkpoint; a stage change DeepSpeed cannot convert is refused.

    ds_to_universal needs ZeRO optimizer files, which stage 0 does not write, and a stage-0 engine
    cannot load a universal checkpoint; the universal optimizer state of stage 3 and of stages 1/2
    differ in layout, and each loader reads only its own."""
    saved_stage = saved["zero_stage"]
    if saved_stage != stage and not {saved_stage, stage} <= {1, 2}:
        raise ConfigError(f"{where}: the checkpoint {tag} was saved under ZeRO stage {saved_stage} "
                          f"and this launch asks for stage {stage}; DeepSpeed can change the stage "
                          f"of a checkpoint only between 1 and 2: resume with a stage-{saved_stage} "
                          "DeepSpeed JSON")
    # a stage-0 checkpoint holds the whole optimizer state, which loads at any world size
    return saved_stage != stage or (saved["world_size"] != world and stage > 0)


def plan(cfg: RunConfig, where: str, resume: str | None) -> Plan:
    world = dist.world_size()
    grad_accum, _ = resolve_batch(cfg, world, where)
    ds_in, ds_where = read_ds_config(cfg.deepspeed)
    m = cfg.model
    objective = m.objective or (preset_objective(m.preset) if m.preset else objective_of(m.path))
    hidden = preset_hidden_size(m.preset) if m.preset else hidden_size_of(m.path)
    schedule = make_schedule(cfg, where)
    ds_config, precision = resolve_ds_config(ds_in, ds_where, cfg, world, grad_accum,
                                             schedule.peak_lr, hidden)
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


def write_run_files(p: Plan) -> Path:
    run_dir = Path(p.cfg.run_dir)
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(p.cfg.to_dict(), run_dir / "config.yaml")
        save_json(p.ds_config, run_dir / "ds_config.json")
    dist.barrier()
    return run_dir


def run(cfg: RunConfig, where: str, resume: str | None, command: str) -> engine.TrainResult:
    p = plan(cfg, where, resume)
    dist.init()
    resume_tag = p.resume_tag
    if p.universal:
        ckpt_dir = Path(cfg.run_dir) / "checkpoints"
        dist.main_first(lambda: checkpoint.convert_to_universal(ckpt_dir, p.resume_tag))
        resume_tag = checkpoint.universal_tag(p.resume_tag)
    tokenizer, data = load_inputs(p)
    run_dir = write_run_files(p)
    model = build_model(p, tokenizer)
    objective = make_objective(p.objective, tokenizer, cfg.seed, cfg.model.mlm_probability)
    source = Blend(data.names, data.train_blocks, data.phases, p.switch_step, cfg.seed,
                   collate=objective.batch)
    t = cfg.train
    spec = engine.LoopSpec(
        run_dir=run_dir, ds_config=p.ds_config, schedule=p.schedule, max_steps=t.max_steps,
        micro_batch=t.micro_batch_size, grad_accum=p.grad_accum,
        tokens_per_sample=cfg.data.seq_len, stop_after=t.stop_after, eval_every=t.eval_every,
        save_every=t.save_every, log_every=t.log_every, resume_tag=resume_tag,
        nonfinite=t.nonfinite)
    result = engine.train(model, spec, source, lm_loss,
                          lambda module: evaluate_lm(module, data.eval_sets, objective,
                                                     t.micro_batch_size))
    if result.finished:
        finish(p, result, tokenizer, data, command)
    elif result.stopped_by_signal and dist.is_main():
        print(f"rtune: stopped by a signal at step {result.step}; checkpoint saved, continue with "
              "--resume auto", file=sys.stderr)
    return result


def finish(p: Plan, result: engine.TrainResult, tokenizer, data: LMData, command: str) -> None:
    """Export final/ with lineage; record every rank's weight digest in summary.json."""
    run_dir = Path(p.cfg.run_dir)
    digests = dist.all_gather_object(checkpoint.weights_digest(result.engine))
    peak_rss_mb = dist.all_gather_object(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    s = p.schedule
    lineage = checkpoint.lineage_record(
        command, p.cfg.to_dict(), p.cfg.model.path, data.describe(), result.step, result.tokens,
        {"objective": p.objective, "precision": p.precision,
         "schedule": {"kind": p.cfg.train.schedule, "peak_lr": s.peak_lr, "min_lr": s.min_lr,
                      "warmup_steps": s.warmup_steps, "total_steps": s.total_steps,
                      "switch_step": p.switch_step},
         "final_eval": result.last_eval})
    checkpoint.export_hf(result.engine, tokenizer, run_dir / "final", lineage)
    if dist.is_main():
        save_json({"step": result.step, "tokens": result.tokens, "world_size": dist.world_size(),
                   "zero_stage": p.ds_config["zero_optimization"]["stage"],
                   "precision": p.precision, "final_eval": result.last_eval,
                   "rank_weight_digests": digests, "peak_rss_mb_per_rank": peak_rss_mb,
                   "median_step_time_s": result.median_step_time}, run_dir / "summary.json")
