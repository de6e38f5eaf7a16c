"""The study's statistics: a paired bootstrap over test items pooled over seeds, Holm's correction
over a family of contrasts, and the verdict each contrast earns.

A contrast compares arm A with arm B on the same test items, seed by seed: `a[s][i]` is 1 when A's
run of seed s classifies item i correctly (else 0), likewise `b`. The per-item difference averaged
over seeds, d_i = mean_s(a[s][i] - b[s][i]), is what items resample: the difference of accuracies
is mean_i(d_i), and its bootstrap distribution draws n items with replacement `resamples` times
(seeded). Reported: the difference, the 95% percentile interval, a two-sided p-value (the share of
resampled differences at least as far from the observed one as the observed one is from 0, +1
smoothed) and the smallest effect the test set can detect (80% power at the 5% level:
(z_0.975 + z_0.8) × the bootstrap standard error)."""
from __future__ import annotations

import numpy as np

RESAMPLES = 10_000
ALPHA = 0.05
DETECTABLE_Z = 1.959964 + 0.841621  # two-sided 5% level, 80% power
CHUNK = 1_000  # resamples drawn at once (bounds memory on large test sets)
OUTCOMES = ("reproduced", "contradicted", "inconclusive")


def item_differences(a, b) -> np.ndarray:
    """d_i: the per-item difference of A and B, averaged over seeds ([seeds][items] each)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.shape[1] == 0:
        raise ValueError(f"paired arms need the same seeds and items: {a.shape} vs {b.shape}")
    return (a - b).mean(axis=0)


def paired_bootstrap(a, b, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """{difference, ci_low, ci_high, p_value, se, detectable, items, seeds} of A − B."""
    d = item_differences(a, b)
    n, rng = len(d), np.random.default_rng(seed)
    boot = np.concatenate([d[rng.integers(0, n, size=(min(CHUNK, resamples - start), n))]
                           .mean(axis=1) for start in range(0, resamples, CHUNK)])
    diff = float(d.mean())
    extreme = np.abs(boot - diff) >= abs(diff) - 1e-12
    low, high = np.quantile(boot, [ALPHA / 2, 1 - ALPHA / 2])
    se = float(boot.std(ddof=1))
    return {"difference": diff, "ci_low": float(low), "ci_high": float(high),
            "p_value": float((1 + extreme.sum()) / (1 + resamples)), "se": se,
            "detectable": DETECTABLE_Z * se, "items": n,
            "seeds": int(np.asarray(a).shape[0]) if np.asarray(a).ndim > 1 else 1,
            "resamples": resamples}


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values of a family of tests."""
    order = sorted(p_values, key=p_values.get)
    m, running, out = len(order), 0.0, {}
    for k, name in enumerate(order):
        running = max(running, min(1.0, (m - k) * p_values[name]))
        out[name] = running
    return out


def verdict(difference: float, p_adjusted: float, alpha: float = ALPHA) -> str:
    """reproduced: the claimed (positive) effect is significant after correction; contradicted:
    the opposite one is; inconclusive: neither (the test set cannot decide)."""
    if p_adjusted < alpha and difference > 0:
        return "reproduced"
    if p_adjusted < alpha and difference < 0:
        return "contradicted"
    return "inconclusive"


def judge(tests: dict[str, dict], alpha: float = ALPHA) -> dict[str, dict]:
    """Each paired_bootstrap result with its Holm-adjusted p-value (over `tests`) and verdict."""
    adjusted = holm({name: t["p_value"] for name, t in tests.items()})
    return {name: {**t, "p_holm": adjusted[name],
                   "verdict": verdict(t["difference"], adjusted[name], alpha)}
            for name, t in tests.items()}
