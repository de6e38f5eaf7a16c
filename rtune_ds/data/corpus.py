"""Corpora through `datasets`: read local files, tokenise, pack into fixed-length blocks, cache.

A packed corpus is cached under a key made of the file's content hash, the tokenizer's hash, the
block length, the text field and the version of the packing rule, so neither a changed input nor
a cache built by older code is ever reused.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import datasets
import torch

from rtune_ds.errors import ConfigError
from rtune_ds.io import staged_dir

datasets.logging.set_verbosity_error()
datasets.disable_progress_bars()

LOADERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json",
           ".parquet": "parquet"}
SPLIT_SEED = 1234  # fixed, so every run (and every model version) holds out the same blocks
PACKING_RULE_VERSION = 1  # bump when pack() would cut other blocks from the same tokens


def default_cache_root() -> Path:
    return Path(os.environ.get("RTUNE_CACHE", Path.home() / ".cache" / "rtune_ds")) / "packed"


def content_hash(path: str | Path) -> str:
    """sha256 of a file, or of every file below a directory (names and bytes)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


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


def pack(texts: datasets.Dataset, tokenizer, seq_len: int) -> datasets.Dataset:
    """Tokenise every document, end it with EOS, concatenate, cut into blocks of seq_len."""
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"ids": [doc + [eos] for doc in ids]}

    def group(batch):
        flat = [tok for doc in batch["ids"] for tok in doc]
        usable = len(flat) // seq_len * seq_len
        return {"input_ids": [flat[i:i + seq_len] for i in range(0, usable, seq_len)]}

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
