"""`rtune analyze similarity`: how differently two tuned models (and the control pair) attend,
as a protocol, on CPU in rank 0's process (other ranks of a launch return):

1. open the pairs (jobs.pairs: bundles, their bases, one task, one architecture); check the task
   keys and that every side reads the task data's tokenizer;
2. read the first dev examples;
3. per pair, the two tuned models with eager attention on those examples: the Jensen–Shannon
   divergence of every head's attention distributions -> similarity.json and the heatmap
   similarity.png in run_dir.
"""
from __future__ import annotations

from pathlib import Path

import torch

from rtune_ds import dist
from rtune_ds.analysis.similarity import LN2, attention_js
from rtune_ds.artifacts.run_dir import hold_run_dir
from rtune_ds.config.schema import RunConfig
from rtune_ds.data.examples import load_task
from rtune_ds.data.tokenizer import load_tokenizer
from rtune_ds.errors import ConfigError
from rtune_ds.io import pyplot, save_figure, save_json
from rtune_ds.jobs.pairs import (
    Pair,
    Side,
    adopt_task,
    check_tokenizers,
    open_pairs_of,
    task_config,
)
from rtune_ds.train.monitor import progress_bar


def from_args(args, command: str) -> None:
    """The command from its parsed arguments."""
    pairs = open_pairs_of(args)
    cfg, where = task_config(args)
    run(cfg, where, pairs, args.max_examples, command)


def run(cfg: RunConfig, where: str, pairs: list[Pair], max_examples: int,
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


def eager(model: torch.nn.Module, side: Side) -> torch.nn.Module:
    """The model computing attention explicitly, so it can return the probabilities."""
    try:
        model.set_attn_implementation("eager")
    except (ValueError, NotImplementedError) as err:
        raise ConfigError(f"{side.base_arg} {side.base}: no eager attention to read attention "
                          f"probabilities from: {err}") from None
    return model


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
