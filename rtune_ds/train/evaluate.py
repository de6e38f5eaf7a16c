"""Evaluation of a language model on held-out blocks, shared across ranks.

Every rank runs the same number of forwards (ZeRO-3 gathers parameters collectively, so unequal
counts would deadlock); padding batches are weighted zero.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from rtune_ds import dist
from rtune_ds.train.objectives import LMObjective

EVAL_KEY_OFFSET = 1 << 40  # eval masks never coincide with a training sample's


@torch.no_grad()
def evaluate_lm(model: torch.nn.Module, eval_sets: dict[str, torch.Tensor], objective: LMObjective,
                micro_batch: int) -> dict[str, float]:
    """Token-weighted mean loss and perplexity per eval set, plus their overall mean."""
    world, rank = dist.world_size(), dist.rank()
    objective = dataclasses.replace(objective, seed=0)  # the same masks for every run and model
    sums = torch.zeros(2 * len(eval_sets), dtype=torch.float64)
    for i, blocks in enumerate(eval_sets.values()):
        n_batches = math.ceil(len(blocks) / (micro_batch * world))
        for b in range(n_batches):
            start = (b * world + rank) * micro_batch
            idx = list(range(start, min(start + micro_batch, len(blocks))))
            weight = 1.0 if idx else 0.0
            idx = idx or [0]  # a padding forward keeps ranks in step
            inputs = objective.batch(blocks[idx], keys=[EVAL_KEY_OFFSET + j for j in idx])
            loss = model(**inputs).loss.double()
            count = LMObjective.target_count(inputs, objective.kind)
            sums[2 * i] += weight * loss * count
            sums[2 * i + 1] += weight * count
    sums = dist.all_reduce_sum(sums)
    out: dict[str, float] = {}
    for i, name in enumerate(eval_sets):
        loss = (sums[2 * i] / sums[2 * i + 1]).item()
        out[f"eval/loss/{name}"], out[f"eval/ppl/{name}"] = loss, math.exp(min(loss, 50.0))
    total = (sums[0::2].sum() / sums[1::2].sum()).item()
    out["eval/loss"], out["eval/ppl"] = total, math.exp(min(total, 50.0))
    return out
