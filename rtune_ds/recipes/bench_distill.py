"""`rtune bench distill`: the step time and peak memory of distillation against plain fine-tuning
of the same student (the new base, tuned with the bundle's method) on the same data and DeepSpeed
config, each a real launch; prints JSON. Target: distill / fine-tune step time <= 1.45 (the
teacher's forward is about a third of a training step). The teacher runs under its own config
(distill.teacher_deepspeed; stock: ZeRO-3 inference with its parameters offloaded to CPU).
"""
from __future__ import annotations

import json
from pathlib import Path

from rtune_ds.artifacts.bundle import open_old_weights
from rtune_ds.config.load import load_run_config
from rtune_ds.jobs import benchmark
from rtune_ds.launch import launcher_command, run_launch

TARGET = 1.45


def _summary(run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    return {"median_step_time_s": s["median_step_time_s"],
            "peak_rss_mb_per_rank": s["peak_rss_mb_per_rank"], "steps": s["step"]}


def run(config: str, ds_config: str | None, bundle: str, base: str, nproc: int, steps: int,
        out: str, overrides: list[str]) -> dict:
    common = [*overrides, f"model.path={base}", f"train.max_steps={steps}", "train.eval_every=0",
              *([f"deepspeed={ds_config}"] if ds_config else [])]
    cfg = load_run_config(config, [*common, "run_dir=bench-check"], "finetune")  # fail early
    method = open_old_weights(bundle, cfg.task.labels or ["?", "?"], config).method
    out_dir = Path(out)
    runs = {"finetune": out_dir / "finetune", "distill": out_dir / "distill"}
    benchmark.new_out(out, *runs.values())
    run_launch(launcher_command(nproc, ["finetune", "--config", config, *common,
                                        f"tuning.method={method}",
                                        f"run_dir={runs['finetune']}"]), "bench distill: finetune")
    run_launch(launcher_command(nproc, ["recycle", "--config", config, "--method", "distill",
                                        "--bundle", bundle, "--base", base, *common,
                                        f"run_dir={runs['distill']}"]), "bench distill: distill")
    result = {name: _summary(run_dir) for name, run_dir in runs.items()}
    ratio = result["distill"]["median_step_time_s"] / result["finetune"]["median_step_time_s"]
    ds_used = json.loads((runs["distill"] / "ds_config.json").read_text())
    report = {"bench": "distill", "nproc": nproc, "steps": steps, "method": method,
              "zero_stage": ds_used["zero_optimization"]["stage"],
              "precision": "bf16" if ds_used.get("bf16", {}).get("enabled") else "fp32",
              **result, "step_time_ratio": ratio, "target_ratio": TARGET,
              "teacher": json.loads((runs["distill"] / "teacher.json").read_text())}
    return benchmark.publish(report, out_dir / "bench_distill.json")
