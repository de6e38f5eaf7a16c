"""What the loop guards itself with: the best-eval state, a stop request by signal, and the
non-finite policy (an update left out; a check of the gradients)."""
from __future__ import annotations

import signal
from contextlib import contextmanager

import torch

from rtune_ds import dist
from rtune_ds.errors import ConfigError


def _local(param: torch.Tensor) -> torch.Tensor:
    """This rank's copy of a parameter: its ZeRO-3 partition, or the full tensor."""
    return param.ds_tensor if hasattr(param, "ds_tensor") else param.data


class BestState:
    """The trainable weights at the best eval so far, as this rank holds them (a ZeRO-3 partition,
    plus the full tensor of parameters ZeRO-3 keeps gathered), in CPU memory and in checkpoints."""

    def __init__(self, metric: str, mode: str):
        self.metric, self.mode = metric, mode
        self.step: int | None = None
        self.eval: dict[str, float] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        self.world_size: int | None = None
        self.partitioned = False  # ZeRO-3 partitions: valid only at the same world size
        self.stale = 0  # evals since the best one (early stopping counts them)

    def offer(self, module: torch.nn.Module, step: int, scores: dict[str, float]) -> None:
        if self.metric not in scores:
            raise ConfigError(f"best metric '{self.metric}' is not among the eval metrics "
                              f"({', '.join(sorted(scores))})")
        value, best = scores[self.metric], self.eval.get(self.metric)
        if best is not None and not (value > best if self.mode == "max" else value < best):
            self.stale += 1
            return
        self.step, self.eval, self.stale = step, dict(scores), 0
        self.tensors = {}
        self.world_size = dist.world_size()
        self.partitioned = any(hasattr(p, "ds_tensor") for p in module.parameters())
        for name, p in module.named_parameters():
            if p.requires_grad:
                self.tensors[name] = _local(p).detach().cpu().clone()
                if getattr(p, "ds_persist", False):
                    self.tensors[name + "#full"] = p.data.detach().cpu().clone()

    def restore(self, module: torch.nn.Module) -> None:
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name in self.tensors:
                    _local(p).copy_(self.tensors[name])
                    if name + "#full" in self.tensors:
                        p.data.copy_(self.tensors[name + "#full"])

    def state_dict(self) -> dict:
        return {"step": self.step, "eval": self.eval, "tensors": self.tensors,
                "world_size": self.world_size, "partitioned": self.partitioned,
                "stale": self.stale}

    def load_state_dict(self, state: dict | None) -> None:
        if not state:
            return
        if state.get("partitioned") and state.get("world_size") != dist.world_size():
            raise ConfigError(f"the best-dev weights in this checkpoint are ZeRO-3 partitions of "
                              f"{state.get('world_size')} ranks; resume it on that many ranks")
        self.step, self.eval, self.tensors = state["step"], state["eval"], state["tensors"]
        self.world_size, self.partitioned = state.get("world_size"), state.get("partitioned")
        self.stale = state.get("stale", 0)


class StopRequest:
    """SIGTERM / SIGINT (what SLURM sends before preemption) ask the loop to checkpoint and end.
    Ranks agree on the step through the loop's per-step all-reduce, because saving is collective."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def release(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@contextmanager
def update_left_out(engine):
    """engine.step() without the optimizer's update: DeepSpeed still clears the gradients and
    advances its micro/global step counters and the LR schedule. DeepSpeed has no public call for
    this outside fp16 loss scaling, but every ZeRO stage (and its bf16 path) updates through the
    torch optimizer it was given, so leaving out that optimizer's step() skips the update at any
    stage, offloaded or not, and leaves the optimizer state untouched."""
    optimizer = engine.basic_optimizer
    own = vars(optimizer).get("step")  # the LR scheduler's wrapper of step(), which it checks for
    optimizer.step = lambda *args, **kwargs: None
    try:
        yield
    finally:
        if own is None:
            del optimizer.step
        else:
            optimizer.step = own


def finite_grads(module: torch.nn.Module) -> bool:
    """Whether every gradient held in `module` is finite (under ZeRO stage 0, after the boundary's
    all-reduce: the same on every rank)."""
    norms = [torch.linalg.vector_norm(p.grad) for p in module.parameters() if p.grad is not None]
    return bool(torch.stack(norms).isfinite().all()) if norms else True

