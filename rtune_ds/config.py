"""Typed RunConfig: a YAML/JSON file plus dotted overrides, validated before any compute.

Every error names the file (or "command line") and the dotted key, so a user can find the
mistake without reading a traceback.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(Exception):
    """A mistake in a RunConfig, a DeepSpeed JSON or an input path; the message names it."""


class RunError(Exception):
    """A run that cannot go on (a non-finite loss under train.nonfinite=stop, a write that failed);
    `rtune` exits 3. The last complete checkpoint stays the one `--resume auto` picks up."""


@dataclass
class Source:
    """One corpus of a blend: a text/jsonl/json/parquet file, or a `save_to_disk` directory."""

    path: str
    weight: float = 1.0


@dataclass
class SwitchConfig:
    """A scheduled change of the training blend to `train`, at a step or when the LR falls."""

    train: list[Source] = field(default_factory=list)
    at_step: int | None = None
    lr_fraction: float | None = None  # switch when lr <= lr_fraction * peak lr


@dataclass
class ModelConfig:
    preset: str | None = None
    path: str | None = None
    objective: str | None = None  # clm | mlm; None: the preset's, or inferred from the HF config
    tokenizer: str | None = None  # a tokenizer dir; None: the model dir's, or trained on data.train
    mlm_probability: float = 0.15
    trust_remote_code: bool = False
    architecture: str | None = None  # the HF model_type model.path must have (llama, roberta, ...)


@dataclass
class DataConfig:
    train: list[Source] = field(default_factory=list)
    eval: list[Source] = field(default_factory=list)
    eval_fraction: float = 0.05  # held-out blocks of each train source when data.eval is empty
    seq_len: int = 128
    text_field: str = "text"
    cache_dir: str | None = None  # tokenised+packed blocks; default ~/.cache/rtune_ds/packed
    switch: SwitchConfig | None = None


@dataclass
class TrainConfig:
    max_steps: int = 100
    micro_batch_size: int = 8
    grad_accum: int = 1
    global_batch_size: int | None = None  # if set, grad_accum is derived from it
    lr: float | None = 1e-3  # peak LR; for schedule=recipe, None means "the parent's min LR"
    schedule: str = "cosine"  # cosine | recipe | constant
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of the peak
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_max_blocks: int = 256
    save_every: int = 0  # 0: checkpoint only when a launch ends
    stop_after: int | None = None  # end this launch after N steps; the schedule still spans max_steps
    log_every: int = 1
    precision: str | None = None  # fp32 | bf16; None: whatever the DeepSpeed JSON says, else fp32
    nonfinite: str = "stop"  # on a NaN/Inf loss: stop (exit 3, nothing saved) | skip the update


@dataclass
class TaskConfig:
    """A fine-tuning task: local jsonl/csv/parquet files with text,label or prompt,completion."""

    type: str = "classification"  # classification | lm
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    text_field: str = "text"
    label_field: str = "label"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    labels: list[str] | None = None  # the label set, in order; None: the sorted labels of train
    few_shot: int | None = None  # K examples per class (train and dev), seeded
    max_len: int = 128  # tokens per example (longer ones are cut)
    max_new_tokens: int = 32  # lm: greedy tokens for exact match (at most)
    best_metric: str | None = None  # None: eval/accuracy (classification), eval/loss (lm)


@dataclass
class LoraSettings:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None  # None: peft's default for the architecture


@dataclass
class IA3Settings:
    target_modules: list[str] | None = None  # None: peft's default for the architecture
    feedforward_modules: list[str] | None = None  # a subset of target_modules


@dataclass
class TuningConfig:
    method: str = "full"  # full | lora | ia3
    lora: LoraSettings = field(default_factory=LoraSettings)
    ia3: IA3Settings = field(default_factory=IA3Settings)


@dataclass
class DistillConfig:
    """recycle --method distill | init+distill: the old model (old base + old bundle) is a frozen
    teacher; loss = (1−alpha)·CE + alpha·T²·KL(teacher_T ‖ student_T) + beta·hidden-state MSE."""

    alpha: float = 0.5
    temperature: float = 2.0
    beta: float = 0.0  # 0: no hidden-state term
    hidden_layers: list[int] | None = None  # hidden_states indices paired; None: every layer's output
    teacher_deepspeed: str | None = None  # the teacher's own DeepSpeed JSON; None: teacher_offload


@dataclass
class RunConfig:
    run_dir: str = ""
    seed: int = 0
    deepspeed: str | None = None  # path of the DeepSpeed JSON; None: ds_configs/zero0.json
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: TaskConfig = field(default_factory=TaskConfig)  # finetune only
    tuning: TuningConfig = field(default_factory=TuningConfig)  # finetune only
    distill: DistillConfig = field(default_factory=DistillConfig)  # recycle distill methods only

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SCHEDULES = ("cosine", "recipe", "constant")
OBJECTIVES = ("clm", "mlm")
PRECISIONS = ("fp32", "bf16")
NONFINITE_POLICIES = ("skip", "stop")
TASK_TYPES = ("classification", "lm")
TUNING_METHODS = ("full", "lora", "ia3")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting dicts into dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            value = [value] if item_tp is Source and isinstance(value, (str, dict)) else value
        if not isinstance(value, list):
            raise ConfigError(f"{where}: key '{key}': expected a list, got {value!r}")
        return [_convert(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if tp is Source and isinstance(value, str):
        return Source(path=value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key '{key}': expected a mapping, got {value!r}")
        return build(tp, value, where, prefix=f"{key}.")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML reads "1e-3" as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{where}: key '{key}': expected {_type_name(tp)}, got {value!r}")
    return value


def build(cls: type, data: dict, where: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{prefix}{unknown[0]}' (known under '{prefix or '<top>'}': "
            f"{', '.join(sorted(names))})"
        )
    kwargs = {k: _convert(v, hints[k], prefix + k, where) for k, v in data.items()}
    return cls(**kwargs)


def read_mapping(path: str | Path) -> dict:
    """Read a YAML or JSON file into a dict (yaml.safe_load reads JSON too)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML/JSON: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides; values are parsed as YAML scalars/lists."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"command line: key '{key}': '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw else ""
    return data


