"""What a local Hugging Face model directory's config.json says: objective, sizes, architecture."""
from __future__ import annotations

import json
from pathlib import Path

from rtune_ds.errors import ConfigError


def read_hf_config(path: str | Path) -> dict:
    return json.loads(Path(path, "config.json").read_text())


def objective_of(path: str | Path) -> str:
    """clm or mlm, from the architectures a saved HF config names."""
    archs = " ".join(read_hf_config(path).get("architectures") or [])
    if "MaskedLM" in archs:
        return "mlm"
    if "CausalLM" in archs:
        return "clm"
    raise ConfigError(f"{path}/config.json: cannot tell the objective from architectures "
                      f"{archs!r}; set model.objective")


def hidden_size_of(path: str | Path) -> int:
    cfg = read_hf_config(path)
    return cfg.get("hidden_size") or cfg.get("d_model") or cfg.get("n_embd") or 768


def check_task_architecture(path: str | Path, task_type: str, where: str) -> str:
    """The base's model_type, if transformers has a model of it for the task; else a ConfigError."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)

    model_type = read_hf_config(path).get("model_type")
    archs = " ".join(read_hf_config(path).get("architectures") or [])
    if task_type == "lm" and archs and "CausalLM" not in archs:
        raise ConfigError(f"{where}: key 'model.path': task.type 'lm' tunes a causal-LM base, but "
                          f"the base at {path} is a '{model_type}' {archs}")
    known = (MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES if task_type == "classification"
             else MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    if model_type not in known:
        raise ConfigError(f"{where}: key 'model.path': the base at {path} is a '{model_type}' "
                          f"model, which has no {'sequence-classification' if task_type == 'classification' else 'causal-LM'} "
                          f"form for task.type '{task_type}'")
    return model_type

