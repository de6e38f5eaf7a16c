"""`rtune analyze connectivity`: linear mode connectivity between two tuned models (and the
control pair), as a protocol:

1. open the pairs (jobs.pairs: bundles, their bases, one task, one architecture); check the task
   keys and the DeepSpeed JSON as fine-tuning does, and that every side reads the task data's
   tokenizer;
2. start the ranks; read the dev set; record the configs; load one task model of base B's
   architecture (ZeRO-3: partitioned) under a frozen engine;
3. per pair, rank 0 builds the two tuned models (a PEFT adapter merged: base + adapter + head
   together); for each λ every tensor is set to θ(λ) = (1−λ)·θ_A + λ·θ_B (ZeRO-3: one parameter
   gathered at a time, written by rank 0) and dev is scored with the fine-tuning evaluator on
   every rank;
4. the barrier of each dev metric -> connectivity.json, connectivity.png and TensorBoard
   (step = point index) in run_dir.
"""
from __future__ import annotations

from pathlib import Path

from rtune_ds import dist
from rtune_ds.analysis.connectivity import barrier, higher_is_better, interpolate, lambdas
from rtune_ds.artifacts.run_dir import write_run_files
from rtune_ds.config.schema import RunConfig
from rtune_ds.errors import ConfigError
from rtune_ds.io import pyplot, save_figure, save_json
from rtune_ds.jobs import tuning
from rtune_ds.jobs.pairs import Pair, adopt_task, check_tokenizers, open_pairs_of, task_config
from rtune_ds.models.loader import load_task_model
from rtune_ds.models.zero import write_weights
from rtune_ds.recycling.mapping import mapping_targets
from rtune_ds.train.inference import frozen_engine
from rtune_ds.train.monitor import Monitor


def from_args(args, command: str) -> None:
    """The command from its parsed arguments. All ranks call this."""
    pairs = open_pairs_of(args)
    cfg, where = task_config(args)
    run(cfg, where, pairs, args.points, command)


def run(cfg: RunConfig, where: str, pairs: list[Pair], points: int, command: str) -> dict:
    """cfg: task keys, with model.path = main B's base. All ranks call this."""
    if points < 2:
        raise ConfigError(f"--points {points}: needs at least 2 (the two endpoints)")
    lams = lambdas(points)
    adopt_task(cfg, where, pairs)
    p = tuning.plan(cfg, where, None)
    check_tokenizers(pairs, cfg.model.tokenizer or cfg.model.path)
    dist.init()
    tokenizer, data = tuning.load_inputs(p)
    run_dir = write_run_files(p.cfg, p.ds_config)
    evaluate = tuning.evaluator(p, data, tokenizer, "dev")
    model, _ = load_task_model(cfg.model.path, cfg.task.type, data.label_names,
                               tokenizer.pad_token_id, p.ds_config, cfg.seed,
                               cfg.model.trust_remote_code)
    engine = frozen_engine(model, p.ds_config)
    targets, _ = mapping_targets(engine.module, peft=False)
    monitor = Monitor(run_dir, 0, len(pairs) * points, desc="connectivity")
    result = {"command": command, "task": pairs[0].a.meta["task"], "points": points,
              "lambdas": lams, "world_size": dist.world_size(),
              "zero_stage": p.ds_config["zero_optimization"]["stage"], "pairs": {}}
    for n, pair in enumerate(pairs):
        ends = None
        if dist.is_main():  # one full copy of each tuned model, on rank 0 only
            ends = [mapping_targets(side.tuned_model(), peft=False)[0] for side in (pair.a, pair.b)]
        curve = []
        for i, lam in enumerate(lams):
            write_weights(targets, lambda name: interpolate(ends[0][name], ends[1][name], lam))
            metrics = {k.removeprefix("eval/"): v for k, v in evaluate(engine.module).items()}
            curve.append({"lambda": lam, **metrics})
            monitor.log(i, {f"connectivity/{pair.name}/dev/{k}": v for k, v in metrics.items()})
            monitor.advance(n * points + i + 1)
        result["pairs"][pair.name] = {
            "a": pair.a.describe(), "b": pair.b.describe(), "curve": curve,
            "barrier": {k: barrier([c[k] for c in curve], lams, higher_is_better(k))
                        for k in curve[0] if k != "lambda"}}
    monitor.close()
    if dist.is_main():
        save_json(result, run_dir / "connectivity.json")
        plot_connectivity(result, run_dir / "connectivity.png")
        print(f"rtune: connectivity -> {run_dir / 'connectivity.json'}")
    dist.barrier()
    return result


def plot_connectivity(result: dict, path: Path) -> None:
    plt = pyplot()
    metrics = [k for k in result["pairs"]["main"]["curve"][0] if k != "lambda"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, pair in result["pairs"].items():
            ax.plot(result["lambdas"], [c[metric] for c in pair["curve"]], marker="o",
                    markersize=3, label=name)
        ax.set_xlabel("λ (0: model A, 1: model B)")
        ax.set_ylabel(f"dev {metric}")
    axes[0][0].legend()
    fig.suptitle("Linear interpolation between two tuned models")
    save_figure(fig, path)
