"""The adapted-weights bundle: what tuning a base for a task leaves behind, apart from the base.

    <bundle>/
      bundle.json              kind, method, base (path, fingerprint, model_type), task (type,
                               label names), head parameter names, target modules, metrics
      lineage.json             what made it (command, config, parent = the base, data, steps)
      delta.safetensors        kind 'delta' (full fine-tuning): θ_tuned − θ_base for every
                               backbone tensor of the task model
      head.safetensors         the task head (absolute values; a classifier's new parameters)
      adapter/                 kind 'peft': a standard PEFT adapter directory (adapter_config.json
                               + adapter_model.safetensors, head included as modules_to_save);
                               plain `PeftModel.from_pretrained(base_task_model, adapter/)` loads it

Tensors are safetensors only. Under ZeRO-3 every tensor is gathered before it is written (no
empty shards), and a PEFT run gathers and writes only its trainable parameters. This module knows
the format only; putting a bundle onto a base is recycling.transplant's (and recycling.merge's).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rtune_ds import dist
from rtune_ds.artifacts.lineage import fingerprint
from rtune_ds.config.schema import TaskType, TuningMethod
from rtune_ds.errors import ConfigError
from rtune_ds.io import save_json, staged_dir
from rtune_ds.models.loader import from_local, task_auto_class, task_model_kwargs
from rtune_ds.models.zero import (
    gather_trainable,
    gathered_state_dict,
    settle_partitions,
)

FORMAT = "rtune-bundle/1"


PEFT_PREFIX = "base_model.model."


SAVED_HEAD = ".modules_to_save.default"


def _check_full(tensors: dict[str, torch.Tensor]) -> None:
    empty = [k for k, v in tensors.items() if v.numel() == 0]
    if empty:
        raise RuntimeError(f"refusing to save empty tensors (ungathered ZeRO-3 shards?): {empty[:3]}")


def peft_head(adapter_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The head of a PEFT classifier under the task model's own names (score.weight, ...)."""
    return {k.removeprefix(PEFT_PREFIX).replace(SAVED_HEAD, ""): v
            for k, v in adapter_state.items() if SAVED_HEAD in k}


def base_state(base_dir: str | Path, task_type: str, label_names: list[str] | None,
               pad_token_id: int | None) -> dict[str, torch.Tensor]:
    """θ_base under the task model's names (the head, which the base lacks, is left out)."""
    model, missing = from_local(task_auto_class(task_type), base_dir, f"task.type '{task_type}'",
                                **task_model_kwargs(task_type, label_names, pad_token_id))
    return {k: v for k, v in model.state_dict().items() if k not in missing}


def save_bundle(engine, out_dir: Path, *, method: str, task_type: str, base_dir: str,
                label_names: list[str] | None, pad_token_id: int | None, head_names: list[str],
                targets: dict, metrics: dict, lineage: dict, tuning: dict) -> None:
    """All ranks call this; rank 0 writes `out_dir` (staged, then renamed into place)."""
    module = engine.module
    kind = "delta" if method == "full" else "peft"
    if kind == "delta":
        tuned = gathered_state_dict(engine)  # every tensor, gathered
    else:
        settle_partitions(engine)
        tuned = gather_trainable(module)  # adapter + head only
    if not dist.is_main():
        dist.barrier()
        return
    tuned = {k: v.detach().cpu().contiguous() for k, v in tuned.items()}
    _check_full(tuned)
    if kind == "delta":
        base = base_state(base_dir, task_type, label_names, pad_token_id)
        delta = {k: (tuned[k].float() - base[k].float()).contiguous() for k in base if k in tuned}
        head = {k: tuned[k] for k in head_names}
    else:
        head = peft_head(tuned)
    base_meta = {"path": str(Path(base_dir).resolve()), "fingerprint": fingerprint(base_dir),
                 "model_type": json.loads(Path(base_dir, "config.json").read_text()).get("model_type")}
    with staged_dir(out_dir) as tmp:
        files = {}
        if kind == "delta":
            save_file(delta, str(tmp / "delta.safetensors"), metadata={"format": "pt"})
            files["delta"] = "delta.safetensors"
        else:
            module.save_pretrained(str(tmp / "adapter"), state_dict=tuned, safe_serialization=True)
            files["adapter"] = "adapter"
        if head:
            save_file(head, str(tmp / "head.safetensors"), metadata={"format": "pt"})
            files["head"] = "head.safetensors"
        save_json({
            "format": FORMAT, "kind": kind, "method": method, "base": base_meta,
            "task": {"type": task_type, "labels": label_names, "pad_token_id": pad_token_id},
            "head": sorted(head), "targets": targets, "tuning": tuning, "files": files,
            "metrics": metrics,
        }, tmp / "bundle.json")
        save_json(lineage, tmp / "lineage.json")
    dist.barrier()


