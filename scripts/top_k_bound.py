"""How close the bounded LM teacher cache's KL is to the full one, by k and T: the teacher (a base +
a LoRA bundle of an lm task) and the student (the base: distillation's starting point) over the
first train examples' target positions; per (T, k), the mean teacher mass outside its top k and
the full and bounded KL (objectives.kd_kl, kd_kl_top_k).

    python scripts/top_k_bound.py --base BASE --bundle BUNDLE --train TRAIN.jsonl \
        [--max-len 48 --examples 96 --precision bf16]
"""
from __future__ import annotations

import argparse
import json

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from rtune_ds.config.schema import TaskConfig
from rtune_ds.data.examples import load_task
from rtune_ds.data.tokenizer import load_tokenizer
from rtune_ds.train.objectives import kd_kl, kd_kl_top_k, next_token_targets


@torch.no_grad()
def target_logits(model, examples, count: int) -> torch.Tensor:
    rows = []
    for start in range(0, count, 8):
        batch = examples.batch(list(range(start, min(start + 8, count))))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        rows.append(logits[:, :-1][next_token_targets(batch["labels"])].float())
    return torch.cat(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--bundle", required=True, help="an rtune LoRA bundle directory")
    ap.add_argument("--train", required=True)
    ap.add_argument("--max-len", type=int, default=48)
    ap.add_argument("--examples", type=int, default=96)
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    args = ap.parse_args()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    task = TaskConfig(type="lm", train=args.train, max_len=args.max_len)
    train = load_task(task, load_tokenizer(args.base), 0, args.train).splits["train"]
    student = AutoModelForCausalLM.from_pretrained(args.base, dtype=dtype).eval()
    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=dtype)
    teacher = PeftModel.from_pretrained(base, f"{args.bundle}/adapter").eval()
    t = target_logits(teacher, train, args.examples)
    s = target_logits(student, train, args.examples)
    found = {"positions": len(t), "by_t_and_k": []}
    for temperature in (1.0, 2.0, 5.0):
        full, lse = kd_kl(s, t, temperature).item(), torch.logsumexp(t / temperature, -1)
        for k in (k for k in (16, 64, 256, 1024) if k < t.shape[-1]):
            top = t.topk(k, -1)
            outside = -torch.expm1(torch.logsumexp(top.values / temperature, -1) - lse)
            bounded = kd_kl_top_k(s, top.values, top.indices.int(), lse, temperature).item()
            found["by_t_and_k"].append({"T": temperature, "k": k,
                                        "mass_outside": outside.mean().item(), "full_kl": full,
                                        "bounded_kl": bounded,
                                        "rel_error": (full - bounded) / full})
    print(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
