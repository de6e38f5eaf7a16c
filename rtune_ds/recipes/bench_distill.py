"""`rtune bench distill`: the step time and peak memory of distillation against plain fine-tuning
of the same student (the new base, tuned with the bundle's method) on the same data and DeepSpeed
config, each a real launch; prints JSON. Distillation runs three times, with the same seed and
data order: with the teacher live on every micro-batch (distill.teacher_cache=false, the uncached
run; the teacher under its own config, stock: ZeRO-3 inference offloaded to CPU), then with an
empty teacher cache (cold: the teacher runs once over the train split and the file is built),
then again (warm: the file is read and no teacher is built).

Targets: warm / fine-tune step time <= 1.05 (live: <= 1.45, the teacher's forward being about a
third of a training step), and the warm run's per-step losses (train/loss, kd/ce, kd/kl) equal
to the live run's to float tolerance.
"""
from __future__ import annotations

import json
from pathlib import Path

from rtune_ds.artifacts.bundle import open_old_weights
from rtune_ds.config.load import load_run_config
from rtune_ds.hardware import cpu_info
from rtune_ds.jobs import benchmark
from rtune_ds.launch import launcher_command, run_launch

TARGET = 1.05  # warm cache
TARGET_LIVE = 1.45
LOSS_TOLERANCE = 1e-4  # relative, per step
KD_KEYS = ("train/loss", "kd/ce", "kd/kl")
DISTILL_RUNS = {"distill_live": ["distill.teacher_cache=false"], "distill_cold": [],
                "distill_warm": []}


def _summary(run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    return {"median_step_time_s": s["median_step_time_s"],
            "peak_rss_mb_per_rank": s["peak_rss_mb_per_rank"], "steps": s["step"]}


def kd_losses(run_dir: Path) -> list[dict]:
    """train/loss, kd/ce and kd/kl of every logged step."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: m[k] for k in KD_KEYS} for m in rows if "kd/kl" in m]


def compare_losses(live: list[dict], cached: list[dict]) -> dict:
    """The last step's losses of both runs and their largest difference over all steps."""
    worst = {k: max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for a, b in zip(live, cached))
             for k in KD_KEYS}
    return {"live_final": live[-1], "cached_final": cached[-1], "steps_compared": len(live),
            "max_rel_diff_per_step": worst, "tolerance": LOSS_TOLERANCE,
            "equal": len(live) == len(cached) and max(worst.values()) <= LOSS_TOLERANCE}


def run(config: str, ds_config: str | None, bundle: str, base: str, nproc: int, steps: int,
        out: str, overrides: list[str]) -> dict:
    common = [*overrides, f"model.path={base}", f"train.max_steps={steps}", "train.eval_every=0",
              "train.log_every=1", *([f"deepspeed={ds_config}"] if ds_config else [])]
    cfg = load_run_config(config, [*common, "run_dir=bench-check"], "finetune")  # fail early
    method = open_old_weights(bundle, cfg.task.labels or ["?", "?"], config).method
    out_dir = Path(out)
    runs = {name: out_dir / name for name in ("finetune", *DISTILL_RUNS)}
    cache_dir = out_dir / "teacher_cache"  # empty: the cold run builds
    benchmark.new_out(out, *runs.values(), cache_dir)
    run_launch(launcher_command(nproc, ["finetune", "--config", config, *common,
                                        f"tuning.method={method}",
                                        f"run_dir={runs['finetune']}"]), "bench distill: finetune")
    cache = f"distill.teacher_cache_dir={cache_dir}"
    for name, extra in DISTILL_RUNS.items():
        run_launch(launcher_command(nproc, ["recycle", "--config", config, "--method", "distill",
                                            "--bundle", bundle, "--base", base, *common, cache,
                                            *extra, f"run_dir={runs[name]}"]),
                   f"bench distill: {name}")
    result = {name: _summary(run_dir) for name, run_dir in runs.items()}
    teachers = {name: json.loads((runs[name] / "teacher.json").read_text())
                for name in DISTILL_RUNS}
    for name, teacher in teachers.items():
        result[name]["teacher_cache"] = teacher["cache"]
    ft = result["finetune"]["median_step_time_s"]
    ratio = {name: result[name]["median_step_time_s"] / ft for name in DISTILL_RUNS}
    cold = result["distill_cold"]
    ds_used = json.loads((runs["distill_warm"] / "ds_config.json").read_text())
    report = {"bench": "distill", "nproc": nproc, "steps": steps, "method": method,
              "cpu": cpu_info()["model"], "zero_stage": ds_used["zero_optimization"]["stage"],
              "precision": "bf16" if ds_used.get("bf16", {}).get("enabled") else "fp32",
              **result,
              "step_time_ratio": ratio["distill_warm"], "target_ratio": TARGET,
              "step_time_ratio_cold": ratio["distill_cold"],
              # the cold run's steps plus building the cache, per fine-tuning step
              "cold_ratio_with_build": (cold["median_step_time_s"] * steps
                                        + cold["teacher_cache"]["build_s"]) / (ft * steps),
              "step_time_ratio_live": ratio["distill_live"], "target_ratio_live": TARGET_LIVE,
              "losses": compare_losses(kd_losses(runs["distill_live"]),
                                       kd_losses(runs["distill_warm"])),
              "teacher": teachers["distill_cold"]}
    return benchmark.publish(report, out_dir / "bench_distill.json")
