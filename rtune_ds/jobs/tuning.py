"""The stages of a task-tuning job (fine-tuning, and recycling's tuning methods): the plan, the task
data, the task model, the one loop with best-dev tracking, scoring and the bundle."""
from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

import torch

from rtune_ds import dist
from rtune_ds.artifacts.bundle import save_bundle
from rtune_ds.artifacts.checkpoint import resume_tag_of
from rtune_ds.artifacts.lineage import lineage_record
from rtune_ds.artifacts.run_dir import hold_run_dir
from rtune_ds.config.checks import resolve_batch
from rtune_ds.config.ds_config import read_ds_config, resolve_ds_config
from rtune_ds.config.schema import RunConfig
from rtune_ds.data.corpus import content_hash
from rtune_ds.data.examples import ExampleSource, TaskData, load_task
from rtune_ds.data.tokenizer import load_tokenizer, pad_record
from rtune_ds.errors import ConfigError
from rtune_ds.io import save_json
from rtune_ds.models.adapters import resolve_peft_targets, wrap_peft
from rtune_ds.models.hf_config import (
    check_positions,
    check_task_architecture,
    hidden_size_of,
)
from rtune_ds.models.loader import load_task_model, module_names_of
from rtune_ds.models.zero import weights_digest
from rtune_ds.train import engine
from rtune_ds.train.evaluate import (
    classification_scores,
    evaluate_classification,
    evaluate_sft,
    predict_classification,
)
from rtune_ds.train.objectives import classification_loss, lm_loss
from rtune_ds.train.schedules import Schedule, make_schedule

DEFAULT_BEST = {"classification": "eval/accuracy", "lm": "eval/loss"}
PREDICTIONS = "test_predictions.json"  # in the run dir


@dataclass
class Plan:
    """Everything decided before any compute."""
    cfg: RunConfig
    where: str
    schedule: Schedule
    ds_config: dict
    precision: str
    precision_why: str
    grad_accum: int
    resume_tag: str | None
    model_type: str
    targets: dict  # resolved PEFT target modules ({} for full fine-tuning)
    best_metric: str | None  # None: the last weights are kept (label-free recycling)
    best_mode: str


def plan(cfg: RunConfig, where: str, resume: str | None) -> Plan:
    world = dist.world_size()
    grad_accum, _ = resolve_batch(cfg, world, where)
    ds_in, ds_where = read_ds_config(cfg.deepspeed)
    task = cfg.task
    model_type = check_task_architecture(cfg.model.path, task.type, where)
    check_positions(cfg.model.path, task.max_len, "task.max_len", "per example", where)
    targets = resolve_peft_targets(cfg.tuning, model_type,
                                   module_names_of(cfg.model.path, task.type), where)
    schedule = make_schedule(cfg, where)
    ds_config, precision, precision_why = resolve_ds_config(
        ds_in, ds_where, cfg, world, grad_accum, schedule.peak_lr, hidden_size_of(cfg.model.path))
    # label-free: no labels choose the weights kept; the run keeps its last ones
    best = None if cfg.distill.unlabeled else task.best_metric or DEFAULT_BEST[task.type]
    mode = "min" if best and "loss" in best else "max"
    hold_run_dir(cfg.run_dir, where)
    return Plan(cfg, where, schedule, ds_config, precision, precision_why, grad_accum,
                resume_tag_of(Path(cfg.run_dir), resume), model_type, targets, best, mode)


def load_inputs(p: Plan):
    """(tokenizer, TaskData): rank 0 reads first (it fills the datasets cache)."""
    def load():
        tok = load_tokenizer(p.cfg.model.tokenizer or p.cfg.model.path)
        return tok, load_task(p.cfg.task, tok, p.cfg.seed, p.where, p.cfg.distill.unlabeled)

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
        return lambda module: evaluate_classification(module, examples, micro,
                                                      len(data.label_names))
    return lambda module: evaluate_sft(module, examples, micro, p.cfg.task.max_new_tokens,
                                      tokenizer.pad_token_id)


