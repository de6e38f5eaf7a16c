"""Fine-tuning a base version for a task, as a protocol:

1. check everything that needs no compute: config, DeepSpeed JSON, batch sizes, resume target, the
   base's architecture against the config and the task, the PEFT target modules (on a meta model);
2. start the ranks; read, check (columns, label set) and tokenise the task data;
3. record the resolved configs; load the base as a task model (new head from the seed), wrap it
   with PEFT if asked;
4. run the one training loop, evaluating on dev every train.eval_every steps and at step 0; keep
   the best dev weights and reload them at the end;
5. score dev and test with the best weights; write the adapted-weights bundle to run_dir/final.
"""
from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

from rtune_ds import checkpoint, dist
from rtune_ds.config import ConfigError, RunConfig, resolve_batch, save_json
from rtune_ds.data.examples import ExampleSource, TaskData, load_task
from rtune_ds.data.tokenizer import load_tokenizer
from rtune_ds.ds_config import read_ds_config, resolve_ds_config
from rtune_ds.models import (check_task_architecture, hidden_size_of, load_task_model,
                             module_names_of, resolve_peft_targets, wrap_peft)
from rtune_ds.recipes.pretrain import make_schedule, resume_tag_of, write_run_files
from rtune_ds.recycle.bundle import save_bundle
from rtune_ds.train import engine
from rtune_ds.train.evaluate import evaluate_classification, evaluate_sft
from rtune_ds.train.objectives import classification_loss, lm_loss
from rtune_ds.train.schedules import Schedule

DEFAULT_BEST = {"classification": "eval/accuracy", "lm": "eval/loss"}


@dataclass
class Plan:
    """Everything decided before any compute."""
    cfg: RunConfig
    where: str
    schedule: Schedule
    ds_config: dict
    precision: str
    grad_accum: int
    resume_tag: str | None
    model_type: str
    targets: dict  # resolved PEFT target modules ({} for full fine-tuning)
    best_metric: str
    best_mode: str


def plan(cfg: RunConfig, where: str, resume: str | None) -> Plan:
    world = dist.world_size()
    grad_accum, _ = resolve_batch(cfg, world, where)
    ds_in, ds_where = read_ds_config(cfg.deepspeed)
    task = cfg.task
    model_type = check_task_architecture(cfg.model.path, task.type, where)
    targets = resolve_peft_targets(cfg.tuning, model_type,
                                   module_names_of(cfg.model.path, task.type), where)
    schedule = make_schedule(cfg, where)
    ds_config, precision = resolve_ds_config(ds_in, ds_where, cfg, world, grad_accum,
                                             schedule.peak_lr, hidden_size_of(cfg.model.path))
    best = task.best_metric or DEFAULT_BEST[task.type]
    mode = "min" if "loss" in best else "max"
    return Plan(cfg, where, schedule, ds_config, precision, grad_accum,
                resume_tag_of(Path(cfg.run_dir), resume), model_type, targets, best, mode)


def load_inputs(p: Plan):
    """(tokenizer, TaskData): rank 0 reads first (it fills the datasets cache)."""
    def load():
        tok = load_tokenizer(p.cfg.model.tokenizer or p.cfg.model.path)
        return tok, load_task(p.cfg.task, tok, p.cfg.seed, p.where)

    return dist.main_first(load)


def build_model(p: Plan, tokenizer, data: TaskData):
    cfg = p.cfg
    model, head = load_task_model(cfg.model.path, cfg.task.type, data.label_names,
                                  tokenizer.pad_token_id, p.ds_config, cfg.seed,
                                  cfg.model.trust_remote_code)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ConfigError(f"{p.where}: key 'model.tokenizer': {len(tokenizer)} tokens but the "
                          f"model at {cfg.model.path} embeds fewer")
    if cfg.tuning.method != "full":
        model = wrap_peft(model, cfg.tuning.method, cfg.task.type, p.targets, cfg.tuning, cfg.seed)
    return model, head


def evaluator(p: Plan, data: TaskData, tokenizer, split: str):
    examples, micro = data.splits[split], p.cfg.train.micro_batch_size
    if p.cfg.task.type == "classification":
        return lambda module: evaluate_classification(module, examples, micro, len(data.label_names))
    return lambda module: evaluate_sft(module, examples, micro, p.cfg.task.max_new_tokens,
                                      tokenizer.pad_token_id)


