"""ZeRO-aware helpers: settle partitions, gather a parameter or a whole state dict, write one
parameter from rank 0, and a digest of every full weight."""
from __future__ import annotations

import hashlib

import deepspeed
import torch

from rtune_ds import dist


def settle_partitions(engine) -> None:
    """ZeRO-3: wait for prefetches still in flight after the last forward (an eval leaves some)
    and release every gathered parameter, so gathering one afresh is allowed."""
    if engine.zero_optimization_partition_weights():
        engine.empty_partition_cache()


def forget_trace(engine) -> None:
    """ZeRO-3: make the next forward record a new module trace. Its prefetch follows the trace of
    the last forward and fails ("tracing error") when the parameters a forward fetches change
    (another adapter made active, adapters disabled); DeepSpeed re-records only when the modules
    change."""
    if not engine.zero_optimization_partition_weights():
        return
    offload = getattr(engine.optimizer, "parameter_offload", engine.optimizer)
    coordinator = offload.get_param_coordinator()
    if coordinator.is_complete_trace():
        coordinator._invalidate_trace()


def gathered_state_dict(engine) -> dict | None:
    """The full model state dict on rank 0 (None elsewhere); all ranks must call it."""
    if engine.zero_optimization_partition_weights():
        settle_partitions(engine)
        return engine._zero3_consolidated_16bit_state_dict()
    if not dist.is_main():
        return None
    return {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}


def weights_digest(engine, tensors: dict[str, torch.Tensor] | None = None) -> str:
    """sha256 of every full parameter (or of `tensors`, some of the engine's), computed on this
    rank (ZeRO-3 shards are gathered)."""
    settle_partitions(engine)
    digest = hashlib.sha256()
    for name, param in (tensors or dict(engine.module.named_parameters())).items():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def gather_trainable(module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """Full copies of the trainable parameters on rank 0 (None elsewhere); all ranks call it.
    Each ZeRO-3 parameter is gathered on its own, so peak memory is one full tensor."""
    out = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            if dist.is_main():
                out[name] = param.detach().cpu().clone().contiguous()
    return out if dist.is_main() else None


def write_weights(targets: dict[str, torch.Tensor], value) -> None:
    """Set every tensor of `targets` (a model under a DeepSpeed engine) to value(name), which only
    rank 0 computes. A ZeRO-3 parameter is gathered on its own and re-partitioned from rank 0's
    copy on exit; a tensor that is not partitioned (a ZeRO-0 replica, a buffer) is broadcast."""
    broadcast = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
    for name, tensor in targets.items():
        with deepspeed.zero.GatheredParameters([tensor], modifier_rank=0), torch.no_grad():
            if dist.is_main():
                tensor.data.copy_(value(name))
            if broadcast and not hasattr(tensor, "ds_id"):
                torch.distributed.broadcast(tensor.data, src=0)



def one_dtype_for_zero3(model: torch.nn.Module, ds_config: dict) -> None:
    """ZeRO-3 flattens the trainable parameters of a group into one buffer, so they must share a
    dtype: the weights built under zero.Init are in the config's low precision, but parameters
    added afterwards (a PEFT adapter's, fp32) are not; cast those (DeepSpeed keeps the fp32
    master copies in its optimizer)."""
    if ds_config.get("zero_optimization", {}).get("stage") != 3:
        return
    dtype = (torch.bfloat16 if ds_config.get("bf16", {}).get("enabled") is True
             else torch.float16 if ds_config.get("fp16", {}).get("enabled") is True else None)
    if dtype is None:
        return
    for param in model.parameters():
        if not hasattr(param, "ds_id") and param.dtype != dtype:
            param.data = param.data.to(dtype)
