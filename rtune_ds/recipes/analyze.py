"""Analyses of two tuned models, A and B (each an rtune bundle with the base it was tuned on, say
A tuned on v0 and B on v1), next to an optional control pair (two tuned models not related by
continual pretraining), as protocols. First, for every analysis: each bundle is read and each
base checked to be the one its bundle was tuned on; all sides must be tuned for the same task
(type and labels) and have the same tensor names and shapes.

connectivity: check the task keys and the DeepSpeed JSON as fine-tuning does, and that every side
  reads the task data's tokenizer; start the ranks; read the dev set; load one task model of base
  B's architecture (ZeRO-3: partitioned) under a frozen engine. Per pair, rank 0 builds the two
  tuned models (a PEFT adapter merged: base + adapter + head together); for each λ every tensor is
  set to θ(λ) = (1−λ)·θ_A + λ·θ_B (ZeRO-3: one parameter gathered at a time, written by rank 0)
  and dev is scored with the fine-tuning evaluator on every rank
  -> connectivity.json, connectivity.png and TensorBoard (step = point index) in run_dir.
similarity: the same checks; the two tuned models with eager attention on the first dev examples;
  the Jensen–Shannon divergence of every head's attention distributions
  -> similarity.json and the heatmap similarity.png in run_dir.
distance: global and per-parameter L2 and cosine between the tuned models' parameters (all, or
  the backbone without the task head) -> distance.json in --out.
convergence: from each run's metrics.jsonl (wall times from its TensorBoard events), the first
  step at which a dev metric reaches a fraction of a target -> convergence.json in --out.

Similarity and distance run on CPU in rank 0's process (other ranks of a launch return).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rtune_ds import dist
from rtune_ds.analysis.connectivity import (
    barrier,
    higher_is_better,
    interpolate,
    lambdas,
)
from rtune_ds.analysis.convergence import steps_to_target, threshold
from rtune_ds.analysis.distance import parameter_distances
from rtune_ds.analysis.pairs import CONTROL_FLAGS, flag
from rtune_ds.analysis.similarity import LN2, attention_js
from rtune_ds.artifacts.bundle import read_bundle
from rtune_ds.artifacts.lineage import fingerprint
from rtune_ds.artifacts.run_dir import hold_run_dir, write_run_files
from rtune_ds.config.load import load_run_config
from rtune_ds.config.schema import RunConfig
from rtune_ds.data.examples import load_task
from rtune_ds.data.tokenizer import load_tokenizer, tokenizer_hash
from rtune_ds.errors import ConfigError
from rtune_ds.io import pyplot, save_figure, save_json
from rtune_ds.jobs import tuning
from rtune_ds.models.loader import load_task_model, meta_task_model
from rtune_ds.models.zero import write_weights
from rtune_ds.recycling.mapping import full_shapes, mapping_targets
from rtune_ds.recycling.merge import apply_bundle
from rtune_ds.train.inference import frozen_engine
from rtune_ds.train.monitor import Monitor, progress_bar, read_metrics

CONTROL_ARGS = tuple(flag(dest) for dest in CONTROL_FLAGS)


@dataclass
class Side:
    """One tuned model: a bundle and the base it was tuned on (with the arguments naming them)."""
    bundle: Path
    base: Path
    meta: dict  # bundle.json
    arg: str
    base_arg: str

    def describe(self) -> dict:
        return {"bundle": str(self.bundle.resolve()), "base": str(self.base.resolve()),
                "kind": self.meta["kind"], "method": self.meta["method"],
                "dev": self.meta.get("metrics", {}).get("dev")}

    def tuned_model(self) -> torch.nn.Module:
        """On CPU, a PEFT adapter merged into the weights (the base was checked in open_side)."""
        return apply_bundle(self.bundle, self.base, merge=True, check_fingerprint=False)


@dataclass
class Pair:
    name: str  # main | control
    a: Side
    b: Side


def open_side(bundle: str, base: str, arg: str, base_arg: str) -> Side:
    if not Path(bundle, "bundle.json").is_file():
        raise ConfigError(f"{arg} {bundle}: not an rtune bundle (no bundle.json)")
    if not Path(base, "config.json").is_file():
        raise ConfigError(f"{base_arg} {base}: not a Hugging Face model directory (no config.json)")
    meta = read_bundle(bundle)
    found, want = fingerprint(base), meta["base"]["fingerprint"]
    if found != want:
        raise ConfigError(f"{base_arg} {base}: not the base the bundle {arg} {bundle} was tuned "
                          f"on (fingerprint {found}; the bundle's base: {want}, "
                          f"{meta['base']['path']})")
    return Side(Path(bundle), Path(base), meta, arg, base_arg)


def open_pairs(a: str, base_a: str, b: str, base_b: str,
               control: tuple[str | None, str | None, str | None, str | None]) -> list[Pair]:
    """The main pair, and the control pair when `control` (bundle A, base A, bundle B, base B)
    is given; checked as the module docstring says."""
    pairs = [Pair("main", open_side(a, base_a, flag("a"), flag("base_a")),
                  open_side(b, base_b, flag("b"), flag("base_b")))]
    missing = [arg for arg, value in zip(CONTROL_ARGS, control) if not value]
    if len(missing) < len(CONTROL_ARGS):
        if missing:
            raise ConfigError(f"{', '.join(missing)}: a control pair needs all of "
                              f"{', '.join(CONTROL_ARGS)}")
        pairs.append(Pair("control", open_side(control[0], control[1], *CONTROL_ARGS[:2]),
                          open_side(control[2], control[3], *CONTROL_ARGS[2:])))
    first = pairs[0].a
    for side in sides(pairs)[1:]:
        for key in ("type", "labels"):
            if side.meta["task"][key] != first.meta["task"][key]:
                raise ConfigError(f"{side.arg} {side.bundle}: tuned for task {key} "
                                  f"{side.meta['task'][key]!r}, but {first.arg} {first.bundle} for "
                                  f"{first.meta['task'][key]!r}; compare models of one task")
    check_architectures(pairs)
    return pairs


def sides(pairs: list[Pair]) -> list[Side]:
    return [side for pair in pairs for side in (pair.a, pair.b)]


def check_architectures(pairs: list[Pair]) -> None:
    """Every side's task model has the tensor names and shapes of main B's (θ(λ) is written into
    a model of that architecture), compared on meta models: no weights are read."""
    task = pairs[0].a.meta["task"]

    def shapes(side: Side) -> dict:
        meta = meta_task_model(side.base, task["type"], task["labels"])
        return full_shapes(mapping_targets(meta, peft=False)[0])

    reference = pairs[0].b
    want = shapes(reference)
    for side in sides(pairs):
        got = shapes(side)
        differ = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        if differ:
            raise ConfigError(f"{side.base_arg} {side.base}: its task model differs from the one "
                              f"of {reference.base_arg} {reference.base} in {len(differ)} "
                              f"tensor(s), e.g. '{differ[0]}': {got.get(differ[0])} vs "
                              f"{want.get(differ[0])}")


def check_tokenizers(pairs: list[Pair], tokenizer_dir: str) -> None:
    want = tokenizer_hash(load_tokenizer(tokenizer_dir))
    for side in sides(pairs):
        if tokenizer_hash(load_tokenizer(side.base)) != want:
            raise ConfigError(f"{side.base_arg} {side.base}: its tokenizer differs from the one "
                              f"the task data is read with ({tokenizer_dir}); the model would be "
                              "fed token ids it was not tuned on")


def adopt_task(cfg: RunConfig, where: str, pairs: list[Pair]) -> None:
    """The run scores the bundles' task: its type, and its labels in the bundles' order."""
    task = pairs[0].a.meta["task"]
    if cfg.task.type != task["type"]:
        raise ConfigError(f"{where}: key 'task.type': '{cfg.task.type}', but --a was tuned for "
                          f"'{task['type']}'")
    if task["labels"] is not None:
        if cfg.task.labels is not None and list(cfg.task.labels) != task["labels"]:
            raise ConfigError(f"{where}: key 'task.labels': {cfg.task.labels} differ from the "
                              f"bundles' labels {task['labels']} (names and order)")
        cfg.task.labels = list(task["labels"])
    cfg.tuning.method = "full"  # plain task models are scored, whatever the bundles tuned


def connectivity(cfg: RunConfig, where: str, pairs: list[Pair], points: int,
                 command: str) -> dict:
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
        del ends
        result["pairs"][pair.name] = {
            "a": pair.a.describe(), "b": pair.b.describe(), "curve": curve,
            "barrier": {k: barrier([c[k] for c in curve], lams,
                                            higher_is_better(k))
                        for k in curve[0] if k != "lambda"}}
    monitor.close()
    if dist.is_main():
        save_json(result, run_dir / "connectivity.json")
        plot_connectivity(result, run_dir / "connectivity.png")
        print(f"rtune: connectivity -> {run_dir / 'connectivity.json'}")
    dist.barrier()
    return result


def eager(model: torch.nn.Module, side: Side) -> torch.nn.Module:
    """The model computing attention explicitly, so it can return the probabilities."""
    try:
        model.set_attn_implementation("eager")
    except (ValueError, NotImplementedError) as err:
        raise ConfigError(f"{side.base_arg} {side.base}: no eager attention to read attention "
                          f"probabilities from: {err}") from None
    return model


def similarity(cfg: RunConfig, where: str, pairs: list[Pair], max_examples: int,
               command: str) -> dict | None:
    """cfg: task keys (its dev split is the inputs), with model.path = main B's base."""
    if max_examples < 1:
        raise ConfigError(f"--max-examples {max_examples}: must be >= 1")
    adopt_task(cfg, where, pairs)
    tokenizer_dir = cfg.model.tokenizer or cfg.model.path
    check_tokenizers(pairs, tokenizer_dir)
    hold_run_dir(cfg.run_dir, where)
    if not dist.is_main():
        return None
    tokenizer = load_tokenizer(tokenizer_dir)
    dev = load_task(cfg.task, tokenizer, cfg.seed, where).splits["dev"]
    n, micro = min(max_examples, len(dev)), cfg.train.micro_batch_size
    batches = [list(range(s, min(s + micro, n))) for s in range(0, n, micro)]
    bar = progress_bar(len(pairs) * len(batches), "similarity")
    result = {"command": command, "task": pairs[0].a.meta["task"], "examples": n,
              "js_max": LN2, "pairs": {}}
    for pair in pairs:
        models = [eager(side.tuned_model(), side) for side in (pair.a, pair.b)]
        total = 0.0
        for idx in batches:
            batch = dev.batch(idx)
            mask = batch["attention_mask"]
            with torch.no_grad():
                attentions = [m(input_ids=batch["input_ids"], attention_mask=mask,
                                output_attentions=True).attentions for m in models]
            total = total + attention_js(*attentions, mask) * len(idx)
            bar.update(1)
        js = total / n
        result["pairs"][pair.name] = {
            "a": pair.a.describe(), "b": pair.b.describe(), "js": js.tolist(),
            "mean": js.mean().item(), "per_layer": js.mean(1).tolist()}
    bar.close()
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_json(result, run_dir / "similarity.json")
    plot_similarity(result, run_dir / "similarity.png")
    print(f"rtune: similarity -> {run_dir / 'similarity.json'}")
    return result


