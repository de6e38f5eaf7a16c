"""The project's own byte-level BPE tokenizer (no hub), trained on the run's training text."""
from __future__ import annotations

import hashlib
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rtune_ds.data.corpus import load_texts
from rtune_ds.io import staged_dir

SPECIALS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>", "mask_token": "<mask>"}


def tokenizer_hash(tokenizer) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


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


def load_tokenizer(path: str | Path):
    return AutoTokenizer.from_pretrained(str(path))


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
