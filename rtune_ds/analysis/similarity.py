"""Functional similarity of attention heads: the Jensen–Shannon divergence between the attention
distributions two models give the same query tokens (0 for identical heads, at most ln 2)."""
from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)


def js_divergence(p: torch.Tensor, q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Jensen–Shannon divergence (natural log) between distributions along `dim`; zero
    probabilities contribute nothing."""
    p, q = p.double(), q.double()
    m = 0.5 * (p + q)
    kl_pm = (torch.xlogy(p, p) - torch.xlogy(p, m)).sum(dim)
    kl_qm = (torch.xlogy(q, q) - torch.xlogy(q, m)).sum(dim)
    return (0.5 * (kl_pm + kl_qm)).clamp(0.0, LN2)  # rounding can step just outside [0, ln 2]


def attention_js(attn_a: list[torch.Tensor], attn_b: list[torch.Tensor],
                 attention_mask: torch.Tensor) -> torch.Tensor:
    """[layers, heads]: the JS divergence between the two models' attention distributions, per
    query token, averaged over the valid query tokens of each example and then over the examples.
    `attn_*`: one [batch, heads, q, k] tensor of attention probabilities per layer (as
    `output_attentions=True` gives them); `attention_mask`: [batch, seq], 1 for real tokens."""
    if len(attn_a) != len(attn_b):
        raise ValueError(f"{len(attn_a)} and {len(attn_b)} layers of attentions")
    valid = attention_mask.bool()
    counts = valid.sum(1).clamp(min=1).double()  # [batch]
    out = []
    for a, b in zip(attn_a, attn_b):
        if a.shape != b.shape:
            raise ValueError(f"attention shapes {list(a.shape)} and {list(b.shape)} differ")
        js = js_divergence(a, b)  # [batch, heads, q]
        per_example = (js * valid[:, None, :]).sum(-1) / counts[:, None]  # [batch, heads]
        out.append(per_example.mean(0))
    return torch.stack(out)

