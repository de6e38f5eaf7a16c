"""The distillation objective the one loop runs, given a frozen teacher engine or its cached
outputs."""
from __future__ import annotations

import torch

from rtune_ds import dist
from rtune_ds.config.schema import DistillConfig
from rtune_ds.train.objectives import (
    hidden_mse,
    kd_kl,
    kd_kl_top_k,
    kd_total,
    next_token_targets,
)
from rtune_ds.train.teacher_cache import TopK


class Distiller:
    """The loss of the one loop for distillation: (1−α)·CE + α·T²·KL(teacher_T ‖ student_T)
    (+ β·hidden-state MSE). Its `scalars()` (kd/ce, kd/kl, kd/hidden: means over the micro-batches
    since the last call, over all ranks) is called by the loop on every rank at log steps.

    The teacher's logits come from its forward on each micro-batch, or from `cached`, its outputs
    over the train split (train/teacher_cache.py), looked up by the batch's `rows` (its examples'
    indices in the split), and no teacher runs: `teacher` is None. Cached class logits give the
    same KL as the live teacher; a cached LM table (TopK) gives the KL on the teacher's top-k
    support (kd_kl_top_k), a lower bound of it."""

    def __init__(self, teacher, settings: DistillConfig, task_type: str, hidden_layers: list[int],
                 cached: torch.Tensor | TopK | None = None):
        self.teacher, self.s, self.task_type = teacher, settings, task_type
        self.cached = cached
        self.hidden_layers = hidden_layers if settings.beta > 0 else []
        self.sums = torch.zeros(4, dtype=torch.float64)  # ce, kl, hidden, micro-batches

    def _forward(self, model, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=bool(self.hidden_layers))
        hidden = [out.hidden_states[i] for i in self.hidden_layers]
        return out.logits, hidden

    def __call__(self, engine, batch: dict) -> torch.Tensor:
        t_logits, t_hidden = None, []
        if self.cached is None:
            with torch.no_grad():
                t_logits, t_hidden = self._forward(self.teacher, batch)
        s_logits, s_hidden = self._forward(engine, batch)
        labels, temperature = batch["labels"], self.s.temperature
        no_ce = self.s.alpha == 1  # label-free inputs have no labels to read
        if self.task_type == "classification":
            ce = (s_logits.new_zeros(()) if no_ce else
                  torch.nn.functional.cross_entropy(s_logits.float(), labels))
            if self.cached is not None:
                t_logits = self.cached[batch["rows"]]
            kl = kd_kl(s_logits, t_logits, temperature)
        else:  # next-token targets only: the vocabulary-wide softmaxes run on these rows alone
            targets = next_token_targets(labels)
            s_logits = s_logits[:, :-1][targets].float()  # one fp32 copy for CE and KL
            ce = (s_logits.new_zeros(()) if no_ce else torch.nn.functional.cross_entropy(
                s_logits, labels[:, 1:][targets]))
            if self.cached is not None:
                kl = kd_kl_top_k(s_logits, *self.cached.of_rows(batch["rows"]), temperature)
            else:
                kl = kd_kl(s_logits, t_logits[:, :-1][targets], temperature)
        hidden = (hidden_mse(s_hidden, t_hidden, batch["attention_mask"])
                  if self.hidden_layers else None)
        del t_logits, t_hidden  # the teacher's outputs are not kept past the loss
        self.sums += torch.tensor([ce.item(), kl.item(),
                                   hidden.item() if hidden is not None else 0.0, 1.0],
                                  dtype=torch.float64)
        return kd_total(ce, kl, hidden, self.s.alpha, self.s.beta)

    def scalars(self) -> dict[str, float]:
        sums = dist.all_reduce_sum(self.sums.clone())
        self.sums.zero_()
        n = max(sums[3].item(), 1.0)
        out = {"kd/ce": sums[0].item() / n, "kd/kl": sums[1].item() / n}
        if self.hidden_layers:
            out["kd/hidden"] = sums[2].item() / n
        return out
