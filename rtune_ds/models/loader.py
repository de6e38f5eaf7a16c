"""The one loader of local Hugging Face directories (no hub): base and task models, ZeRO-3 aware,
and meta-device models for planning without weights."""
from __future__ import annotations

from pathlib import Path

import torch
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


def load_local(path: str | Path, objective: str, ds_config: dict | None = None,
               trust_remote_code: bool = False):
    """A base model (causal or masked LM) for pretraining, ZeRO-3 aware."""
    auto = AutoModelForCausalLM if objective == "clm" else AutoModelForMaskedLM
    return from_local(auto, path, f"objective '{objective}'", ds_config, trust_remote_code)[0]


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
    """Module names of the task model of `path`."""
    return [name for name, _ in meta_task_model(path, task_type).named_modules() if name]


def init_head(model: torch.nn.Module, names: list[str], seed: int) -> None:
    """Initialise the new task head (`names`: the parameters the base did not have) from `seed`
    alone, the same way on every rank and ZeRO stage: weights N(0, initializer_range), biases 0."""
    import deepspeed

    std = getattr(model.config, "initializer_range", 0.02)
    g = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    for name in sorted(names):
        param = model.get_parameter(name)
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
            shape = getattr(param, "ds_shape", param.shape)
            value = (torch.zeros(shape) if name.endswith("bias")
                     else torch.randn(shape, generator=g) * std)
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

