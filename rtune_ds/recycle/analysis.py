"""What the analyses compute, as pure functions of tensors and metric records:

- linear interpolation between two tuned models, θ(λ) = (1−λ)·θ_a + λ·θ_b, and the barrier of
  a metric along it;
- functional similarity of attention heads: the Jensen–Shannon divergence between the attention
  distributions two models give the same query tokens (0 for identical heads, at most ln 2);
- distances between two parameter sets: global and per-parameter L2, cosine;
- convergence: the first step at which a run's eval metric reaches a fraction of a target.
"""
from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)


def lambdas(points: int) -> list[float]:
    """`points` equally spaced values from 0 to 1 (both ends included)."""
    if points < 2:
        raise ValueError(f"need at least 2 interpolation points, got {points}")
    return [i / (points - 1) for i in range(points)]


def interpolate(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """One tensor of θ(λ) = (1−λ)·θ_a + λ·θ_b (callers go tensor by tensor, so writing into a
    model never needs a third full copy). λ = 0 gives x and λ = 1 gives y exactly. A tensor that
    is not floating point (an index buffer) must be the same in both and is passed through."""
    if x.shape != y.shape:
        raise ValueError(f"shapes {list(x.shape)} and {list(y.shape)} differ")
    if not x.is_floating_point():
        if not torch.equal(x, y):
            raise ValueError("non-float tensors differ and cannot be interpolated")
        return x
    return (1.0 - lam) * x + lam * y.to(x.dtype)


def barrier(values: list[float], lams: list[float], rises: bool) -> float:
    """How far a curve along λ falls short of the straight line between its endpoints at its
    worst point: max over λ of line(λ) − value(λ) for a metric that rises (accuracy), of
    value(λ) − line(λ) for a loss. 0 (the endpoints' own gap) when no point in between is worse
    than the line: the two models are linearly connected."""
    lines = [(1 - t) * values[0] + t * values[-1] for t in lams]
    return max((line - v) if rises else (v - line) for line, v in zip(lines, values))


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


def parameter_distances(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                        exclude: set[str] = frozenset()) -> dict:
    """Global L2 distance ‖θ_a − θ_b‖, cosine similarity of the two flattened parameter vectors,
    and both per parameter (with ‖θ_a‖ for scale), over the names both hold minus `exclude`
    (say, the task head for a backbone-only comparison). An undefined cosine (a zero vector) is
    None. Computed in float64."""
    names = sorted((a.keys() & b.keys()) - set(exclude))
    if not names:
        raise ValueError("no parameters to compare")
    per, diff_sq, dot, norm_a_sq, norm_b_sq = {}, 0.0, 0.0, 0.0, 0.0
    for name in names:
        x, y = a[name].double().flatten(), b[name].double().flatten()
        if x.shape != y.shape:
            raise ValueError(f"'{name}': shapes {list(a[name].shape)} and {list(b[name].shape)} "
                             "differ")
        d2, xy, xx, yy = ((x - y) ** 2).sum().item(), (x @ y).item(), (x @ x).item(), (y @ y).item()
        per[name] = {"l2": math.sqrt(d2), "cosine": _cosine(xy, xx, yy), "norm_a": math.sqrt(xx)}
        diff_sq, dot, norm_a_sq, norm_b_sq = diff_sq + d2, dot + xy, norm_a_sq + xx, norm_b_sq + yy
    return {"l2": math.sqrt(diff_sq), "cosine": _cosine(dot, norm_a_sq, norm_b_sq),
            "norm_a": math.sqrt(norm_a_sq), "norm_b": math.sqrt(norm_b_sq),
            "parameters": len(names), "per_parameter": per}


def _cosine(xy: float, xx: float, yy: float) -> float | None:
    return xy / math.sqrt(xx * yy) if xx > 0 and yy > 0 else None


def higher_is_better(metric: str) -> bool:
    """Losses and perplexities fall as a run improves; anything else (accuracy, F1) rises."""
    return not any(word in metric for word in ("loss", "ppl"))


def threshold(metric: str, target: float, fraction: float) -> float:
    """What reaching `fraction` of `target` means: at least fraction·target for a metric that
    rises, at most target/fraction for a loss."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return fraction * target if higher_is_better(metric) else target / fraction


def steps_to_target(records: list[dict], metric: str, target: float, fraction: float = 1.0
                    ) -> dict | None:
    """The first logged step at which `metric` reaches `fraction` of `target` (see threshold),
    or None if it never does. `records`: metrics.jsonl rows ({"step": ..., metric: ...}); tokens
    come from the step's `train/tokens` (0 at step 0), wall time from a `wall_time` (seconds) on
    the metric's row, each None when not logged."""
    bar = threshold(metric, target, fraction)
    rises = higher_is_better(metric)
    slack = 1e-9 * max(1.0, abs(bar))  # 0.75 * 0.8 is 0.6000000000000001: 0.6 reaches it
    tokens = {r["step"]: r["train/tokens"] for r in records if "train/tokens" in r}
    tokens.setdefault(0, 0)
    for row in sorted((r for r in records if metric in r), key=lambda r: r["step"]):
        value = row[metric]
        if (value >= bar - slack) if rises else (value <= bar + slack):
            return {"step": row["step"], "value": value, "tokens": tokens.get(row["step"]),
                    "wall_time_s": row.get("wall_time")}
    return None
