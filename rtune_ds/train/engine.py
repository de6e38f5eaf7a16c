"""The ONE training loop: every job (pretraining, fine-tuning, distillation, recycling) runs here and
differs only by the model, the data source, the loss and the initial state it is handed."""
from __future__ import annotations

import math
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import deepspeed
import torch
from torch.optim.lr_scheduler import LambdaLR

from rtune_ds import dist
from rtune_ds.artifacts import checkpoint
from rtune_ds.config.schema import Nonfinite
from rtune_ds.errors import ConfigError, RunError
from rtune_ds.models.zero import one_dtype_for_zero3
from rtune_ds.train.guards import BestState, StopRequest, finite_grads, update_left_out
from rtune_ds.train.monitor import Monitor
from rtune_ds.train.schedules import Schedule


class BatchSource(Protocol):
    """Yields the same global batch for a step on every rank; its state is checkpointed."""

    def global_batch(self, step: int, size: int) -> Any: ...
    def make_inputs(self, rows: Any, keys: list[int]) -> dict[str, torch.Tensor]: ...
    def scalars(self, step: int) -> dict[str, float]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class LoopSpec:
    run_dir: Path
    ds_config: dict
    schedule: Schedule
    max_steps: int
    micro_batch: int
    grad_accum: int
    tokens_per_sample: int = 0
    stop_after: int | None = None
    eval_every: int = 0
    save_every: int = 0
    log_every: int = 1
    resume_tag: str | None = None
    save_checkpoints: bool = True
    best_metric: str | None = None  # keep the weights of the best eval by this key; reload at the end
    best_mode: str = "max"  # max | min
    # a NaN/Inf loss on any rank: stop (RunError) | skip that step's update
    nonfinite: Nonfinite = Nonfinite.STOP
    patience: int | None = None  # with best_metric: end after this many evals without a better one
    # called on every rank after each optimizer step with (engine, step, tokens); collective work
    # (a ZeRO-3 export) is allowed, as every rank reaches it at the same step
    after_step: Callable[[Any, int, int], None] | None = None


@dataclass
class TrainResult:
    engine: Any
    step: int
    finished: bool
    tokens: int
    last_eval: dict[str, float] = field(default_factory=dict)
    best_eval: dict[str, float] = field(default_factory=dict)  # with spec.best_metric
    best_step: int | None = None
    step_times: list[float] = field(default_factory=list)
    stopped_by_signal: bool = False
    early_stopped: bool = False  # train.patience evals without improvement before max_steps

    @property
    def median_step_time(self) -> float:
        return statistics.median(self.step_times) if self.step_times else float("nan")


