"""Distances between two parameter sets: global and per-parameter L2, cosine."""
from __future__ import annotations

import math

import torch


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