def read_bundle(bundle_dir: str | Path) -> dict:
    path = Path(bundle_dir, "bundle.json")
    if not path.is_file():
        raise ConfigError(f"{bundle_dir}: not an adapted-weights bundle (no bundle.json)")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path}: unknown bundle format {meta.get('format')!r}")
    for key, name in meta.get("files", {}).items():
        inside = Path(bundle_dir).resolve()
        if Path(name).is_absolute() or inside not in Path(inside, name).resolve().parents:
            raise ConfigError(f"{path}: key 'files.{key}': '{name}' points outside the bundle")
    return meta


def tensor_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes from a safetensors header. Anything else (a pickle, say) is refused
    unread: nothing in a bundle is ever unpickled."""
    try:
        with safe_open(str(file), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for foreign bytes
        raise ConfigError(f"{file}: not a safetensors file ({err}); bundles hold safetensors "
                          "only and are never unpickled") from None


@dataclass
class OldWeights:
    """What a bundle tuned on an older base brings to a new one: an rtune bundle, or a plain
    PEFT adapter directory (adapter_config.json + adapter_model.safetensors) saved by peft."""
    path: Path
    kind: str  # delta | peft
    method: str  # full | lora | ia3
    task_type: str
    labels: list[str] | None
    base: dict  # path, fingerprint (None for a plain PEFT directory), model_type
    sources: dict[str, tuple[tuple[int, ...], str]]  # tensor -> (shape, 'add' | 'set')
    files: dict[str, Path]  # tensor -> safetensors file
    metrics: dict = field(default_factory=dict)
    config: dict | None = None  # the RunConfig that made it (rtune bundles)

    @property
    def adapter_dir(self) -> Path | None:
        return next(iter(self.files.values())).parent if self.kind == "peft" else None

    def peft_config(self):
        from peft import PeftConfig

        config = PeftConfig.from_pretrained(str(self.adapter_dir))
        config.inference_mode = False
        # recycling puts it on another base by design: peft need not warn that the base changed
        config.base_model_name_or_path = None
        return config

    def read(self, name: str) -> torch.Tensor:
        with safe_open(str(self.files[name]), "pt") as f:
            return f.get_tensor(name)


def _add_sources(old: OldWeights, file: Path, how: str) -> None:
    for name, shape in tensor_shapes(file).items():
        old.sources[name], old.files[name] = (shape, how), file


def open_old_weights(path: str | Path, labels: list[str] | None, where: str) -> OldWeights:
    """Read a bundle's metadata and tensor shapes (no tensor data). `labels`: the label names a
    plain PEFT classifier directory is used with (rtune bundles carry their own)."""
    path = Path(path)
    if Path(path, "bundle.json").is_file():
        meta = read_bundle(path)
        lineage = Path(path, "lineage.json")
        old = OldWeights(path, meta["kind"], meta["method"], meta["task"]["type"],
                         meta["task"]["labels"], meta["base"], {}, {}, meta.get("metrics", {}),
                         json.loads(lineage.read_text()).get("config") if lineage.is_file() else None)
        if old.kind == "delta":
            _add_sources(old, path / meta["files"]["delta"], "add")
        else:
            _add_sources(old, path / meta["files"]["adapter"] / "adapter_model.safetensors", "set")
        if old.kind == "delta" and "head" in meta["files"]:
            _add_sources(old, path / meta["files"]["head"], "set")
        return old
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise ConfigError(f"{where}: --bundle {path}: neither an rtune bundle (bundle.json) nor a "
                          "PEFT adapter directory (adapter_config.json)")
    if not (path / "adapter_model.safetensors").is_file():
        raise ConfigError(f"{where}: --bundle {path}: no adapter_model.safetensors (pickled "
                          "adapter_model.bin files are not loaded)")
    peft_config = json.loads(config_file.read_text())
    task_type = {"SEQ_CLS": TaskType.CLASSIFICATION,
                 "CAUSAL_LM": TaskType.LM}.get(peft_config.get("task_type"))
    method = str(peft_config.get("peft_type", "")).lower()
    if task_type is None or method not in (TuningMethod.LORA, TuningMethod.IA3):
        raise ConfigError(f"{config_file}: a {peft_config.get('peft_type')} adapter for task_type "
                          f"{peft_config.get('task_type')}; rtune recycles LORA and IA3 adapters "
                          "for SEQ_CLS and CAUSAL_LM")
    classifier = task_type == TaskType.CLASSIFICATION
    if classifier and not labels:
        raise ConfigError(f"{where}: key 'task.labels': a plain PEFT classifier carries no label "
                          "names; give task.labels or a task.train file with the labels")
    old = OldWeights(path, "peft", method, task_type, labels if classifier else None,
                     {"path": peft_config.get("base_model_name_or_path"), "fingerprint": None,
                      "model_type": None}, {}, {})
    _add_sources(old, path / "adapter_model.safetensors", "set")
    return old
