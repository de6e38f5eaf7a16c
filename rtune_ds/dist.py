"""Distributed start-up and rank helpers: the one place that knows about ranks."""
from __future__ import annotations

import contextlib
import io
import os
from typing import Any, Callable

import torch
import torch.distributed as torch_dist


def world_size() -> int:
    """From the launcher's environment, so it is known before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Start the process group the deepspeed launcher (or a plain `python`) expects.

    A plain single-process launch gets a local rendezvous so the same code path runs everywhere.
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    if not torch_dist.is_initialized():
        # DeepSpeed prints that it built its CPU all-reduce op, once per rank, with print()
        quiet = os.environ.get("RTUNE_LOG_LEVEL", "warning") in ("warning", "error")
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())
        _unlink_shm_buffer()


def _unlink_shm_buffer() -> None:
    """DeepSpeed's CPU all-reduce maps one /dev/shm buffer per rank (~66 MB) and never unlinks
    it, so every launch would leave its buffers in RAM until reboot. Once every rank has mapped
    all of them (init_distributed has returned everywhere), the names can go: the mappings live
    on until the processes exit, and a killed run leaves nothing behind."""
    barrier()
    name = (f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{os.environ['MASTER_ADDR']}_"
            f"{os.environ['MASTER_PORT']}_{rank()}")
    if os.path.exists(name):
        os.unlink(name)


def main_first(fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 first (it fills caches), then on the others; a ConfigError or RunError
    (a full disk while filling a cache) on rank 0 is raised on every rank instead of leaving the
    others waiting."""
    from rtune_ds.errors import ConfigError, RunError

    result, error = None, None
    if is_main():
        try:
            result = fn()
        except (ConfigError, RunError) as err:
            error = (type(err).__name__, str(err))
    error = broadcast_object(error)
    if error:
        raise (ConfigError if error[0] == "ConfigError" else RunError)(error[1])
    if not is_main():
        result = fn()
    return result


def barrier() -> None:
    if torch_dist.is_initialized():
        torch_dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not torch_dist.is_initialized() or torch_dist.get_world_size() == 1:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any) -> list:
    if not torch_dist.is_initialized() or torch_dist.get_world_size() == 1:
        return [obj]
    out = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if torch_dist.is_initialized() and torch_dist.get_world_size() > 1:
        torch_dist.all_reduce(values)
    return values
