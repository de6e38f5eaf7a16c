"""Models: named presets of tiny Llama-style causal LMs and RoBERTa-style masked LMs, or any local
Hugging Face directory (no hub)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoModelForMaskedLM, LlamaConfig,
                          LlamaForCausalLM, RobertaConfig, RobertaForMaskedLM)

from transformers.integrations import HfDeepSpeedConfig

from rtune_ds.config import ConfigError

# name: (family, vocab, hidden, layers, heads, intermediate)
PRESETS = {
    "llama-1m": ("llama", 4096, 128, 2, 4, 512),
    "llama-10m": ("llama", 8192, 256, 6, 8, 1024),
    "llama-30m": ("llama", 8192, 384, 10, 6, 1536),
    "llama-100m": ("llama", 16384, 768, 12, 12, 2048),
    "roberta-1m": ("roberta", 4096, 128, 2, 4, 512),
    "roberta-10m": ("roberta", 8192, 256, 6, 8, 1024),
    "roberta-30m": ("roberta", 8192, 384, 10, 6, 1536),
    "roberta-100m": ("roberta", 16384, 768, 12, 12, 2048),
}
FAMILY_OBJECTIVE = {"llama": "clm", "roberta": "mlm"}


def preset_vocab_size(name: str) -> int:
    return PRESETS[name][1]


def preset_hidden_size(name: str) -> int:
    return PRESETS[name][2]


def preset_objective(name: str) -> str:
    return FAMILY_OBJECTIVE[PRESETS[name][0]]


def build_preset(name: str, tokenizer, seq_len: int, seed: int) -> torch.nn.Module:
    family, _, hidden, layers, heads, inter = PRESETS[name]
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, intermediate_size=inter,
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    if family == "llama":
        config = LlamaConfig(**common, num_key_value_heads=heads, tie_word_embeddings=True,
                             max_position_embeddings=max(seq_len, 256))
        return LlamaForCausalLM(config)
    # no dropout: pretraining at this scale does not need it, and resumes stay exact
    config = RobertaConfig(**common, max_position_embeddings=max(seq_len, 256) + 2,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                           type_vocab_size=1)
    return RobertaForMaskedLM(config)


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


def load_local(path: str | Path, objective: str, ds_config: dict | None = None,
               trust_remote_code: bool = False):
    """Load a local HF directory. Under ZeRO-3 every rank loads only its shard: transformers
    reads the live HfDeepSpeedConfig and builds the model inside zero.Init."""
    auto = AutoModelForCausalLM if objective == "clm" else AutoModelForMaskedLM
    zero3 = ds_config is not None and ds_config.get("zero_optimization", {}).get("stage") == 3
    hf_ds_config = HfDeepSpeedConfig(ds_config) if zero3 else None  # must live during loading
    try:
        return auto.from_pretrained(str(path), dtype=torch.float32,
                                    trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot load a model for objective '{objective}': {err}") from None
    finally:
        del hf_ds_config


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
