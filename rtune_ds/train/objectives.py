"""Language-model objectives: batch building (with seeded MLM masking) and the loss.

MLM masks are drawn from a generator seeded by the sample's global position, so a batch is the same
on 1 rank or many, and a resumed run masks exactly as the uninterrupted one would.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100
MODEL_INPUTS = ("input_ids", "attention_mask", "labels")  # what a batch hands the model


@dataclass
class LMObjective:
    kind: str  # clm | mlm
    seed: int = 0
    mask_token_id: int | None = None
    vocab_size: int = 0
    special_ids: tuple[int, ...] = ()
    mlm_probability: float = 0.15

    def batch(self, blocks: torch.Tensor, keys: list[int]) -> dict[str, torch.Tensor]:
        """Model inputs for `blocks` [B, L]; `keys` (one per row) seed the MLM masks."""
        if self.kind == "clm":
            return {"input_ids": blocks, "labels": blocks}
        inputs, labels = blocks.clone(), torch.full_like(blocks, IGNORE)
        for row, key in enumerate(keys):
            inputs[row], labels[row] = self._mask_row(blocks[row], key)
        return {"input_ids": inputs, "labels": labels}

    def _mask_row(self, ids: torch.Tensor, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT masking: of the chosen positions 80% -> <mask>, 10% -> random token, 10% kept."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + key)
        maskable = ~torch.isin(ids, torch.tensor(self.special_ids, dtype=ids.dtype))
        chosen = (torch.rand(ids.shape, generator=g) < self.mlm_probability) & maskable
        if not chosen.any():  # every row teaches something
            chosen[torch.nonzero(maskable)[0]] = True
        labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
        roll = torch.rand(ids.shape, generator=g)
        random_ids = torch.randint(self.vocab_size, ids.shape, generator=g)
        inputs = torch.where(chosen & (roll < 0.8), torch.full_like(ids, self.mask_token_id), ids)
        inputs = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, inputs)
        return inputs, labels

    @staticmethod
    def target_count(batch: dict[str, torch.Tensor], kind: str) -> int:
        """How many tokens the mean loss of `batch` averages over."""
        labels = batch["labels"]
        if kind == "clm":
            return int(next_token_targets(labels).sum())
        return int((labels != IGNORE).sum())


# Where the MLM head starts, by model class: the head (transform + vocabulary decoder) maps each
# position's final hidden state on its own, so it can run on the masked positions alone.
MLM_HEADS = {"BertForMaskedLM": "cls", "RobertaForMaskedLM": "lm_head",
             "DistilBertForMaskedLM": "vocab_transform"}


def mlm_head_of(model) -> torch.nn.Module | None:
    """The first module of the MLM head of `model` (bare, or wrapped by a DeepSpeedEngine or DDP),
    or None for a model whose head is not known (causal LMs, PEFT wrappers, other families)."""
    module = getattr(model, "module", model)
    name = MLM_HEADS.get(type(module).__name__)
    return getattr(module, name) if name else None


def lm_loss(model, batch: dict[str, torch.Tensor], masked_rows: bool = True) -> torch.Tensor:
    """Mean token loss of `batch` (input_ids, labels with IGNORE where there is no target).

    For the masked LMs of `MLM_HEADS` (BERT: encoder `bert`, head `cls`; RoBERTa: `roberta`,
    `lm_head`; DistilBERT: `distilbert`, `vocab_transform` … `vocab_projector`) the encoder runs
    over every position but the head only over the masked rows (labels != IGNORE, ~15%), and the
    cross-entropy (fp32) is taken there: the model's own full loss, without the vocabulary
    projection of the other ~85% of the rows. Every other model, and masked_rows=False, takes the
    model's own forward and loss over all positions.

    The model is still called whole, through `model(...)`: a DeepSpeedEngine's forward hooks the
    outputs to start ZeRO's backward (calling `module.bert` and `module.cls` one by one would skip
    that). A forward pre-hook, first of the head's hooks (so ZeRO-3 sees the rows the head really
    gets), hands the head the masked rows. Every rank runs the same submodule forwards in the same
    order, as ZeRO-3's parameter gathering needs; only the row count differs.
    """
    batch = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
    head = mlm_head_of(model) if masked_rows else None
    if head is None:
        return model(**batch).loss
    labels = batch["labels"]
    chosen = labels != IGNORE

    def masked(_module, args):
        return (args[0][chosen], *args[1:])

    hook = head.register_forward_pre_hook(masked, prepend=True)
    try:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    finally:
        hook.remove()
    return torch.nn.functional.cross_entropy(logits.float(), labels[chosen])


def make_objective(kind: str, tokenizer, seed: int, mlm_probability: float) -> LMObjective:
    return LMObjective(kind=kind, seed=seed, mask_token_id=tokenizer.mask_token_id,
                       vocab_size=len(tokenizer), special_ids=tuple(tokenizer.all_special_ids),
                       mlm_probability=mlm_probability)


def classification_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of the class logits (fp32) against the class ids in batch['labels']."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(logits.float(), batch["labels"])


# --- distillation: pure functions of logits and hidden states --------------------------------

def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """[B, L-1] bool: the positions of an LM batch that have a target; position i predicts the
    token i+1. Selecting rows with it orders them row by row, position by position."""
    return labels[:, 1:] != IGNORE


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
          temperature: float) -> torch.Tensor:
    """T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), the mean over rows (the last dim is the classes or
    the vocabulary; the callers keep only real rows, such as the target positions of a sequence).
    T² keeps the gradient scale independent of T (Hinton et al.)."""
    s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature ** 2 * (t.exp() * (t - s)).sum(-1).mean()


def kd_kl_top_k(student_logits: torch.Tensor, top_logits: torch.Tensor, top_ids: torch.Tensor,
                teacher_lse: torch.Tensor, temperature: float) -> torch.Tensor:
    """kd_kl on the teacher's top-k support: T²·KL between the two tempered distributions coarsened
    to the teacher's k top tokens plus one bucket for the rest of the vocabulary, the mean over
    rows. `top_logits`, `top_ids` [rows, k]: the teacher's k largest logits and their token ids;
    `teacher_lse` [rows]: logsumexp(z_t/T) over the whole vocabulary, so the teacher's tempered
    probabilities of its top k are exact. Merging tokens never increases a KL, so this is a lower
    bound of kd_kl, equal to it when k is the vocabulary (no rest bucket then)."""
    s = student_logits.float() / temperature
    s_lse = torch.logsumexp(s, dim=-1, keepdim=True)
    log_q = s.gather(-1, top_ids.long()) - s_lse
    log_p = top_logits.float() / temperature - teacher_lse.float().unsqueeze(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    if top_ids.shape[-1] < s.shape[-1]:
        # the rest as 1 − Σ top-k would cancel catastrophically once the top k hold nearly all;
        # the student's is a logsumexp over the other tokens, the teacher's -expm1(log Σ p_top)
        log_q_rest = torch.logsumexp(s.scatter(-1, top_ids.long(), float("-inf")), dim=-1) \
            - s_lse.squeeze(-1)
        p_rest = -torch.expm1(torch.logsumexp(log_p, dim=-1).clamp(max=0.0))
        kl = kl + torch.xlogy(p_rest, p_rest) - p_rest * log_q_rest
    return temperature ** 2 * kl.mean()


def hidden_mse(student_hidden: list[torch.Tensor], teacher_hidden: list[torch.Tensor],
               attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error between paired hidden states [B, L, H] over the real (unpadded) tokens,
    averaged over the pairs (Patient-KD style)."""
    keep = attention_mask.bool()
    terms = [torch.nn.functional.mse_loss(s.float()[keep], t.float()[keep])
             for s, t in zip(student_hidden, teacher_hidden, strict=True)]
    return torch.stack(terms).mean()


def kd_total(ce: torch.Tensor, kl: torch.Tensor, hidden: torch.Tensor | None, alpha: float,
             beta: float) -> torch.Tensor:
    """(1−α)·CE + α·KL (+ β·hidden)."""
    total = (1 - alpha) * ce + alpha * kl
    return total if hidden is None else total + beta * hidden
