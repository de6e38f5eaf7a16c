"""The distillation objective the one loop runs, given a frozen teacher engine or its cached
logits."""
from __future__ import annotations

import torch

from rtune_ds import dist
from rtune_ds.config.schema import DistillConfig
from rtune_ds.train.objectives import IGNORE, hidden_mse, kd_kl, kd_total


class Distiller:
    """The loss of the one loop for distillation: (1−α)·CE + α·T²·KL(teacher_T ‖ student_T)
    (+ β·hidden-state MSE). Its `scalars()` (kd/ce, kd/kl, kd/hidden: means over the micro-batches
    since the last call, over all ranks) is called by the loop on every rank at log steps.

    The teacher's logits come from its forward on each micro-batch, or, given `cached_logits`
    (the teacher's logits of every train example, train/teacher_cache.py), are looked up by the
    batch's `rows` (its examples' indices in the split) and no teacher runs: `teacher` is None."""

    def __init__(self, teacher, settings: DistillConfig, task_type: str, hidden_layers: list[int],
                 cached_logits: torch.Tensor | None = None):
        self.teacher, self.s, self.task_type = teacher, settings, task_type
        self.cached_logits = cached_logits
        self.hidden_layers = hidden_layers if settings.beta > 0 else []
        self.sums = torch.zeros(4, dtype=torch.float64)  # ce, kl, hidden, micro-batches

    def _forward(self, model, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=bool(self.hidden_layers))
        hidden = [out.hidden_states[i] for i in self.hidden_layers]
        return out.logits, hidden

    def _teacher(self, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.cached_logits is not None:
            return self.cached_logits[batch["rows"]], []
        with torch.no_grad():
            return self._forward(self.teacher, batch)

    def __call__(self, engine, batch: dict) -> torch.Tensor:
        t_logits, t_hidden = self._teacher(batch)
        s_logits, s_hidden = self._forward(engine, batch)
        labels = batch["labels"]
        no_ce = self.s.alpha == 1  # label-free inputs have no labels to read
        if self.task_type == "classification":
            ce = (s_logits.new_zeros(()) if no_ce else
                  torch.nn.functional.cross_entropy(s_logits.float(), labels))
            kl = kd_kl(s_logits, t_logits, self.s.temperature)
        else:  # next-token targets: position i predicts token i+1 of the completion
            s_logits, t_logits, labels = s_logits[:, :-1], t_logits[:, :-1], labels[:, 1:]
            targets = labels != IGNORE
            ce = (s_logits.new_zeros(()) if no_ce else torch.nn.functional.cross_entropy(
                s_logits[targets].float(), labels[targets]))
            kl = kd_kl(s_logits, t_logits, self.s.temperature, targets)
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

