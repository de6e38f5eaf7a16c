"""Convergence: the first step at which a run's eval metric reaches a fraction of a target."""
from __future__ import annotations

from rtune_ds.analysis.connectivity import higher_is_better


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

