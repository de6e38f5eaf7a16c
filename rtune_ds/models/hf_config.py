"""What a local Hugging Face model directory's config.json says: objective, sizes, architecture."""
from __future__ import annotations

import json
from pathlib import Path

from rtune_ds.errors import ConfigError


def read_hf_config(path: str | Path) -> dict:
    return json.loads(Path(path, "config.json").read_text())


def objective_of(path: str | Path) -> str:
    """clm or mlm, from the architectures a saved HF config names."""
    config = read_hf_config(path)
    archs = " ".join(config.get("architectures") or [])
    if "MaskedLM" in archs:
        return "mlm"
    if "CausalLM" in archs:
        return "clm"
    if archs.endswith("Model") and not config.get("is_decoder") and is_encoder(config):
        return "mlm"  # a bare encoder as released (BertModel): its pretraining objective
    raise ConfigError(f"{path}/config.json: cannot tell the objective from architectures "
                      f"{archs!r}; set model.objective")


def is_encoder(config: dict) -> bool:
    """Whether transformers has a masked LM for the config's model_type (BERT, RoBERTa, ...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.get("model_type") in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def hidden_size_of(path: str | Path) -> int:
    cfg = read_hf_config(path)
    return cfg.get("hidden_size") or cfg.get("d_model") or cfg.get("n_embd") or 768


def check_task_architecture(path: str | Path, task_type: str, where: str) -> str:
    """The base's model_type, if transformers has a model of it for the task; else a ConfigError."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

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


POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length",
                 "seq_length", "max_seq_len")
# learned positions that start after the padding index (RoBERTa's position ids), so
# max_position_embeddings less padding_idx + 1 of them are left for the tokens
PADDING_OFFSET_TYPES = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer",
                        "ibert", "data2vec-text", "roberta-prelayernorm", "xmod", "mpnet")


def check_positions(path: str, length: int, key: str, what: str, where: str) -> None:
    """`length` tokens must fit the positions of the model at `path` (its config.json), or the
    first batch crashes (learned positions) or runs for ever (a far too long block)."""
    hf = read_hf_config(path)
    key_found = next((k for k in POSITION_KEYS if isinstance(hf.get(k), int)), None)
    if key_found is None:
        return
    limit, why = hf[key_found], f"config.json {key_found}"
    if hf.get("model_type") in PADDING_OFFSET_TYPES:
        offset = (hf.get("pad_token_id") or 0) + 1
        limit, why = limit - offset, f"{why} {hf[key_found]} less the padding offset {offset}"
    if length > limit:
        raise ConfigError(f"{where}: key '{key}': {length} tokens {what}, but the model at {path} "
                          f"takes at most {limit} ({why})")
