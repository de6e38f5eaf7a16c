"""Resolve a DeepSpeed JSON against the RunConfig, as HF's integration does.

"auto" (or a missing key) takes the RunConfig's value; a literal that agrees is kept; a literal
that contradicts the RunConfig is an error naming both. The optimizer comes from the RunConfig when
the JSON has none; the LR schedule always does (a JSON "scheduler" section is refused).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

from rtune_ds.config.load import read_mapping
from rtune_ds.config.schema import Precision, RunConfig
from rtune_ds.errors import ConfigError
from rtune_ds.hardware import native_bf16
from rtune_ds.resources import DS_CONFIGS


def read_ds_config(path: str | None) -> tuple[dict, str]:
    """The DeepSpeed JSON at `path` (default: the stock zero0.json) and its path."""
    path = Path(path) if path else DS_CONFIGS / "zero0.json"
    return read_mapping(path, "DeepSpeed JSON"), str(path)


class _Filler:
    def __init__(self, ds: dict, where: str):
        self.ds, self.where = ds, where

    def fill(self, dotted: str, value: Any, run_key: str) -> None:
        """Set ds[dotted] to `value` when auto/missing; check an explicit literal against it."""
        *parents, leaf = dotted.split(".")
        node = self.ds
        for part in parents:
            node = node.setdefault(part, {})
        current = node.get(leaf, "auto")
        if current == "auto":
            node[leaf] = value
        elif not _same(current, value):
            raise ConfigError(
                f"{self.where}: '{dotted}' is {current!r} but the RunConfig's '{run_key}' gives "
                f"{value!r}; make them agree or set '{dotted}' to \"auto\"")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) <= 1e-12 * max(abs(a), abs(b), 1.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _find_auto(node: Any, prefix: str = "") -> str | None:
    if node == "auto":
        return prefix
    if isinstance(node, dict):
        for k, v in node.items():
            found = _find_auto(v, f"{prefix}.{k}" if prefix else k)
            if found:
                return found
    return None


# On CPU ranks (gloo / shared memory) every collective has a fixed cost that dwarfs its bytes at
# small sizes, and bucket memory is host RAM: few large buckets beat hidden^2 (the GPU rule).
CPU_REDUCE_BUCKET_SIZE = 50_000_000


def reduce_bucket_size(hidden_size: int) -> int:
    """The "auto" reduce bucket (elements): hidden^2 as Hugging Face sizes it for GPUs, at least
    CPU_REDUCE_BUCKET_SIZE when the ranks run on the CPU accelerator."""
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        return max(hidden_size * hidden_size, CPU_REDUCE_BUCKET_SIZE)
    return hidden_size * hidden_size


def default_optimizer(ds: dict) -> dict:
    """AdamW as torch's fused kernel: DeepSpeed's FusedAdam does the same update at the same speed
    on CPU but is JIT-loaded through ninja by every rank of every launch (2.3 s here), a large
    share of a short job. An offloaded optimizer needs DeepSpeed's own CPU Adam."""
    offload = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    if offload not in (None, "none"):
        return {"type": "AdamW", "params": {}}
    return {"type": "AdamW", "params": {"torch_adam": True, "fused": True}}


def choose_precision(requested: Precision, ds_bf16, native: Callable[[], tuple[bool, str]]
                     ) -> tuple[Precision, str]:
    """(precision, why): train.precision when it names one; under `auto`, a literal bf16.enabled
    of the DeepSpeed JSON, else what the hardware runs natively (`native()`: (bool, reason))."""
    if requested != Precision.AUTO:
        return Precision(requested), f"train.precision: {requested}"
    if isinstance(ds_bf16, bool):
        return (Precision.BF16 if ds_bf16 else Precision.FP32,
                f"the DeepSpeed JSON's bf16.enabled: {ds_bf16}")
    is_native, why = native()
    return Precision.BF16 if is_native else Precision.FP32, f"auto: {why}"


def resolve_ds_config(ds_in: dict, where: str, cfg: RunConfig, world_size: int, grad_accum: int,
                      peak_lr: float, hidden_size: int) -> tuple[dict, str, str]:
    """Return (the resolved DeepSpeed dict, the precision it runs in, why that one)."""
    ds = copy.deepcopy(ds_in)
    t = cfg.train
    f = _Filler(ds, where)
    if "scheduler" in ds:
        raise ConfigError(f"{where}: 'scheduler' is set by the RunConfig's 'train.schedule'; "
                          "remove the 'scheduler' section from the DeepSpeed JSON")
    if ds.get("fp16", {}).get("enabled") is True:
        raise ConfigError(f"{where}: 'fp16.enabled' is not supported; use bf16 "
                          "(train.precision=bf16)")
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{where}: 'zero_optimization.stage' must be 0..3, got {stage!r}")

    f.fill("train_micro_batch_size_per_gpu", t.micro_batch_size, "train.micro_batch_size")
    f.fill("gradient_accumulation_steps", grad_accum, "train.grad_accum")
    literal_gbs = ds.get("train_batch_size", "auto")
    if literal_gbs != "auto" and isinstance(literal_gbs, int) and literal_gbs % world_size:
        raise ConfigError(f"{where}: 'train_batch_size' {literal_gbs} is not divisible by the "
                          f"world size {world_size}")
    f.fill("train_batch_size", t.micro_batch_size * grad_accum * world_size,
           "train.micro_batch_size x train.grad_accum x world size")
    f.fill("gradient_clipping", t.grad_clip, "train.grad_clip")

    precision, precision_why = choose_precision(t.precision, ds.get("bf16", {}).get("enabled"),
                                                native_bf16)
    f.fill("bf16.enabled", precision == "bf16", "train.precision")

    if "optimizer" not in ds:
        ds["optimizer"] = default_optimizer(ds)
    f.fill("optimizer.params.lr", peak_lr, "train.lr")
    f.fill("optimizer.params.betas", list(t.betas), "train.betas")
    f.fill("optimizer.params.eps", t.eps, "train.eps")
    f.fill("optimizer.params.weight_decay", t.weight_decay, "train.weight_decay")

    zero = ds.setdefault("zero_optimization", {"stage": 0})
    for key, value in (("reduce_bucket_size", reduce_bucket_size(hidden_size)),
                       ("stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size)),
                       ("stage3_param_persistence_threshold", 10 * hidden_size)):
        if zero.get(key) == "auto":
            zero[key] = value
    if zero.get("stage3_gather_16bit_weights_on_model_save") == "auto":
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    ds.setdefault("steps_per_print", 10**9)  # the trainer logs; keep DeepSpeed quiet
    left = _find_auto(ds)
    if left:
        raise ConfigError(f"{where}: '{left}' is \"auto\" but the RunConfig has no value for it")
    return ds, precision, precision_why

