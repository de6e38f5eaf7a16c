"""The one loader of local Hugging Face directories (no hub): base and task models, ZeRO-3 aware,
and meta-device models for planning without weights."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
from transformers.integrations import HfDeepSpeedConfig

from rtune_ds.errors import ConfigError


def from_local(auto, path: str | Path, what: str, ds_config: dict | None = None,
               trust_remote_code: bool = False, **kwargs) -> tuple[torch.nn.Module, set[str]]:
    """Every model read from a local HF directory goes through here: (model, the names the
    checkpoint did not hold). Under ZeRO-3 each rank loads only its shard: transformers reads the
    live HfDeepSpeedConfig and builds the model inside zero.Init. `what` names what was asked for
    in the error."""
    zero3 = ds_config is not None and ds_config.get("zero_optimization", {}).get("stage") == 3
    # transformers holds it only by a weak reference: it must stay alive during from_pretrained
    hf_ds_config = HfDeepSpeedConfig(ds_config) if zero3 else None
    try:
        model, info = auto.from_pretrained(str(path), dtype=torch.float32,
                                           trust_remote_code=trust_remote_code,
                                           output_loading_info=True, **kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot load a model for {what}: {err}") from None
    finally:
        del hf_ds_config
    return model, set(info["missing_keys"])


def base_auto_class(objective: str):
    return AutoModelForCausalLM if objective == "clm" else AutoModelForMaskedLM


def load_local(path: str | Path, objective: str, ds_config: dict | None = None,
               trust_remote_code: bool = False) -> tuple[torch.nn.Module, set[str]]:
    """(a base model (causal or masked LM) for pretraining, ZeRO-3 aware; the names the
    checkpoint did not hold)."""
    return from_local(base_auto_class(objective), path, f"objective '{objective}'", ds_config,
                      trust_remote_code)


def meta_base_model(path: str | Path, objective: str,
                    trust_remote_code: bool = False) -> torch.nn.Module:
    """The pretraining model of `path` on the meta device: names and shapes, no weights."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return base_auto_class(objective).from_config(config, trust_remote_code=trust_remote_code)


