"""Evaluation of a language model on held-out blocks, shared across ranks.

Every rank runs the same number of forwards (ZeRO-3 gathers parameters collectively, so unequal
counts would deadlock); padding batches are weighted zero.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from rtune_ds import dist
from rtune_ds.train.inference import class_logits, rank_shards
from rtune_ds.train.objectives import IGNORE, LMObjective, lm_loss, next_token_targets

EVAL_KEY_OFFSET = 1 << 40  # eval masks never coincide with a training sample's


@torch.no_grad()
def evaluate_lm(model: torch.nn.Module, eval_sets: dict[str, torch.Tensor], objective: LMObjective,
                micro_batch: int) -> dict[str, float]:
    """Token-weighted mean loss and perplexity per eval set, plus their overall mean (the loss
    of `lm_loss`, the one training takes)."""
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
            loss = lm_loss(model, inputs).double()
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


def classification_metrics(confusion: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 from a [gold, predicted] count matrix; the F1 mean runs over the
    classes that occur in the gold labels or the predictions."""
    confusion = confusion.double()
    tp = confusion.diag()
    gold, pred = confusion.sum(1), confusion.sum(0)
    present = (gold + pred) > 0
    f1 = 2 * tp / (gold + pred).clamp(min=1)
    return {"eval/accuracy": (tp.sum() / confusion.sum().clamp(min=1)).item(),
            "eval/f1": f1[present].mean().item() if present.any() else 0.0}


def predict_classification(model: torch.nn.Module, examples, micro_batch: int,
                           num_labels: int) -> tuple[torch.Tensor, float]:
    """(the predicted class of every example, in the split's order; the summed cross-entropy),
    over all of `examples`, which every rank holds: each rank runs its share (class_logits).
    Only the first `num_labels` logits are read: a model shared by a library of bundles may have
    more rows."""
    logits = class_logits(model, examples, micro_batch, num_labels)
    loss = torch.nn.functional.cross_entropy(logits, examples.labels, reduction="none")
    return logits.argmax(-1), loss.double().sum().item()


def classification_scores(predicted: torch.Tensor, gold: torch.Tensor, loss_sum: float,
                          num_labels: int) -> dict[str, float]:
    """eval/loss (mean cross-entropy), eval/accuracy and eval/f1 (macro) of predictions."""
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.float64)
    confusion.index_put_((gold, predicted), torch.ones(len(gold), dtype=torch.float64),
                         accumulate=True)
    return {"eval/loss": loss_sum / len(gold), **classification_metrics(confusion)}


def evaluate_classification(model: torch.nn.Module, examples, micro_batch: int,
                            num_labels: int) -> dict[str, float]:
    predicted, loss_sum = predict_classification(model, examples, micro_batch, num_labels)
    return classification_scores(predicted, examples.labels, loss_sum, num_labels)


@torch.no_grad()
def greedy_completions(model: torch.nn.Module, input_ids: torch.Tensor, prompt_len: torch.Tensor,
                       steps: int, pad_id: int) -> torch.Tensor:
    """[B, steps] greedy tokens after each row's prompt: exactly `steps` forwards (no early stop,
    no cache), so every rank runs the same sequence of ZeRO-3 forwards."""
    rows = len(input_ids)
    width = int(prompt_len.max()) + steps
    buf = torch.full((rows, width), pad_id, dtype=torch.long)
    for i in range(rows):
        buf[i, :prompt_len[i]] = input_ids[i, :prompt_len[i]]
    positions = torch.arange(width)
    out = torch.empty(rows, steps, dtype=torch.long)
    for t in range(steps):
        cur = prompt_len + t  # where each row's next token goes
        mask = (positions[None, :] < cur[:, None]).long()
        logits = model(input_ids=buf[:, :int(cur.max())], attention_mask=mask[:, :int(cur.max())]).logits
        nxt = logits[torch.arange(rows), cur - 1].argmax(-1)
        buf[torch.arange(rows), cur] = nxt
        out[:, t] = nxt
    return out


@torch.no_grad()
def evaluate_sft(model: torch.nn.Module, examples, micro_batch: int, max_new_tokens: int,
                 pad_id: int) -> dict[str, float]:
    """eval/loss (mean over completion tokens) and eval/exact_match: the greedy continuation of the
    prompt is the completion followed by EOS. Generation runs the same number of steps on every
    rank: the longest completion (+EOS) of the set, at most max_new_tokens."""
    targets = examples.labels != IGNORE
    steps = min(int(targets.sum(1).max()), max_new_tokens)
    sums = torch.zeros(3, dtype=torch.float64)  # loss x tokens, tokens, exact matches
    for idx in rank_shards(examples, micro_batch):
        weight = 1.0 if idx else 0.0
        idx = idx or [0]
        batch = examples.batch(idx)
        loss = model(**batch).loss.double()
        count = int(next_token_targets(batch["labels"]).sum())
        gen = greedy_completions(model, batch["input_ids"], examples.prompt_len[idx], steps,
                                 pad_id)
        hits = 0
        for row, g in zip(batch["labels"], gen):
            want = row[row != IGNORE]
            hits += int(len(want) <= steps and torch.equal(g[:len(want)], want))
        sums += weight * torch.tensor([loss.item() * count, count, hits], dtype=torch.float64)
    sums = dist.all_reduce_sum(sums)
    return {"eval/loss": (sums[0] / sums[1]).item(), "eval/exact_match": (sums[2] / len(examples)).item()}