def distance(pairs: list[Pair], backbone_only: bool, out: str, command: str) -> dict | None:
    if not dist.is_main():
        return None
    result = {"command": command, "backbone_only": backbone_only, "pairs": {}}
    for pair in pairs:
        a, b = (dict(side.tuned_model().named_parameters()) for side in (pair.a, pair.b))
        head = set(pair.a.meta["head"]) | set(pair.b.meta["head"]) if backbone_only else set()
        with torch.no_grad():
            result["pairs"][pair.name] = {"a": pair.a.describe(), "b": pair.b.describe(),
                                          "excluded": sorted(head),
                                          **parameter_distances(a, b, head)}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_json(result, out_dir / "distance.json")
    print(f"rtune: distance -> {out_dir / 'distance.json'}")
    return result


def wall_times(tensorboard_dir: Path, tag: str) -> dict[int, float]:
    """step -> seconds from the run's first TensorBoard event to `tag`'s value at that step
    (including any pause between launches of a resumed run); empty if `tag` was not logged."""
    if not tensorboard_dir.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return {}
    start = events.FirstEventTimestamp()
    return {e.step: e.wall_time - start for e in events.Scalars(tag)}


def convergence(runs: list[str], metric: str, target: float, fraction: float, out: str,
                command: str) -> dict | None:
    if not 0 < fraction <= 1:
        raise ConfigError(f"--fraction {fraction}: must be in (0, 1]")
    rises = higher_is_better(metric)
    rows = []
    for run in runs:
        path = Path(run, "metrics.jsonl")
        if not path.is_file():
            raise ConfigError(f"--runs {run}: no metrics.jsonl (not a run directory)")
        records = read_metrics(path)
        values = [r[metric] for r in records if metric in r]
        if not values:
            logged = sorted({k for r in records for k in r if k.startswith("eval/")})
            raise ConfigError(f"--metric {metric}: not logged in {path} (eval metrics there: "
                              f"{', '.join(logged) or 'none'})")
        wall = wall_times(Path(run, "tensorboard"), metric)
        records = [{**r, "wall_time": wall[r["step"]]} if metric in r and r["step"] in wall
                   else r for r in records]
        hit = steps_to_target(records, metric, target, fraction)
        rows.append({"run": str(Path(run).resolve()), "reached": hit is not None,
                     **(hit or dict.fromkeys(("step", "value", "tokens", "wall_time_s"))),
                     "best": max(values) if rises else min(values), "final": values[-1]})
    result = {"command": command, "metric": metric, "target": target, "fraction": fraction,
              "threshold": threshold(metric, target, fraction), "runs": rows}
    if dist.is_main():
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_json(result, out_dir / "convergence.json")
        print(f"rtune: convergence -> {out_dir / 'convergence.json'}")
    return result