def checkpoint_files(path: str | Path, where: str) -> dict[str, Path]:
    """Each tensor name of the safetensors weights at `path` -> the file that holds it (names
    only: no tensor is read)."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    single = path / "model.safetensors"
    if not single.is_file():
        raise ConfigError(f"{where}: key 'model.path': {path} has no safetensors weights "
                          "(model.safetensors or its index); rtune reads a parent's weights only "
                          "from safetensors, never from pickles: convert it first")
    with safe_open(str(single), "pt") as fh:
        return dict.fromkeys(fh.keys(), single)


def read_tensors(files: dict[str, Path], names) -> dict[str, torch.Tensor]:
    """The tensors `names` as stored (dtype and bits) in the safetensors `files` maps them to."""
    out = {}
    for file in sorted({files[name] for name in names}):
        with safe_open(str(file), "pt") as fh:
            out.update({name: fh.get_tensor(name) for name in names if files[name] == file})
    return out


def held_names(model: torch.nn.Module) -> tuple[set[str], set[str]]:
    """(every name a parameter of `model` goes by, tied aliases included; its buffers' names)."""
    return ({name for name, _ in model.named_parameters(remove_duplicate=False)},
            {name for name, _ in model.named_buffers(remove_duplicate=False)})


def names_in_model(model: torch.nn.Module, checkpoint_names) -> dict[str, str]:
    """Each checkpoint tensor name -> its name in `model`, as transformers maps it on loading (its
    renamings, legacy `LayerNorm.gamma` included; the base_model_prefix added or stripped): a
    base-model checkpoint (BertModel: `pooler.dense.weight`) loaded into a class with a head gets
    the prefix (`bert.pooler.dense.weight`). A tensor `model` does not hold keeps the checkpoint's
    convention: prefixed if the checkpoint holds only the base model."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    params, buffers = held_names(model)
    held = dict.fromkeys(params | buffers, True)
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    prefix = getattr(model, "base_model_prefix", "")
    base_only = (bool(prefix) and isinstance(getattr(model, prefix, None), torch.nn.Module)
                 and not any(name.startswith(f"{prefix}.") for name in checkpoint_names))
    mapped = {}
    for name in checkpoint_names:
        renamed = rename_source_key(name, renamings, converters, prefix or None, held)[0]
        if renamed not in held and name in held:
            renamed = name
        mapped[name] = f"{prefix}.{renamed}" if renamed not in held and base_only else renamed
    return mapped


@dataclass
class ParentTensors:
    """How a parent checkpoint's tensors meet the model trained from it."""
    carried: dict[str, str]  # the model does not hold it: name in the model's naming -> parent's
    recomputed: list[str]  # parent tensors that are buffers the model recomputes (not saved)
    new: list[str]  # the model's parameters the parent does not hold: initialised afresh


def compare_with_parent(model: torch.nn.Module, checkpoint_names) -> ParentTensors:
    """Which of the parent's tensors `model` cannot hold, and which of its parameters are new
    (a tied parameter is new only if the parent holds it under none of its names)."""
    mapped = names_in_model(model, checkpoint_names)
    params, buffers = held_names(model)
    carried = {mine: theirs for theirs, mine in sorted(mapped.items())
               if mine not in params and mine not in buffers}
    saved_buffers = {f"{module_name}.{name}" if module_name else name
                     for module_name, module in model.named_modules()
                     for name, _ in module.named_buffers(recurse=False)
                     if name not in module._non_persistent_buffers_set}
    recomputed = sorted(theirs for theirs, mine in mapped.items()
                        if mine in buffers and mine not in saved_buffers)
    aliases: dict[int, set[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), set()).add(name)
    have = set(mapped.values())
    new = [name for name, param in model.named_parameters() if not aliases[id(param)] & have]
    return ParentTensors(carried, recomputed, new)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def task_auto_class(task_type: str):
    from transformers import AutoModelForSequenceClassification

    if task_type == "classification":
        return AutoModelForSequenceClassification
    return AutoModelForCausalLM


def task_model_kwargs(task_type: str, label_names: list[str] | None,
                      pad_token_id: int | None) -> dict:
    if task_type != "classification":
        return {}
    return {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
            "label2id": {name: i for i, name in enumerate(label_names)},
            "pad_token_id": pad_token_id}


def meta_task_model(path: str | Path, task_type: str, label_names: list[str] | None = None,
                    peft_config=None) -> torch.nn.Module:
    """The task model of `path` (PEFT-wrapped if a config is given) on the meta device: names and
    shapes without weights or compute."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    kwargs = task_model_kwargs(task_type, label_names or ["a", "b"], config.pad_token_id)
    for key, value in kwargs.items():
        setattr(config, key, value)
    with torch.device("meta"):
        model = task_auto_class(task_type).from_config(config)
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
    return model


def module_names_of(path: str | Path, task_type: str) -> list[str]:
    """Module names of the task model of `path` (a library of bundles asks once per bundle)."""
    config = Path(path, "config.json")
    return list(_module_names(str(Path(path).resolve()), task_type,
                              config.stat().st_mtime_ns if config.is_file() else 0))


@functools.lru_cache(maxsize=16)
def _module_names(path: str, task_type: str, config_mtime_ns: int) -> tuple[str, ...]:
    return tuple(name for name, _ in meta_task_model(path, task_type).named_modules() if name)


def init_head(model: torch.nn.Module, names: list[str], seed: int) -> None:
    """Initialise a new head (`names`: the parameters the base did not have) from `seed` alone,
    the same way on every rank and ZeRO stage: weights N(0, initializer_range), biases 0, norm
    scales 1 (an MLM head's transform has a LayerNorm)."""
    import deepspeed

    std = getattr(model.config, "initializer_range", 0.02)
    g = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    for name in sorted(names):
        param = model.get_parameter(name)
        owner = model.get_submodule(name.rpartition(".")[0])
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
            shape = getattr(param, "ds_shape", param.shape)
            if name.endswith("bias"):
                value = torch.zeros(shape)
            elif "norm" in type(owner).__name__.lower():
                value = torch.ones(shape)
            else:
                value = torch.randn(shape, generator=g) * std
            param.data.copy_(value.to(param.dtype))


def load_task_model(path: str | Path, task_type: str, label_names: list[str] | None,
                    pad_token_id: int | None, ds_config: dict | None, seed: int,
                    trust_remote_code: bool = False):
    """(model, head parameter names). Under ZeRO-3 each rank loads only its shard. The head (the
    parameters a classifier adds to the base) is initialised from the seed."""
    model, missing = from_local(task_auto_class(task_type), path, f"task.type '{task_type}'",
                                ds_config, trust_remote_code,
                                **task_model_kwargs(task_type, label_names, pad_token_id))
    head = sorted(missing & {n for n, _ in model.named_parameters()})
    init_head(model, head, seed)
    return model, head

