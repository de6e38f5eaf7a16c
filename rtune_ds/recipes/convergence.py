"""`rtune analyze convergence`: how soon runs reach a target, as a protocol:

1. per run, read its metrics.jsonl and the wall times of the metric from its TensorBoard events;
2. the first step at which the dev metric reaches a fraction of the target (with its tokens and
   wall time), the best and the final value -> convergence.json in --out.
"""
from __future__ import annotations

from pathlib import Path

from rtune_ds import dist
from rtune_ds.analysis.connectivity import higher_is_better
from rtune_ds.analysis.convergence import steps_to_target, threshold
from rtune_ds.errors import ConfigError
from rtune_ds.io import save_json
from rtune_ds.train.monitor import read_metrics


def from_args(args, command: str) -> None:
    """The command from its parsed arguments."""
    run(args.runs, args.metric, args.target, args.fraction, args.out, command)


def run(runs: list[str], metric: str, target: float, fraction: float, out: str,
        command: str) -> dict | None:
    if not 0 < fraction <= 1:
        raise ConfigError(f"--fraction {fraction}: must be in (0, 1]")
    rises = higher_is_better(metric)
    rows = []
    for run_dir in runs:
        path = Path(run_dir, "metrics.jsonl")
        if not path.is_file():
            raise ConfigError(f"--runs {run_dir}: no metrics.jsonl (not a run directory)")
        records = read_metrics(path)
        values = [r[metric] for r in records if metric in r]
        if not values:
            logged = sorted({k for r in records for k in r if k.startswith("eval/")})
            raise ConfigError(f"--metric {metric}: not logged in {path} (eval metrics there: "
                              f"{', '.join(logged) or 'none'})")
        wall = wall_times(Path(run_dir, "tensorboard"), metric)
        records = [{**r, "wall_time": wall[r["step"]]} if metric in r and r["step"] in wall
                   else r for r in records]
        hit = steps_to_target(records, metric, target, fraction)
        rows.append({"run": str(Path(run_dir).resolve()), "reached": hit is not None,
                     **(hit or dict.fromkeys(("step", "value", "tokens", "wall_time_s"))),
                     "best": max(values) if rises else min(values), "final": values[-1]})
    result = {"command": command, "metric": metric, "target": target, "fraction": fraction,
              "threshold": threshold(metric, target, fraction), "runs": rows}
    if dist.is_main():
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_json(result, out_dir / "convergence.json")
        print(f"rtune: convergence -> {out_dir / 'convergence.json'}")
    return result


def wall_times(tensorboard_dir: Path, tag: str) -> dict[int, float]:
    """step -> seconds from the run's first TensorBoard event to `tag`'s value at that step
    (including any pause between launches of a resumed run); empty if `tag` was not logged."""
    if not tensorboard_dir.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return {}
    start = events.FirstEventTimestamp()
    return {e.step: e.wall_time - start for e in events.Scalars(tag)}
