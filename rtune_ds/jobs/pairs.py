"""The pair(s) of tuned models every `rtune analyze` of two models compares: A and B (each an
rtune bundle with the base it was tuned on, say A tuned on v0 and B on v1), next to an optional
control pair (two tuned models not related by continual pretraining). Each bundle is read and
each base checked to be the one its bundle was tuned on; all sides must be tuned for the same task
(type and labels) and have the same tensor names and shapes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rtune_ds.analysis.pairs import CONTROL_FLAGS, flag
from rtune_ds.artifacts.bundle import read_bundle
from rtune_ds.artifacts.lineage import fingerprint
from rtune_ds.config.checks import require_dev
from rtune_ds.config.load import load_run_config
from rtune_ds.config.schema import RunConfig
from rtune_ds.data.tokenizer import load_tokenizer, tokenizer_hash
from rtune_ds.errors import ConfigError
from rtune_ds.models.loader import meta_task_model
from rtune_ds.recycling.mapping import full_shapes, mapping_targets
from rtune_ds.recycling.merge import apply_bundle

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
    """The run scores the bundles' task: its type, and its labels in the bundles' order, on the
    dev set."""
    require_dev(cfg, where)
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


def open_pairs_of(args) -> list[Pair]:
    """The pairs named on the command line (--a, --base-a, --b, --base-b, --control-*)."""
    return open_pairs(args.a, args.base_a, args.b, args.base_b,
                      (args.control_a, args.control_base_a, args.control_b, args.control_base_b))


def task_config(args) -> tuple[RunConfig, str]:
    """(RunConfig, where) from --config, --ds-config and the overrides, as for finetune, with
    model.path = main B's base (the architecture the models are scored in)."""
    overrides = [*args.overrides, *([f"deepspeed={args.ds_config}"] if args.ds_config else []),
                 f"model.path={args.base_b}"]
    return (load_run_config(args.config, overrides, "finetune"),
            f"{args.config} + command-line overrides")
