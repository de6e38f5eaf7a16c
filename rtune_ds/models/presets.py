"""Named presets of tiny Llama-style causal LMs and RoBERTa-style masked LMs."""
from __future__ import annotations

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
)

from rtune_ds.config.schema import PRESETS

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