def load_run_config(path: str | None, overrides: list[str], command: str = "pretrain") -> RunConfig:
    data = read_mapping(path) if path else {}
    where = str(path) if path else "command line"
    if path and overrides:
        where += " + command-line overrides"
    return run_config_from(data, overrides, where, command)


def run_config_from(data: dict, overrides: list[str], where: str, command: str) -> RunConfig:
    cfg = build(RunConfig, apply_overrides(data, overrides), where)
    validate(cfg, where, command)
    return cfg


def _require(cond: bool, where: str, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: key '{key}': {msg}")


def check_writable(path: str, where: str, key: str) -> None:
    """`path`, or the nearest of its parents that exists, must be a directory this user can write."""
    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    _require(existing.is_dir(), where, key, f"cannot create {path}: {existing} is not a directory")
    _require(os.access(existing, os.W_OK | os.X_OK), where, key,
             f"cannot write {path}: {existing} is not writable")


def check_source_paths(sources: list[Source], key: str, where: str) -> None:
    for i, src in enumerate(sources):
        _require(Path(src.path).exists(), where, f"{key}[{i}]", f"data file not found: {src.path}")
        _require(src.weight > 0, where, f"{key}[{i}].weight", f"must be > 0, got {src.weight}")


def validate(cfg: RunConfig, where: str, command: str = "pretrain") -> None:
    """Checks that need no model and no data loading: keys, ranges, paths that must exist.
    `finetune` checks the task and tuning sections instead of the data section."""
    m = cfg.model
    _require(bool(cfg.run_dir), where, "run_dir", "is required")
    check_writable(cfg.run_dir, where, "run_dir")
    if command == "finetune":
        _require(m.path is not None and m.preset is None, where, "model.path",
                 "fine-tuning needs a base model directory (model.path), not a preset")
    _require((m.preset is None) != (m.path is None), where, "model.preset",
             "set exactly one of model.preset and model.path")
    if m.path is not None:
        _require(Path(m.path, "config.json").is_file(), where, "model.path",
                 f"not a Hugging Face model directory (no config.json): {m.path}")
        if m.architecture is not None:
            found = json.loads(Path(m.path, "config.json").read_text()).get("model_type")
            _require(found == m.architecture, where, "model.architecture",
                     f"'{m.architecture}', but the base model at {m.path} is a '{found}' model")
    if m.preset is not None:
        from rtune_ds.models import PRESETS
        _require(m.preset in PRESETS, where, "model.preset",
                 f"unknown preset '{m.preset}' (known: {', '.join(PRESETS)})")
    if m.objective is not None:
        _require(m.objective in OBJECTIVES, where, "model.objective", f"one of {OBJECTIVES}")
    if m.tokenizer is not None:
        _require(Path(m.tokenizer).is_dir(), where, "model.tokenizer",
                 f"tokenizer directory not found: {m.tokenizer}")
    _require(0 < m.mlm_probability < 1, where, "model.mlm_probability", "must be in (0, 1)")
    if command == "finetune":
        validate_task(cfg, where)
        validate_distill(cfg, where)
    else:
        validate_data(cfg, where)
    validate_train(cfg, where)


def validate_data(cfg: RunConfig, where: str) -> None:
    d, t = cfg.data, cfg.train
    _require(len(d.train) > 0, where, "data.train", "needs at least one source")
    check_source_paths(d.train, "data.train", where)
    check_source_paths(d.eval, "data.eval", where)
    _require(d.seq_len >= 8, where, "data.seq_len", f"must be >= 8, got {d.seq_len}")
    _require(0 <= d.eval_fraction < 1, where, "data.eval_fraction", "must be in [0, 1)")
    _require(bool(d.eval) or d.eval_fraction > 0, where, "data.eval",
             "give eval files or a data.eval_fraction > 0")
    if d.switch is not None:
        _require(len(d.switch.train) > 0, where, "data.switch.train", "needs at least one source")
        check_source_paths(d.switch.train, "data.switch.train", where)
        _require(d.switch.at_step is None or d.switch.lr_fraction is None, where,
                 "data.switch.at_step", "set only one of data.switch.at_step and lr_fraction")
        _require(t.schedule == "recipe" or d.switch.at_step is not None
                 or d.switch.lr_fraction is not None, where, "data.switch.at_step",
                 "set data.switch.at_step or data.switch.lr_fraction (only the recipe "
                 "schedule has a default: lr_fraction 0.2)")
        if d.switch.lr_fraction is not None:
            _require(0 < d.switch.lr_fraction < 1, where, "data.switch.lr_fraction",
                     "must be in (0, 1)")


def validate_task(cfg: RunConfig, where: str) -> None:
    k, u = cfg.task, cfg.tuning
    _require(k.type in TASK_TYPES, where, "task.type", f"one of {TASK_TYPES}, got {k.type!r}")
    _require(k.train is not None, where, "task.train", "is required (a jsonl/csv/parquet file)")
    _require(k.dev is not None, where, "task.dev", "is required (a jsonl/csv/parquet file)")
    for key in ("train", "dev", "test"):
        path = getattr(k, key)
        if path is not None:
            _require(Path(path).is_file(), where, f"task.{key}", f"data file not found: {path}")
    if k.labels is not None:
        _require(len(k.labels) >= 2 and len(set(k.labels)) == len(k.labels), where,
                 "task.labels", "needs at least two distinct labels")
    if k.few_shot is not None:
        _require(k.few_shot > 0, where, "task.few_shot", "must be > 0 (examples per class)")
        _require(k.type == "classification", where, "task.few_shot",
                 "few-shot sampling needs classes (task.type classification)")
    _require(k.max_len >= 4, where, "task.max_len", f"must be >= 4, got {k.max_len}")
    _require(k.max_new_tokens > 0, where, "task.max_new_tokens", "must be > 0")
    _require(u.method in TUNING_METHODS, where, "tuning.method",
             f"one of {TUNING_METHODS}, got {u.method!r}")
    _require(u.lora.r > 0 and u.lora.alpha > 0, where, "tuning.lora.r", "r and alpha must be > 0")
    _require(0 <= u.lora.dropout < 1, where, "tuning.lora.dropout", "must be in [0, 1)")
    if u.ia3.feedforward_modules is not None:
        _require(u.ia3.target_modules is not None
                 and set(u.ia3.feedforward_modules) <= set(u.ia3.target_modules), where,
                 "tuning.ia3.feedforward_modules", "must be a subset of tuning.ia3.target_modules")


def validate_distill(cfg: RunConfig, where: str) -> None:
    d = cfg.distill
    _require(0 <= d.alpha <= 1, where, "distill.alpha", f"must be in [0, 1], got {d.alpha}")
    _require(d.temperature > 0, where, "distill.temperature", f"must be > 0, got {d.temperature}")
    _require(d.beta >= 0, where, "distill.beta", f"must be >= 0, got {d.beta}")
    if d.hidden_layers is not None:
        _require(len(d.hidden_layers) > 0 and all(i >= 0 for i in d.hidden_layers), where,
                 "distill.hidden_layers", "a non-empty list of hidden_states indices (>= 0)")
    if d.teacher_deepspeed is not None:
        _require(Path(d.teacher_deepspeed).is_file(), where, "distill.teacher_deepspeed",
                 f"DeepSpeed JSON not found: {d.teacher_deepspeed}")


def validate_train(cfg: RunConfig, where: str) -> None:
    t = cfg.train
    _require(t.max_steps > 0, where, "train.max_steps", "must be > 0")
    _require(t.micro_batch_size > 0, where, "train.micro_batch_size", "must be > 0")
    _require(t.grad_accum > 0, where, "train.grad_accum", "must be > 0")
    _require(t.schedule in SCHEDULES, where, "train.schedule", f"one of {SCHEDULES}")
    if t.schedule != "recipe":
        _require(t.lr is not None and t.lr > 0, where, "train.lr", "must be > 0")
    _require(0 <= t.min_lr_ratio <= 1, where, "train.min_lr_ratio", "must be in [0, 1]")
    _require(0 <= t.warmup_steps < t.max_steps, where, "train.warmup_steps",
             "must be in [0, train.max_steps)")
    _require(len(t.betas) == 2, where, "train.betas", "needs two values")
    _require(t.eval_every >= 0 and t.save_every >= 0 and t.log_every > 0, where,
             "train.eval_every", "eval_every/save_every >= 0 and log_every > 0")
    if t.stop_after is not None:
        _require(t.stop_after > 0, where, "train.stop_after", "must be > 0")
    if t.precision is not None:
        _require(t.precision in PRECISIONS, where, "train.precision", f"one of {PRECISIONS}")
    _require(t.nonfinite in NONFINITE_POLICIES, where, "train.nonfinite",
             f"one of {NONFINITE_POLICIES}, got {t.nonfinite!r}")
    if cfg.deepspeed is not None:
        _require(Path(cfg.deepspeed).is_file(), where, "deepspeed",
                 f"DeepSpeed JSON not found: {cfg.deepspeed}")


def resolve_batch(cfg: RunConfig, world_size: int, where: str) -> tuple[int, int]:
    """(grad_accum, global batch) for this world size; train.global_batch_size must divide."""
    t = cfg.train
    if t.global_batch_size is None:
        return t.grad_accum, t.micro_batch_size * t.grad_accum * world_size
    per_step = t.micro_batch_size * world_size
    _require(t.global_batch_size % per_step == 0, where, "train.global_batch_size",
             f"{t.global_batch_size} is not divisible by train.micro_batch_size "
             f"{t.micro_batch_size} x world size {world_size}")
    return t.global_batch_size // per_step, t.global_batch_size


def save_yaml(data: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def save_text(text: str, path: Path) -> None:
    """Write `path` whole or not at all: a sibling temp file, then a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_json(data: Any, path: Path) -> None:
    save_text(json.dumps(data, indent=2, default=str) + "\n", path)
