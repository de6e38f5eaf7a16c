"""The project's own byte-level BPE tokenizer (no hub), trained on the run's training text."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rtune_ds.data.corpus import load_texts
from rtune_ds.io import staged_dir

SPECIALS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>", "mask_token": "<mask>"}


# What decides the ids of a text: the post-processor too, since it picks the special ids placed
# around every encoded sequence. Not truncation or padding (call-time settings that released
# tokenizer.json files carry and an export or a first call drops), nor the decoder (ids -> text).
ID_DECIDING = ("model", "normalizer", "pre_tokenizer", "post_processor", "added_tokens")


def tokenizer_hash(tokenizer) -> str:
    """A digest of what maps text to token ids: the backend's model (vocab, merges, unk, subword
    prefix...), normalizer, pre-tokenizer, post-processor and added tokens with their ids, and the
    ids of the special-token roles (which id ends a document, masks, pads)."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    parts = {key: backend.get(key) for key in ID_DECIDING}
    model = parts["model"] or {}
    if isinstance(model.get("merges"), list):  # "a b" (older tokenizers) or ["a", "b"]
        model["merges"] = [m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"]]
    parts["roles"] = {role: tokenizer.convert_tokens_to_ids(tok)
                      for role, tok in tokenizer.special_tokens_map.items()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def train_tokenizer(paths: list[str], text_field: str, vocab_size: int, out_dir: Path):
    """Train a byte-level BPE on the texts of `paths`; save an HF tokenizer dir (staged). When
    another rank or run finished `out_dir` first, its tokenizer (the same one) is kept."""
    bpe = ByteLevelBPETokenizer()

    def texts():
        for path in paths:
            for batch in load_texts(path, text_field).iter(batch_size=1000):
                yield from batch["text"]

    bpe.train_from_iterator(texts(), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=list(SPECIALS.values()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, **SPECIALS)
    with staged_dir(out_dir, first_wins=True) as tmp:
        tok.save_pretrained(str(tmp))
    return load_tokenizer(out_dir)


# set on a tokenizer that had no pad token: its EOS pads, as HF users expect of GPT-2-style ones
PAD_FROM_EOS = "rtune_pad_from_eos"


def load_tokenizer(path: str | Path, **kwargs):
    """The tokenizer of a local directory. One with no pad token pads with its EOS (padding is
    masked out of attention and loss, so the EOS id serves); `pad_record` says so for lineage."""
    tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        setattr(tokenizer, PAD_FROM_EOS, True)
    return tokenizer


def pad_record(tokenizer) -> dict:
    """The pad token and where it came from, for lineage records."""
    return {"token": tokenizer.pad_token, "id": tokenizer.pad_token_id,
            "source": ("eos: the tokenizer has no pad token" if getattr(tokenizer, PAD_FROM_EOS,
                                                                         False)
                       else "the tokenizer's own")}


def resolve_tokenizer(model_path: str | None, tokenizer_path: str | None, train_paths: list[str],
                      text_field: str, vocab_size: int, cache_root: Path):
    """The model dir's tokenizer, a given one, or one trained on the training text (cached)."""
    if tokenizer_path or model_path:
        return load_tokenizer(tokenizer_path or model_path)
    from rtune_ds.data.corpus import content_hash

    key = hashlib.sha256("|".join([*(content_hash(p) for p in train_paths), text_field,
                                   str(vocab_size), "bpe-v1"]).encode()).hexdigest()[:24]
    target = cache_root / "tokenizers" / key
    if target.is_dir():
        return load_tokenizer(target)
    return train_tokenizer(train_paths, text_field, vocab_size, target)
