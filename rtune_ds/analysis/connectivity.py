"""Linear mode connectivity: θ(λ) = (1−λ)·θ_a + λ·θ_b and the barrier of a metric along it."""
from __future__ import annotations

import torch


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


def higher_is_better(metric: str) -> bool:
    """Losses and perplexities fall as a run improves; anything else (accuracy, F1) rises."""
    return not any(word in metric for word in ("loss", "ppl"))

