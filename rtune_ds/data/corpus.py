"""Corpora through `datasets`: read local files, tokenise, pack into fixed-length blocks, cache.

A packed corpus is cached under a key made of the file's content hash, the tokenizer's hash, the
block length, the text field and the version of the packing rule, so neither a changed input nor
a cache built by older code is ever reused.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from rtune_ds.errors import ConfigError
from rtune_ds.files import cache_root, sha256_files
from rtune_ds.io import staged_dir

datasets.logging.set_verbosity_error()
datasets.disable_progress_bars()

LOADERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json",
           ".parquet": "parquet"}
SPLIT_SEED = 1234  # fixed, so every run (and every model version) holds out the same blocks
PACKING_RULE_VERSION = 2  # bump when pack() would cut other blocks from the same tokens


def default_cache_root() -> Path:
    return cache_root() / "packed"


def content_hash(path: str | Path) -> str:
    """sha256 of a file, or of every file below a directory (names and bytes)."""
    path = Path(path)
    if path.is_dir():
        return sha256_files(path, sorted(p for p in path.rglob("*") if p.is_file()))
    return sha256_files(path.parent, [path])


def load_texts(path: str | Path, text_field: str) -> datasets.Dataset:
    """A dataset with one column `text` from a text/jsonl/json/parquet file or a saved dataset dir."""
    path = Path(path)
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError as err:
            raise ConfigError(f"{path}: not a dataset saved with save_to_disk ({err})") from None
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    else:
        loader = LOADERS.get(path.suffix)
        if loader is None:
            raise ConfigError(f"{path}: unsupported data file type '{path.suffix}' "
                              f"(known: {', '.join(LOADERS)})")
        try:
            ds = datasets.load_dataset(loader, data_files=str(path), split="train")
        except Exception as err:  # datasets raises many types for unreadable input
            raise ConfigError(f"{path}: cannot read data file: {err}") from None
    field = "text" if loader_is_text(path) else text_field
    if field not in ds.column_names:
        raise ConfigError(f"{path}: no '{field}' column (columns: {ds.column_names}); "
                          "set data.text_field")
    ds = ds.select_columns([field])
    if field != "text":
        ds = ds.rename_column(field, "text")
    ds = ds.filter(lambda row: bool(row["text"] and row["text"].strip()))
    if len(ds) == 0:
        raise ConfigError(f"{path}: empty dataset (no non-blank '{field}' values)")
    return ds


def loader_is_text(path: Path) -> bool:
    return path.is_file() and LOADERS.get(path.suffix) == "text"


@dataclass(frozen=True)
class PackingRule:
    """How documents are joined: `end` after each one; with `cls`, every block is framed
    [CLS] ... [SEP] (end = [SEP])."""
    end: int
    cls: int | None = None


def packing_rule(tokenizer, where: str = "") -> PackingRule:
    """The tokenizer's own convention: EOS after each document (causal LMs, byte-level BPE), or
    BERT's [SEP] between documents with every block framed [CLS] ... [SEP] (WordPiece has no EOS).
    A tokenizer with neither cannot mark where a document ends, so it is refused by name."""
    if tokenizer.eos_token_id is not None:
        return PackingRule(tokenizer.eos_token_id)
    if tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None:
        return PackingRule(tokenizer.sep_token_id, tokenizer.cls_token_id)
    missing = [name for name in ("cls_token", "sep_token")
               if getattr(tokenizer, f"{name}_id") is None]
    name = tokenizer.name_or_path or type(tokenizer).__name__
    raise ConfigError(f"{where + ': ' if where else ''}tokenizer {name}: cannot pack documents: it "
                      f"has no eos_token and no {' or '.join(missing)} (packing needs an EOS, or "
                      "[CLS] and [SEP] as BERT tokenizers have)")


def pack(texts: datasets.Dataset, tokenizer, seq_len: int) -> datasets.Dataset:
    """Tokenise every document, end it by the packing rule, concatenate, cut into blocks of seq_len
    (framed [CLS] ... [SEP] for BERT-style tokenizers); the tail shorter than a block is dropped."""
    rule = packing_rule(tokenizer)
    body = seq_len - 2 if rule.cls is not None else seq_len
    if body < 1:
        raise ConfigError(f"data.seq_len={seq_len}: too short for blocks framed [CLS] ... [SEP] "
                          f"by tokenizer {tokenizer.name_or_path}")

    def tokenize(batch):
        # verbose=False: documents longer than model_max_length are expected, they are cut below
        ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
        # an empty document would put two separators in a row inside a framed block
        return {"ids": [doc + [rule.end] for doc in ids if doc or rule.cls is None]}

    def group(batch):
        flat = [tok for doc in batch["ids"] for tok in doc]
        if rule.cls is None:
            usable = len(flat) // seq_len * seq_len
            return {"input_ids": [flat[i:i + seq_len] for i in range(0, usable, seq_len)]}
        blocks, i = [], 0
        while True:
            # a separator at a block's start is dropped: the previous block's closing [SEP]
            # already marks that boundary, and "[CLS] [SEP]" would be an empty document
            while i < len(flat) and flat[i] == rule.end:
                i += 1
            if i + body > len(flat):
                return {"input_ids": blocks}
            blocks.append([rule.cls, *flat[i:i + body], rule.end])
            i += body

    tokens = texts.map(tokenize, batched=True, remove_columns=["text"])
    # one group for the whole corpus, so no tokens are lost at map-batch boundaries
    return tokens.map(group, batched=True, batch_size=len(tokens) or 1, remove_columns=["ids"])


def packed_blocks(path: str, tokenizer, tokenizer_hash: str, seq_len: int, text_field: str,
                  cache_root: Path) -> torch.Tensor:
    """[n_blocks, seq_len] int64 token blocks of one source, from the cache or built now."""
    key = hashlib.sha256(f"{content_hash(path)}|{tokenizer_hash}|{seq_len}|{text_field}"
                         f"|v{PACKING_RULE_VERSION}".encode()).hexdigest()[:24]
    target = cache_root / f"{Path(path).name}-{key}"
    if not target.is_dir():
        blocks = pack(load_texts(path, text_field), tokenizer, seq_len)
        with staged_dir(target, first_wins=True) as tmp:
            blocks.save_to_disk(str(tmp))
    ds = datasets.load_from_disk(str(target)).with_format("torch")
    if len(ds) == 0:
        return torch.empty(0, seq_len, dtype=torch.long)
    return ds[:]["input_ids"].long()


def split_blocks(blocks: torch.Tensor, eval_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, eval) blocks; the held-out set is a fixed random subset (seeded by SPLIT_SEED)."""
    n_eval = int(round(len(blocks) * eval_fraction))
    if eval_fraction > 0 and len(blocks) > 1:
        n_eval = max(1, n_eval)
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(SPLIT_SEED))
    return blocks[order[n_eval:]], blocks[order[:n_eval]]
