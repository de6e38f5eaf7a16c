"""The teacher cache: a frozen teacher's outputs over a training split, computed once and reused by
every seed and arm that distills from the same teacher on the same inputs.

One safetensors file per key in the cache directory, `<key>.safetensors`. The key is a sha256
over everything the outputs depend on, which the caller names (`parts`): the teacher's identity,
the content of the inputs as the teacher reads them, the task type and the outputs kept, the
settings that change them. A changed teacher or input set is a new key: a miss, and the file is
built anew. Rank 0 writes it whole or not at all (io.staged_file); every rank reads it.
Only class logits ([examples, labels], fp32) are cached today; the key's `task_type` leaves room
for LM outputs.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from rtune_ds import dist
from rtune_ds.files import cache_root
from rtune_ds.io import WRITE_ERRORS, staged_file

FORMAT = 1  # bumped when what a file holds, or how its outputs are computed, changes
TENSOR = "logits"


def default_dir() -> Path:
    return cache_root() / "teacher"


def inputs_digest(examples) -> str:
    """sha256 of a split's inputs as the model reads them: token ids and attention masks."""
    digest = hashlib.sha256()
    for tensor in (examples.input_ids, examples.attention_mask):
        digest.update(f"{tuple(tensor.shape)} {tensor.dtype}".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps({"format": FORMAT, **parts}, sort_keys=True,
                                     default=str).encode()).hexdigest()


def read(path: Path, key: str, shape: tuple[int, int]) -> torch.Tensor | None:
    """The table in `path` if it is the one of `key` and has `shape`; None when absent or not
    (an unreadable file is built anew)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") != key or TENSOR not in f.keys():
                return None
            table = f.get_tensor(TENSOR)
    except (SafetensorError, OSError):
        return None
    return table if table.dtype == torch.float32 and tuple(table.shape) == shape else None


def write(path: Path, key: str, parts: dict, table: torch.Tensor) -> str | None:
    """Write the table (rank 0); None, or why it could not be written."""
    try:
        with staged_file(path) as tmp:
            save_file({TENSOR: table.contiguous()}, str(tmp),
                      metadata={"key": key, "parts": json.dumps(parts, sort_keys=True,
                                                                default=str)})
    except WRITE_ERRORS as err:
        return str(err)
    return None


def cached_outputs(directory: str | Path, parts: dict, shape: tuple[int, int],
                   compute: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """(the teacher's outputs, the record of the cache's use: status hit | built, key, file).
    Every rank calls it. A hit needs every rank to read the file (on nodes without a shared file
    system the others miss); on a miss every rank runs `compute` (its forwards are collective
    under ZeRO-3) and rank 0 stores the result. A file that cannot be written leaves the run
    going with the outputs it computed; the record says why."""
    key = cache_key(parts)
    path = Path(directory) / f"{key}.safetensors"
    table = read(path, key, shape)
    readers = dist.all_reduce_sum(torch.tensor([float(table is not None)])).item()
    if readers == dist.world_size():
        return table, {"status": "hit", "key": key, "file": str(path)}
    started = time.perf_counter()
    table = compute()
    record = {"status": "built", "key": key, "file": str(path),
              "build_s": round(time.perf_counter() - started, 3)}
    # the others wait in the broadcast of rank 0's outcome until the file is in place
    error = dist.broadcast_object(write(path, key, parts, table) if dist.is_main() else None)
    if error is not None:
        if dist.is_main():
            warnings.warn(f"teacher cache: {error}; the run goes on without storing it")
        return table, {**record, "stored": False, "store_error": error}
    return table, {**record, "stored": True}