def run(cfg: RunConfig, where: str, resume: str | None, command: str) -> engine.TrainResult:
    p = plan(cfg, where, resume)
    dist.init()
    tokenizer, data = load_inputs(p)
    write_run_files(p)
    model, head = build_model(p, tokenizer, data)
    return tune(p, model, head, tokenizer, data, command)


def tune(p: Plan, model, head: list[str], tokenizer, data: TaskData, command: str,
         lineage: dict | None = None, loss=None) -> engine.TrainResult:
    """Steps 4-5: the one loop from the model's current state, then the bundle (its lineage.json
    gets `lineage` as extra keys). `loss`: the task's own loss unless another objective is given."""
    cfg = p.cfg
    loss = loss or (classification_loss if cfg.task.type == "classification" else lm_loss)
    t = cfg.train
    spec = engine.LoopSpec(
        run_dir=Path(cfg.run_dir), ds_config=p.ds_config, schedule=p.schedule,
        max_steps=t.max_steps, micro_batch=t.micro_batch_size, grad_accum=p.grad_accum,
        tokens_per_sample=data.splits["train"].input_ids.shape[1], stop_after=t.stop_after,
        eval_every=t.eval_every, save_every=t.save_every, log_every=t.log_every,
        resume_tag=p.resume_tag, best_metric=p.best_metric, best_mode=p.best_mode,
        nonfinite=t.nonfinite)
    result = engine.train(model, spec, ExampleSource(data.splits["train"], cfg.seed), loss,
                          evaluator(p, data, tokenizer, "dev"))
    if result.finished:
        finish(p, result, tokenizer, data, head, command, lineage or {})
    return result


def score(p: Plan, module, data: TaskData, tokenizer) -> dict:
    """Dev (and test) metrics of `module` as it is, with the majority baseline for classifiers."""
    module.eval()
    metrics = {"dev": evaluator(p, data, tokenizer, "dev")(module)}
    if "test" in data.splits:
        metrics["test"] = evaluator(p, data, tokenizer, "test")(module)
    if data.type == "classification":
        metrics["dev_majority_baseline"] = data.majority_baseline("dev")
    return metrics


def finish(p: Plan, result: engine.TrainResult, tokenizer, data: TaskData, head: list[str],
           command: str, extra_lineage: dict) -> None:
    """Score the best weights on dev (and test), then write the bundle to run_dir/final."""
    cfg, run_dir = p.cfg, Path(p.cfg.run_dir)
    metrics = {"best_step": result.best_step, **score(p, result.engine.module, data, tokenizer)}
    lineage = checkpoint.lineage_record(
        command, cfg.to_dict(), cfg.model.path, data.describe(), result.step, result.tokens,
        {"kind": "bundle", "method": cfg.tuning.method, "precision": p.precision,
         "labels": data.label_names, "metrics": metrics, **extra_lineage})
    save_bundle(result.engine, run_dir / "final", method=cfg.tuning.method,
                task_type=cfg.task.type, base_dir=cfg.model.path, label_names=data.label_names,
                pad_token_id=tokenizer.pad_token_id, head_names=head, targets=p.targets,
                metrics=metrics, lineage=lineage,
                tuning={"method": cfg.tuning.method, **({"lora": vars(cfg.tuning.lora)}
                                                        if cfg.tuning.method == "lora" else {})})
    digests = dist.all_gather_object(checkpoint.weights_digest(result.engine))
    peak_rss_mb = dist.all_gather_object(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if dist.is_main():
        save_json({"step": result.step, "world_size": dist.world_size(),
                   "zero_stage": p.ds_config["zero_optimization"]["stage"],
                   "precision": p.precision, "best_step": result.best_step,
                   "best_eval": result.best_eval, "final_eval": result.last_eval,
                   "metrics": metrics, "sizes": data.sizes,
                   "median_step_time_s": result.median_step_time,
                   "rank_weight_digests": digests, "peak_rss_mb_per_rank": peak_rss_mb},
                  run_dir / "summary.json")