def run(args, command: str) -> None:
    """`rtune analyze connectivity | similarity | distance | convergence`, from parsed args."""
    if args.analyze_command == "convergence":
        convergence(args.runs, args.metric, args.target, args.fraction, args.out, command)
        return
    pairs = open_pairs(args.a, args.base_a, args.b, args.base_b,
                       (args.control_a, args.control_base_a, args.control_b, args.control_base_b))
    if args.analyze_command == "distance":
        distance(pairs, args.backbone_only, args.out, command)
        return
    overrides = [*args.overrides, *([f"deepspeed={args.ds_config}"] if args.ds_config else []),
                 f"model.path={args.base_b}"]
    cfg = load_run_config(args.config, overrides, "finetune")
    where = f"{args.config} + command-line overrides"
    if args.analyze_command == "connectivity":
        connectivity(cfg, where, pairs, args.points, command)
    else:
        similarity(cfg, where, pairs, args.max_examples, command)


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


def plot_similarity(result: dict, path: Path) -> None:
    plt = pyplot()
    pairs = result["pairs"]
    top = max(max(max(row) for row in pair["js"]) for pair in pairs.values()) or LN2
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4.2), squeeze=False)
    for ax, (name, pair) in zip(axes[0], pairs.items()):
        image = ax.imshow(pair["js"], vmin=0.0, vmax=top, cmap="viridis", aspect="auto")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"{name}: mean JS {pair['mean']:.4f}")
        layers, heads = len(pair["js"]), len(pair["js"][0])
        ax.set_xticks(range(heads))
        ax.set_yticks(range(layers))
        fig.colorbar(image, ax=ax, label="JS divergence (nats)")
    fig.suptitle(f"Attention-head divergence between the tuned models\n({result['examples']} "
                 "dev examples)", fontsize=10)
    save_figure(fig, path)

