"""LR schedules as pure functions of the optimizer step.

`recipe` is the continual-pretraining schedule of "Reuse, Don't Retrain" (Parmar et al. 2024):
start at the parent's minimum LR with no warmup and decay by cosine to 1% of it; the data blend
switches when the LR first reaches 1/5 of its start.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from rtune_ds.config.schema import RunConfig
from rtune_ds.errors import ConfigError

RECIPE_FLOOR = 0.01  # decay to 1% of the starting LR

RECIPE_SWITCH_FRACTION = 0.2  # switch the blend at lr = eta_max / 5


@dataclass(frozen=True)
class Schedule:
    peak_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    kind: str = "cosine"  # cosine | constant

    def lr(self, step: int) -> float:
        """LR used by the optimizer step that follows `step` completed steps."""
        if self.kind == "constant":
            return self.peak_lr
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1 + math.cos(math.pi * progress))

    def first_step_at_or_below(self, fraction: float) -> int:
        """First step whose LR is <= fraction * peak LR (total_steps if it never gets there)."""
        target = fraction * self.peak_lr
        for step in range(self.warmup_steps, self.total_steps):
            if self.lr(step) <= target * (1 + 1e-12):
                return step
        return self.total_steps


def cosine_with_floor(peak_lr: float, min_lr_ratio: float, warmup_steps: int,
                      total_steps: int) -> Schedule:
    return Schedule(peak_lr, peak_lr * min_lr_ratio, warmup_steps, total_steps)


def continual_pretraining_recipe(parent_min_lr: float, total_steps: int) -> Schedule:
    return Schedule(parent_min_lr, parent_min_lr * RECIPE_FLOOR, 0, total_steps)


def constant(lr: float, total_steps: int) -> Schedule:
    return Schedule(lr, lr, 0, total_steps, kind="constant")


def parent_min_lr(model_path: str, where: str) -> float:
    lineage = Path(model_path, "lineage.json")
    if lineage.is_file():
        min_lr = json.loads(lineage.read_text()).get("schedule", {}).get("min_lr")
        if min_lr:
            return float(min_lr)
    raise ConfigError(f"{where}: key 'train.lr': schedule 'recipe' starts at the parent's minimum "
                      f"LR, but {lineage} does not record one; give train.lr")



def make_schedule(cfg: RunConfig, where: str) -> Schedule:
    t = cfg.train
    if t.schedule == "recipe":
        if t.lr is None and cfg.model.path is None:
            raise ConfigError(f"{where}: key 'train.lr': schedule 'recipe' needs a parent model "
                              "(model.path) or an explicit train.lr")
        start = t.lr if t.lr is not None else parent_min_lr(cfg.model.path, where)
        return continual_pretraining_recipe(start, t.max_steps)
    if t.schedule == "constant":
        return constant(t.lr, t.max_steps)
    return cosine_with_floor(t.lr, t.min_lr_ratio, t.warmup_steps, t.max_steps)

