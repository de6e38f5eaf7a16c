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

from rtune_ds import dist
from rtune_ds.artifacts.run_dir import write_run_files
from rtune_ds.config.schema import RunConfig
from rtune_ds.errors import ConfigError
from rtune_ds.jobs import tuning
from rtune_ds.train import engine


def run(cfg: RunConfig, where: str, resume: str | None, command: str) -> engine.TrainResult:
    if cfg.distill.unlabeled:
        raise ConfigError(f"{where}: key 'distill.unlabeled': label-free training is recycling "
                          "(rtune recycle --method distill | init+distill)")
    p = tuning.plan(cfg, where, resume)
    dist.init()
    tokenizer, data = tuning.load_inputs(p)
    write_run_files(p.cfg, p.ds_config)
    model, head = tuning.build_model(p, tokenizer, data)
    result = tuning.train(p, model, tokenizer, data)
    if result.finished:
        tuning.finish(p, result, tokenizer, data, head, command)
    return result

