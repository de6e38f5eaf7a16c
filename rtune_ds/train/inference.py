"""A frozen model under DeepSpeed, for forwards only (a compatibility check, a distillation
teacher): no optimizer and no gradients. Under ZeRO-3 the parameters stay partitioned (and may be
offloaded to CPU by the config's offload_param) and are gathered layer by layer in the forward.
Forwards over a split are shared out between the ranks, the same number on every rank (ZeRO-3
gathers parameters collectively, so unequal counts would deadlock)."""
from __future__ import annotations

import math

import deepspeed
import torch

from rtune_ds import dist
from rtune_ds.train.objectives import kd_kl, next_token_targets
from rtune_ds.train.teacher_cache import target_offsets, top_k_layout

INFERENCE_DROPS = ("optimizer", "scheduler", "gradient_clipping")


def inference_config(ds_config: dict) -> dict:
    """`ds_config` without what only training uses. ZeRO-1/2 partition only optimizer state and
    gradients, which a frozen model does not have: they become stage 0."""
    config = {k: v for k, v in ds_config.items() if k not in INFERENCE_DROPS}
    zero = dict(config.get("zero_optimization", {}))
    zero.pop("offload_optimizer", None)
    if zero.get("stage", 0) in (1, 2):
        zero = {"stage": 0}
    config["zero_optimization"] = zero
    return config


def frozen_engine(model: torch.nn.Module, ds_config: dict):
    """The model in eval mode, every parameter frozen, wrapped by a DeepSpeed engine."""
    model.requires_grad_(False)
    model.eval()
    engine, *_ = deepspeed.initialize(model=model, config=inference_config(ds_config))
    engine.eval()
    return engine


def rank_shards(examples, micro_batch: int):
    """This rank's example index lists, one per forward, taken in length order so that each
    batch is padded to little more than its own rows; every rank gets the same number (padding
    batches are empty lists)."""
    world, rank, order = dist.world_size(), dist.rank(), examples.by_length().tolist()
    for b in range(math.ceil(len(order) / (micro_batch * world))):
        start = (b * world + rank) * micro_batch
        yield order[start:start + micro_batch]


@torch.no_grad()
def class_logits(model, examples, micro_batch: int, num_labels: int) -> torch.Tensor:
    """[len(examples), num_labels] fp32: the first `num_labels` logits of every example, on every
    rank. Each rank runs its share of the forwards and fills its rows; the rows are disjoint, so
    summing the ranks' tables (zeros elsewhere) gathers them exactly."""
    table = torch.zeros(len(examples), num_labels, dtype=torch.float32)
    for idx in rank_shards(examples, micro_batch):
        batch = examples.batch(idx or [0])  # a padding forward keeps ranks in step
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits[:, :num_labels].float()
        if idx:
            table[idx] = logits
    return dist.all_reduce_sum(table)


@torch.no_grad()
def next_token_top_k(model, examples, micro_batch: int, k: int,
                     temperature: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The bounded LM table of `examples` (teacher_cache.top_k_layout: at every target position,
    the k largest logits, their ids and logsumexp(z/T) over the vocabulary) and, per position,
    the tempered probability mass outside the top k; on every rank, gathered as class_logits
    gathers its rows (each rank fills the rows of its examples)."""
    offsets = target_offsets(examples.labels)
    layout = top_k_layout(int(offsets[-1]), k)
    table = {name: torch.zeros(shape, dtype=dtype) for name, (shape, dtype) in layout.items()}
    outside = torch.zeros(int(offsets[-1]), dtype=torch.float32)
    for idx in rank_shards(examples, micro_batch):
        batch = examples.batch(idx or [0])  # a padding forward keeps ranks in step
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if not idx:
            continue
        z = logits[:, :-1][next_token_targets(batch["labels"])].float()
        rows = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in idx])
        top = z.topk(k, dim=-1)
        lse = torch.logsumexp(z / temperature, dim=-1)
        table["top_logits"][rows], table["top_ids"][rows] = top.values, top.indices.int()
        table["lse"][rows] = lse
        outside[rows] = -torch.expm1(torch.logsumexp(top.values / temperature, dim=-1) - lse)
    return ({name: dist.all_reduce_sum(t) for name, t in table.items()},
            dist.all_reduce_sum(outside))


@torch.no_grad()
def agreement(teacher, student, examples, micro_batch: int, num_labels: int | None) -> dict:
    """How closely `student` follows `teacher` over `examples`, no label read: the share of their
    predictions that agree (classes; num_labels None: the next token at each target position)
    and the mean KL(teacher ‖ student) at T = 1 per prediction, over all ranks."""
    sums = torch.zeros(3, dtype=torch.float64)  # agreeing predictions, KL sum, predictions
    for idx in rank_shards(examples, micro_batch):
        batch = examples.batch(idx or [0])  # a padding forward keeps ranks in step
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        t, s = teacher(**inputs).logits.float(), student(**inputs).logits.float()
        if num_labels:
            t, s = t[:, :num_labels], s[:, :num_labels]
        else:  # position i predicts token i+1
            keep = next_token_targets(batch["labels"])
            t, s = t[:, :-1][keep], s[:, :-1][keep]
        if idx:
            sums += torch.tensor([(t.argmax(-1) == s.argmax(-1)).sum().item(),
                                  kd_kl(s, t, 1.0).item() * len(t), len(t)], dtype=torch.float64)
    agreed, kl, n = dist.all_reduce_sum(sums).tolist()
    return {"agreement": agreed / n, "mean_kl": kl / n, "predictions": int(n)}
