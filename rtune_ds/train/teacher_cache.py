"""The teacher cache: a frozen teacher's outputs over a training split, computed once and reused by
every seed and arm that distills from the same teacher on the same inputs.

One safetensors file per key in the cache directory, `<key>.safetensors`. The key is a sha256
over everything the outputs depend on, which the caller names (`parts`): the teacher's identity,
the content of the inputs as the teacher reads them, the task type and the outputs kept, the
settings that change them. A changed teacher or input set is a new key: a miss, and the file is
built anew. Rank 0 writes it whole or not at all (io.staged_file); every rank reads it.

What a file holds (its layout: tensor names, shapes, dtypes) depends on the task:
- classification: the class logits, `logits` [examples, labels] fp32;
- lm, bounded (the full logits, examples × positions × vocabulary, would not fit): at every
  target position of the split (next_token_targets, row by row), the teacher's k largest logits
  `top_logits` [positions, k] fp32 (the KL is computed in fp32, and at 8k + 4 bytes per
  position, 2 kB for k = 256, a file is small beside the model), their token ids `top_ids`
  [positions, k] int32 and `lse` [positions] fp32, logsumexp(z/T) over the whole vocabulary,
  which makes the tempered probabilities of the top k exact (objectives.kd_kl_top_k). The
  file's metadata keeps how much of the teacher's tempered mass the top k left out, measured
  from the full logits at build time.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from rtune_ds import dist
from rtune_ds.files import cache_root
from rtune_ds.io import WRITE_ERRORS, staged_file
from rtune_ds.train.objectives import next_token_targets

FORMAT = 1  # bumped when what a file holds, or how its outputs are computed, changes
Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]  # tensor name -> (shape, dtype)


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


def class_logits_layout(examples: int, labels: int) -> Layout:
    return {"logits": ((examples, labels), torch.float32)}


def top_k_layout(positions: int, k: int) -> Layout:
    return {"top_logits": ((positions, k), torch.float32), "top_ids": ((positions, k), torch.int32),
            "lse": ((positions,), torch.float32)}


def target_offsets(labels: torch.Tensor) -> torch.Tensor:
    """[examples + 1]: where each example's target positions start in the split's flat list of
    them (the rows of a top-k table), and the end of the last."""
    counts = next_token_targets(labels).sum(1)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def targets_digest(labels: torch.Tensor) -> str:
    """sha256 of which positions of a split are targets: the rows of its top-k table (the same
    tokens split otherwise between prompt and completion are other rows)."""
    targets = next_token_targets(labels)
    return hashlib.sha256(f"{tuple(targets.shape)}".encode()
                          + targets.contiguous().numpy().tobytes()).hexdigest()


@dataclass
class TopK:
    """A bounded LM table of one split (top_k_layout), and where each example's rows are."""

    top_logits: torch.Tensor
    top_ids: torch.Tensor
    lse: torch.Tensor
    offsets: torch.Tensor  # target_offsets of the split

    def of_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top_logits, top_ids, lse) of the target positions of the examples `rows`, in the order
        in which next_token_targets selects them from a batch of those rows (whatever its width:
        padding has no targets)."""
        starts, ends = self.offsets[rows].tolist(), self.offsets[rows + 1].tolist()
        index = torch.cat([torch.arange(a, b) for a, b in zip(starts, ends)])
        return self.top_logits[index], self.top_ids[index], self.lse[index]


def read(path: Path, key: str, layout: Layout) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(the tensors in `path`, the summary stored with them) if the file is the one of `key` and
    has `layout`; None when absent or not (an unreadable file is built anew)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("key") != key or set(f.keys()) != set(layout):
                return None
            tensors = {name: f.get_tensor(name) for name in layout}
    except (SafetensorError, OSError):
        return None
    if any(t.dtype != layout[n][1] or tuple(t.shape) != layout[n][0] for n, t in tensors.items()):
        return None
    return tensors, json.loads(metadata.get("summary", "{}"))


def write(path: Path, key: str, parts: dict, tensors: dict[str, torch.Tensor],
          summary: dict) -> str | None:
    """Write the tensors (rank 0); None, or why they could not be written."""
    try:
        with staged_file(path) as tmp:
            save_file({n: t.contiguous() for n, t in tensors.items()}, str(tmp),
                      metadata={"key": key,
                                "parts": json.dumps(parts, sort_keys=True, default=str),
                                "summary": json.dumps(summary, sort_keys=True)})
    except WRITE_ERRORS as err:
        return str(err)
    return None


def cached_outputs(directory: str | Path, parts: dict, layout: Layout,
                   compute: Callable[[], tuple[dict[str, torch.Tensor], dict]]
                   ) -> tuple[dict[str, torch.Tensor], dict]:
    """(the teacher's outputs by tensor name, the record of the cache's use: status hit | built,
    key, file, and the summary `compute` returned with them, such as what a bounded table left
    out). Every rank calls it. A hit needs every rank to read the file (on nodes without a shared
    file system the others miss); on a miss every rank runs `compute` (its forwards are collective
    under ZeRO-3) and rank 0 stores the result. A file that cannot be written leaves the run
    going with the outputs it computed; the record says why."""
    key = cache_key(parts)
    path = Path(directory) / f"{key}.safetensors"
    found = read(path, key, layout)
    readers = dist.all_reduce_sum(torch.tensor([float(found is not None)])).item()
    if readers == dist.world_size():
        tensors, summary = found
        return tensors, {"status": "hit", "key": key, "file": str(path), **summary}
    started = time.perf_counter()
    tensors, summary = compute()
    record = {"status": "built", "key": key, "file": str(path),
              "build_s": round(time.perf_counter() - started, 3), **summary}
    # the others wait in the broadcast of rank 0's outcome until the file is in place
    error = dist.broadcast_object(write(path, key, parts, tensors, summary)
                                  if dist.is_main() else None)
    if error is not None:
        if dist.is_main():
            warnings.warn(f"teacher cache: {error}; the run goes on without storing it")
        return tensors, {**record, "stored": False, "store_error": error}
    return tensors, {**record, "stored": True}