def train(model: torch.nn.Module, spec: LoopSpec, source: BatchSource,
          loss_fn: Callable[[Any, dict], torch.Tensor],
          evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None) -> TrainResult:
    world, rank = dist.world_size(), dist.rank()
    global_batch = spec.micro_batch * spec.grad_accum * world
    schedule = spec.schedule
    one_dtype_for_zero3(model, spec.ds_config)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=spec.ds_config,
        lr_scheduler=lambda opt: LambdaLR(opt, lambda s: schedule.lr(s) / schedule.peak_lr),
    )
    if world == 1 and engine.zero_optimization_stage() == 0:
        engine.enable_backward_allreduce = False  # nothing to reduce; saves a flatten+copy per step
    ckpt_dir = spec.run_dir / "checkpoints"
    step = tokens = skipped = 0
    if spec.resume_tag:
        state = checkpoint.load(engine, ckpt_dir, spec.resume_tag)
        if state["global_batch"] != global_batch:  # the data order is per global batch
            raise ConfigError(
                f"{ckpt_dir / spec.resume_tag}: saved with global batch {state['global_batch']}; "
                f"this launch has {global_batch}")
        step, tokens, skipped = state["step"], state["tokens"], state.get("nonfinite_skipped", 0)
        source.load_state_dict(state["data"])

    best = BestState(spec.best_metric, spec.best_mode) if spec.best_metric else None
    if best and spec.resume_tag:
        best.load_state_dict(state.get("best"))

    def patience_spent() -> bool:  # also on resume: a relaunch of an early-stopped run ends at once
        return bool(best and spec.patience and best.stale >= spec.patience)

    monitor = Monitor(spec.run_dir, step, spec.max_steps)
    result = TrainResult(engine, step, False, tokens)

    def run_eval() -> None:
        if evaluate is None:
            return
        engine.eval()
        with torch.no_grad():
            result.last_eval = evaluate(engine.module)
        engine.train()
        monitor.log(step, result.last_eval)
        if best:
            best.offer(engine.module, step, result.last_eval)

    def save() -> None:
        if spec.save_checkpoints:
            checkpoint.save(engine, ckpt_dir, step, {
                "step": step, "tokens": tokens, "nonfinite_skipped": skipped,
                "data": source.state_dict(),
                "world_size": world, "global_batch": global_batch,
                **({"best": best.state_dict()} if best else {})})

    if step == 0 and evaluate is not None and spec.eval_every:
        run_eval()  # the step-0 point shows where training starts from
    launch_end = spec.max_steps if spec.stop_after is None else min(
        spec.max_steps, step + spec.stop_after)
    saved_at = step
    engine.train()
    # ZeRO stages and bf16 check the gradient norm in DeepSpeed's optimizer wrapper and leave out
    # an update whose norm is NaN/Inf; plain stage 0 steps the torch optimizer directly
    unchecked_grads = engine.optimizer is engine.basic_optimizer
    stop = StopRequest()
    while step < launch_end and not patience_spent():
        started = time.perf_counter()
        rows = source.global_batch(step, global_batch)
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, NaN/Inf gradients, stop request
        for micro in range(spec.grad_accum):
            start = (micro * world + rank) * spec.micro_batch
            keys = list(range(step * global_batch + start,
                              step * global_batch + start + spec.micro_batch))
            inputs = source.make_inputs(rows[start:start + spec.micro_batch], keys)
            loss = loss_fn(engine, inputs)
            engine.backward(loss)
            totals[0] += loss.detach().double()
            if micro < spec.grad_accum - 1:
                engine.step()
        if unchecked_grads:
            totals[1] = not finite_grads(engine.module)
        totals[2] = stop.requested
        # the step's one all-reduce, before the update: a NaN/Inf loss on any rank makes the sum
        # non-finite on every rank, and every rank sees a stop request of any rank
        mean_loss, bad_grads, stop_agreed = dist.all_reduce_sum(totals).tolist()
        mean_loss /= spec.grad_accum * world
        nonfinite = not math.isfinite(mean_loss) or bad_grads > 0
        with update_left_out(engine) if nonfinite else nullcontext():
            engine.step()
        if not engine.was_step_applied():  # DeepSpeed left it out itself (a NaN/Inf gradient
            nonfinite = True  # norm) and did not advance the LR schedule: keep it on our step
            engine.lr_scheduler.step()
        if nonfinite and spec.nonfinite == Nonfinite.STOP:
            stop.release()
            monitor.close()
            last = checkpoint.latest_tag(ckpt_dir)
            raise RunError(f"step {step + 1}: the loss ({mean_loss:.6g}) or its gradients are "
                           f"NaN/Inf (train.nonfinite=stop); the step was not applied or saved; "
                           f"the last complete checkpoint is {ckpt_dir / last if last else 'none'}")
        skipped += nonfinite
        lr = schedule.lr(step)
        step += 1
        tokens += global_batch * spec.tokens_per_sample
        result.step_times.append(time.perf_counter() - started)
        if step % spec.log_every == 0 or step == launch_end:
            grad_norm = engine.get_global_grad_norm()
            scalars = {"train/loss": mean_loss, "train/lr": lr,
                       "train/tokens_per_s": global_batch * spec.tokens_per_sample
                       / result.step_times[-1], "train/tokens": tokens,
                       "train/nonfinite_skipped": skipped, **source.scalars(step - 1)}
            if hasattr(loss_fn, "scalars"):  # an objective's own terms (kd/*), on every rank
                scalars.update(loss_fn.scalars())
            if grad_norm is not None:
                scalars["train/grad_norm"] = float(grad_norm)
            monitor.log(step, scalars)
            monitor.advance(step, mean_loss)
        if spec.after_step:
            spec.after_step(engine, step, tokens)
        if spec.eval_every and (step % spec.eval_every == 0 or step == spec.max_steps):
            run_eval()
        if spec.save_every and step % spec.save_every == 0:
            save()
            saved_at = step
        if stop_agreed:
            result.stopped_by_signal = True
            break
    stop.release()
    if step > saved_at:
        save()
    monitor.close()
    result.early_stopped = step < spec.max_steps and patience_spent()
    result.step, result.tokens = step, tokens
    result.finished = step >= spec.max_steps or result.early_stopped
    if best and result.finished and best.step is not None:
        best.restore(engine.module)  # the optimizer is not rolled back: training has ended
        result.best_eval, result.best_step = best.eval, best.step
    return result

