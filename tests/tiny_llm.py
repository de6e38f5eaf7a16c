"""A tiny stand-in for a released LLM shipped as GGUF, for the tests that import such files.

`smollm_like` writes a HF directory shaped like SmolLM2-135M-Instruct's (Llama, tied embeddings,
GQA, a byte-level BPE tokenizer with ChatML special tokens and chat template), and `write_gguf`
writes its GGUF as llama.cpp's convert_hf_to_gguf.py does for such a model, in F32, so a test can
expect transformers to load back the very same weights and tokenizer.
"""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import torch
from safetensors.torch import load_file
from tokenizers import ByteLevelBPETokenizer, Tokenizer
from transformers import (
    AutoConfig,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

FIXTURES = Path(__file__).parent / "fixtures"

# SmolLM2's special tokens, at the ids SmolLM2 has them
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                 "{{ message['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def smollm_like(out_dir: Path, pad: bool = True) -> Path:
    """Write to `out_dir` a seeded 2-layer `LlamaForCausalLM` and its tokenizer, saved as
    SmolLM2-135M-Instruct is: BOS <|im_start|>, EOS <|im_end|>, UNK <|endoftext|>, and the pad
    token EOS, or none at all with `pad=False` (GPT-2 style). Same call, same bytes."""
    texts = [json.loads(line)["text"] for name in ("general.jsonl", "computing.jsonl")
             for line in (FIXTURES / name).read_text().splitlines() if line.strip()]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=2, show_progress=False,
                            special_tokens=[ENDOFTEXT, IM_START, IM_END])
    specials = {"bos_token": IM_START, "eos_token": IM_END, "unk_token": ENDOFTEXT}
    if pad:
        specials["pad_token"] = IM_END
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(bpe.to_str()),
                                        chat_template=CHAT_TEMPLATE, **specials)

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, rms_norm_eps=1e-5,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    # the caller's random stream is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def llama_permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """convert_hf_to_gguf.py's `LlamaModel.permute`: HF orders each head's rotary dimensions as
    two halves, llama.cpp as interleaved pairs. transformers undoes this on load."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def write_gguf(hf_dir: Path, gguf_file: Path) -> Path:
    """Write the Llama HF directory `hf_dir` (byte-level BPE tokenizer, one safetensors file) as
    the F32 GGUF `gguf_file`, with the keys and tensor names convert_hf_to_gguf.py gives it.

    Put the file in a directory of its own, as GGUF repos are: given a directory that also holds a
    tokenizer.json, `AutoTokenizer.from_pretrained(dir, gguf_file=...)` builds the tokenizer from
    that file and drops the GGUF's special tokens and chat template."""
    gguf_file.parent.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    writer = gguf.GGUFWriter(gguf_file, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])

    writer.add_name(hf_dir.name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(config.head_dim)

    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    if [vocab[token] for token in tokens] != list(range(config.vocab_size)):
        raise ValueError(f"{hf_dir}: token ids are not 0..{config.vocab_size - 1}")
    special = {added.content for added in tokenizer.added_tokens_decoder.values() if added.special}
    writer.add_tokenizer_model("gpt2")
    # what SmolLM2's GGUFs say; transformers has no split regex listed for it and so splits with
    # GPT-2's, as ByteLevelBPETokenizer does
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL
                            for token in tokens])
    # merges, special token ids and chat template, read from the HF files as the converter does
    gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, weight in load_file(hf_dir / "model.safetensors").items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if hf_name.endswith("self_attn.q_proj.weight"):
            weight = llama_permute(weight, config.num_attention_heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            weight = llama_permute(weight, config.num_key_value_heads)
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"{hf_dir}: no GGUF name for tensor {hf_name}")
        writer.add_tensor(gguf_name, weight.to(torch.float32).numpy())

    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf_file