def train(p: Plan, model, tokenizer, data: TaskData, loss=None) -> engine.TrainResult:
    """The one loop from the model's current state, evaluating on dev (when the task has one) and
    keeping the best dev weights. `loss`: the task's own loss unless another objective is given."""
    cfg = p.cfg
    loss = loss or (classification_loss if cfg.task.type == "classification" else lm_loss)
    t, examples = cfg.train, data.splits["train"]
    spec = engine.LoopSpec(
        run_dir=Path(cfg.run_dir), ds_config=p.ds_config, schedule=p.schedule,
        max_steps=t.max_steps, micro_batch=t.micro_batch_size, grad_accum=p.grad_accum,
        # real (non-pad) tokens: exact over whole epochs, which visit every example once; the
        # source logs each step's own count as data/real_tokens
        tokens_per_sample=examples.lengths.double().mean().item(), stop_after=t.stop_after,
        eval_every=t.eval_every, save_every=t.save_every, log_every=t.log_every,
        resume_tag=p.resume_tag, best_metric=p.best_metric, best_mode=p.best_mode,
        nonfinite=t.nonfinite, patience=t.patience)
    # dropout draws follow the job's seed, not what ran before it in this process (the demo and
    # recycle-all --then tune run many jobs in one launch); a resume restores the checkpoint's
    torch.manual_seed(cfg.seed)
    evaluate = evaluator(p, data, tokenizer, "dev") if "dev" in data.splits else None
    return engine.train(model, spec, ExampleSource(examples, cfg.seed), loss, evaluate)


def score(p: Plan, module, data: TaskData, tokenizer) -> dict:
    """Dev and test metrics of `module` as it is (the splits the task has: a label-free run may
    have neither), with the dev majority baseline for classifiers; a classifier's test
    predictions, one per example, go to run_dir/test_predictions.json."""
    module.eval()
    metrics = {}
    if "dev" in data.splits:
        metrics["dev"] = evaluator(p, data, tokenizer, "dev")(module)
    if "test" in data.splits and data.type == "classification":
        metrics["test"] = test_with_predictions(p, module, data)
    elif "test" in data.splits:
        metrics["test"] = evaluator(p, data, tokenizer, "test")(module)
    if data.type == "classification" and "dev" in data.splits:
        metrics["dev_majority_baseline"] = data.majority_baseline("dev")
    return metrics


def test_with_predictions(p: Plan, module, data: TaskData) -> dict:
    """Test metrics of a classifier, its predictions written for paired tests: the test file (path
    and sha256), the label names, and each example's gold and predicted class in file order."""
    test, labels = data.splits["test"], data.label_names
    predicted, loss_sum = predict_classification(module, test, p.cfg.train.micro_batch_size,
                                                 len(labels))
    if dist.is_main():
        save_json({"file": str(Path(data.files["test"]).resolve()),
                   "sha256": content_hash(data.files["test"]), "labels": labels,
                   "gold": test.labels.tolist(), "predicted": predicted.tolist()},
                  Path(p.cfg.run_dir) / PREDICTIONS)
    return classification_scores(predicted, test.labels, loss_sum, len(labels))


def finish(p: Plan, result: engine.TrainResult, tokenizer, data: TaskData, head: list[str],
           command: str, extra_lineage: dict | None = None) -> None:
    """Score the best weights on dev (and test), then write the bundle to run_dir/final (its
    lineage.json gets `extra_lineage` as extra keys) and the run's summary.json."""
    cfg, run_dir = p.cfg, Path(p.cfg.run_dir)
    metrics = {"best_step": result.best_step, **score(p, result.engine.module, data, tokenizer)}
    lineage = lineage_record(
        command, cfg.to_dict(), cfg.model.path, data.describe(), result.step, result.tokens,
        {"kind": "bundle", "method": cfg.tuning.method, "precision": p.precision,
         "precision_why": p.precision_why,
         "labels": data.label_names, "pad": pad_record(tokenizer), "metrics": metrics,
         **(extra_lineage or {})})
    save_bundle(result.engine, run_dir / "final", method=cfg.tuning.method,
                task_type=cfg.task.type, base_dir=cfg.model.path, label_names=data.label_names,
                pad_token_id=tokenizer.pad_token_id, head_names=head, targets=p.targets,
                metrics=metrics, lineage=lineage,
                tuning={"method": cfg.tuning.method, **({"lora": vars(cfg.tuning.lora)}
                                                        if cfg.tuning.method == "lora" else {})})
    digests = dist.all_gather_object(weights_digest(result.engine))
    peak_rss_mb = dist.all_gather_object(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if dist.is_main():
        save_json({"step": result.step, "tokens": result.tokens, "world_size": dist.world_size(),
                   "zero_stage": p.ds_config["zero_optimization"]["stage"],
                   "precision": p.precision, "precision_why": p.precision_why,
                   "best_step": result.best_step,
                   "early_stopped": result.early_stopped, "patience": cfg.train.patience,
                   "best_eval": result.best_eval, "final_eval": result.last_eval,
                   "metrics": metrics, "sizes": data.sizes,
                   "median_step_time_s": result.median_step_time,
                   "rank_weight_digests": digests, "peak_rss_mb_per_rank": peak_rss_mb},
                  run_dir / "summary.json")

