"""Pretraining and continual pretraining, as a protocol:

1. check everything that needs no compute (config, DeepSpeed JSON, batch sizes, resume target);
2. start the ranks; get the tokenizer and the packed data (rank 0 fills the caches);
3. record the resolved configs in the run dir; build or load the model (a head the checkpoint
   lacks is initialised from the seed);
4. on a fresh start, warm up such a head alone (the one loop, the rest frozen);
5. run the one training loop; export the model with its lineage when the schedule is done,
   carrying the parent's tensors the trained model does not hold (and the same way at the steps
   of train.export_fractions, to exports/step-<N>/, for evaluations along the run).
"""
from __future__ import annotations

import resource
import sys
from pathlib import Path

from rtune_ds import dist
from rtune_ds.artifacts import checkpoint
from rtune_ds.artifacts.hf_export import export_hf
from rtune_ds.artifacts.lineage import lineage_record
from rtune_ds.artifacts.run_dir import write_run_files
from rtune_ds.config.schema import RunConfig
from rtune_ds.data.blend import Blend
from rtune_ds.data.lm_data import LMData
from rtune_ds.io import save_json
from rtune_ds.jobs import pretraining
from rtune_ds.models.zero import weights_digest
from rtune_ds.train import engine
from rtune_ds.train.evaluate import evaluate_lm
from rtune_ds.train.objectives import lm_loss, make_objective


def run(cfg: RunConfig, where: str, resume: str | None, command: str) -> engine.TrainResult:
    p = pretraining.plan(cfg, where, resume)
    dist.init()
    resume_tag = p.resume_tag
    if p.universal:
        ckpt_dir = Path(cfg.run_dir) / "checkpoints"
        dist.main_first(lambda: checkpoint.convert_to_universal(ckpt_dir, p.resume_tag))
        resume_tag = checkpoint.universal_tag(p.resume_tag)
    tokenizer, data = pretraining.load_inputs(p)
    run_dir = write_run_files(p.cfg, p.ds_config)
    model = pretraining.build_model(p, tokenizer)
    objective = make_objective(p.objective, tokenizer, cfg.seed, cfg.model.mlm_probability)
    source = Blend(data.names, data.train_blocks, data.phases, p.switch_step, cfg.seed,
                   collate=objective.batch)
    t = cfg.train
    spec = engine.LoopSpec(
        run_dir=run_dir, ds_config=p.ds_config, schedule=p.schedule, max_steps=t.max_steps,
        micro_batch=t.micro_batch_size, grad_accum=p.grad_accum,
        tokens_per_sample=cfg.data.seq_len, stop_after=t.stop_after, eval_every=t.eval_every,
        save_every=t.save_every, log_every=t.log_every, resume_tag=resume_tag,
        nonfinite=t.nonfinite, after_step=exporter(p, tokenizer, data, command))
    warmup = pretraining.warm_up_head(p, model, source, run_dir)
    if warmup is not None and warmup.stopped_by_signal:
        if dist.is_main():
            print(f"rtune: stopped by a signal in the head warm-up (step {warmup.step}); nothing "
                  "was saved: a relaunch starts again from the warm-up", file=sys.stderr)
        return warmup
    result = engine.train(model, spec, source, lm_loss,
                          lambda module: evaluate_lm(module, data.eval_sets, objective,
                                                     t.micro_batch_size))
    if result.finished:
        finish(p, result, tokenizer, data, command)
    elif result.stopped_by_signal and dist.is_main():
        print(f"rtune: stopped by a signal at step {result.step}; checkpoint saved, continue with "
              "--resume auto", file=sys.stderr)
    return result


def lineage_at(p: pretraining.Plan, data: LMData, command: str, step: int, tokens: int,
               extra: dict) -> dict:
    """The lineage of the model at `step`: final/'s and each intermediate export's."""
    s = p.schedule
    return lineage_record(
        command, p.cfg.to_dict(), p.cfg.model.path, data.describe(), step, tokens,
        {"objective": p.objective, "precision": p.precision, "precision_why": p.precision_why,
         "schedule": {"kind": p.cfg.train.schedule, "peak_lr": s.peak_lr, "min_lr": s.min_lr,
                      "warmup_steps": s.warmup_steps, "total_steps": s.total_steps,
                      "switch_step": p.switch_step},
         "new_head": pretraining.head_lineage(p, Path(p.cfg.run_dir)), **extra})


def export_steps(fractions: list[float], max_steps: int) -> set[int]:
    """The steps of train.export_fractions: round(f * max_steps), once each, in (0, max_steps)."""
    return {step for step in (round(f * max_steps) for f in fractions) if 0 < step < max_steps}


def exporter(p: pretraining.Plan, tokenizer, data: LMData, command: str):
    """The loop's after_step that writes run_dir/exports/step-<N>/ as final/ is written, once: a
    resume that passes N again (from an earlier checkpoint) keeps the export already there."""
    steps = export_steps(p.cfg.train.export_fractions, p.cfg.train.max_steps)
    if not steps:
        return None

    def after_step(eng, step: int, tokens: int) -> None:
        out = Path(p.cfg.run_dir) / "exports" / f"step-{step}"
        # rank 0's view decides for all: a ZeRO-3 export is collective
        if step in steps and not dist.broadcast_object(out.is_dir()):
            export_hf(eng, tokenizer, out,
                      lineage_at(p, data, command, step, tokens, {"intermediate": True}),
                      pretraining.carry_from(p))

    return after_step


def finish(p: pretraining.Plan, result: engine.TrainResult, tokenizer, data: LMData,
           command: str) -> None:
    """Export final/ with lineage; record every rank's weight digest in summary.json."""
    run_dir = Path(p.cfg.run_dir)
    digests = dist.all_gather_object(weights_digest(result.engine))
    peak_rss_mb = dist.all_gather_object(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    lineage = lineage_at(p, data, command, result.step, result.tokens,
                         {"final_eval": result.last_eval})
    export_hf(result.engine, tokenizer, run_dir / "final", lineage, pretraining.carry_from(p))
    if dist.is_main():
        save_json({"step": result.step, "tokens": result.tokens, "world_size": dist.world_size(),
                   "zero_stage": p.ds_config["zero_optimization"]["stage"],
                   "precision": p.precision, "precision_why": p.precision_why,
                   "final_eval": result.last_eval,
                   "rank_weight_digests": digests, "peak_rss_mb_per_rank": peak_rss_mb,
                   "median_step_time_s": result.median_step_time}, run_dir / "summary.json")

