"""`rtune bench distill`: the step time and peak memory of distillation against plain fine-tuning
of the same student (the new base, tuned with the bundle's method) on the same data and DeepSpeed
config, each a real launch; prints JSON. Distillation runs with the same seed and data order in
three ways: with an empty teacher cache (cold: the teacher runs once over the train split and the
file is built), with that file (warm: read, no teacher built), and with the teacher live on every
micro-batch (distill.teacher_cache=false, the uncached run; the teacher under its own config,
stock: ZeRO-3 inference offloaded to CPU).

After the cold run, fine-tuning, live and warm launches are repeated `repeats` times in ABBA
order; a ratio is the median over the repeats of the two launches' median step times in that
repeat, so a drift of a shared machine weighs on both. Targets: warm / fine-tune <= 1.05 (live:
<= 1.45, the teacher's forward being about a third of a training step), and the warm run's
per-step losses (train/loss, kd/ce, kd/kl) equal to the live run's to float tolerance, where the
cache holds the teacher's outputs whole (class logits; an LM table whose k is the vocabulary).
An LM table of k < V gives the KL on the teacher's top k plus a rest bucket, a lower bound: the
report gives its error, the live run's kd/kl minus the warm run's, at step 1 (both students still
the same weights: the bound's error alone) and the largest over the steps (drift included).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from rtune_ds.artifacts.bundle import open_old_weights
from rtune_ds.config.load import load_run_config
from rtune_ds.errors import ConfigError
from rtune_ds.hardware import cpu_info
from rtune_ds.jobs import benchmark
from rtune_ds.launch import launcher_command, run_launch

TARGET = 1.05  # warm cache
TARGET_LIVE = 1.45
# per step, |live - cached| <= tolerance * max(1, |live|): relative for large terms, absolute for
# small ones (kd/kl near 0), whose error follows the logits' scale; bf16: about half a bf16 step,
# since a live bf16 teacher's logits round with its batch's shape
LOSS_TOLERANCE = {"fp32": 1e-4, "bf16": 2.0 ** -8}
KD_KEYS = ("train/loss", "kd/ce", "kd/kl")
REPEATED = ("finetune", "distill_live", "distill_warm")
CACHE_SETTING = {"distill_cold": [], "distill_warm": [],
                 "distill_live": ["distill.teacher_cache=false"]}


def _summary(run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    return {"median_step_time_s": s["median_step_time_s"],
            "peak_rss_mb_per_rank": s["peak_rss_mb_per_rank"], "steps": s["step"]}


def kd_losses(run_dir: Path) -> list[dict]:
    """train/loss, kd/ce and kd/kl of every logged step."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: m[k] for k in KD_KEYS} for m in rows if "kd/kl" in m]


def compare_losses(live: list[dict], cached: list[dict], precision: str,
                   bounded: bool = False) -> dict:
    """The last step's losses of both runs and their largest differences over all steps (absolute
    and relative); then whether every step is within the precision's tolerance, or, for a bounded
    LM table (`bounded`), the KL bound's error (kl_bound_error)."""
    def worst(scale) -> dict[str, float]:
        return {k: max(abs(a[k] - b[k]) / scale(a[k]) for a, b in zip(live, cached))
                for k in KD_KEYS}

    found = {"live_final": live[-1], "cached_final": cached[-1], "steps_compared": len(live),
             "max_abs_diff_per_step": worst(lambda x: 1.0),
             "max_rel_diff_per_step": worst(lambda x: max(abs(x), 1e-12))}
    if bounded:
        return {**found, "kl_bound_error": kl_bound_error(live, cached)}
    within = worst(lambda x: max(1.0, abs(x)))
    return {**found, "tolerance": LOSS_TOLERANCE[precision],
            "equal": len(live) == len(cached)
            and max(within.values()) <= LOSS_TOLERANCE[precision]}


def kl_bound_error(live: list[dict], cached: list[dict]) -> dict:
    """The full KL (live) minus the bounded one (warm), absolute and relative to the full: at step
    1, where both runs' students have the same weights, and the largest over the steps."""
    def error(a: dict, b: dict) -> dict[str, float]:
        return {"abs": a["kd/kl"] - b["kd/kl"],
                "rel": (a["kd/kl"] - b["kd/kl"]) / max(abs(a["kd/kl"]), 1e-12)}

    errors = [error(a, b) for a, b in zip(live, cached)]
    return {"step_1": {"full": live[0]["kd/kl"], "bounded": cached[0]["kd/kl"], **errors[0]},
            "max_abs": max(abs(e["abs"]) for e in errors),
            "max_rel": max(abs(e["rel"]) for e in errors)}


def bounded_table(cache: dict) -> bool:
    """Whether the teacher cache (a teacher.json's record) holds an LM table of fewer tokens than
    the vocabulary; class logits and a table of k = V are the teacher's outputs whole."""
    return "top_k" in cache and cache["top_k"] < cache["vocab_size"]


def run(config: str, ds_config: str | None, bundle: str, base: str, nproc: int, steps: int,
        repeats: int, out: str, overrides: list[str], force_same_base: bool = False) -> dict:
    if repeats < 1 or steps < 1:
        raise ConfigError(f"rtune bench distill: --steps and --repeats must be >= 1 (got {steps}, "
                          f"{repeats})")
    common = [*overrides, f"model.path={base}", f"train.max_steps={steps}", "train.eval_every=0",
              "train.log_every=1", *([f"deepspeed={ds_config}"] if ds_config else [])]
    cfg = load_run_config(config, [*common, "run_dir=bench-check"], "finetune")  # fail early
    method = open_old_weights(bundle, cfg.task.labels or ["?", "?"], config).method
    out_dir = Path(out)
    cache_dir = out_dir / "teacher_cache"  # empty: the cold run builds
    cold = out_dir / "distill_cold"
    runs = {side: [out_dir / f"{side}_{r}" for r in range(repeats)] for side in REPEATED}
    benchmark.new_out(out, cold, cache_dir, *(d for dirs in runs.values() for d in dirs))

    def launch(side: str, run_dir: Path) -> dict:
        if side == "finetune":
            args = ["finetune", "--config", config, *common, f"tuning.method={method}"]
        else:
            args = ["recycle", "--config", config, "--method", "distill", "--bundle", bundle,
                    "--base", base, *(["--force-same-base"] if force_same_base else []), *common,
                    f"distill.teacher_cache_dir={cache_dir}", *CACHE_SETTING[side]]
        run_launch(launcher_command(nproc, [*args, f"run_dir={run_dir}"]),
                   f"bench distill: {run_dir.name}")
        return _summary(run_dir)

    cold_run = launch("distill_cold", cold)
    times = benchmark.interleaved(REPEATED, repeats, lambda side, r: launch(
        side, runs[side][r])["median_step_time_s"])
    result = {side: {**_summary(runs[side][0]), "median_step_time_s": statistics.median(t),
                     "median_step_time_s_per_repeat": t} for side, t in times.items()}
    result["distill_cold"] = cold_run
    teachers = {side: json.loads((d / "teacher.json").read_text()) for side, d in (
        ("distill_cold", cold), ("distill_live", runs["distill_live"][0]),
        ("distill_warm", runs["distill_warm"][0]))}
    for side, teacher in teachers.items():
        result[side]["teacher_cache"] = teacher["cache"]

    def ratio(side: str) -> float:
        return statistics.median(a / b for a, b in zip(times[side], times["finetune"]))

    ft = result["finetune"]["median_step_time_s"]
    ds_used = json.loads((cold / "ds_config.json").read_text())
    precision = "bf16" if ds_used.get("bf16", {}).get("enabled") else "fp32"
    report = {"bench": "distill", "nproc": nproc, "steps": steps, "repeats": repeats,
              "method": method, "cpu": cpu_info()["model"],
              "zero_stage": ds_used["zero_optimization"]["stage"], "precision": precision,
              **result,
              "step_time_ratio": ratio("distill_warm"), "target_ratio": TARGET,
              "step_time_ratio_cold": cold_run["median_step_time_s"] / ft,
              # the cold run's steps plus building the cache, per fine-tuning step
              "cold_ratio_with_build": (cold_run["median_step_time_s"] * steps
                                        + teachers["distill_cold"]["cache"]["build_s"])
              / (ft * steps),
              "step_time_ratio_live": ratio("distill_live"), "target_ratio_live": TARGET_LIVE,
              "losses": compare_losses(kd_losses(runs["distill_live"][0]),
                                       kd_losses(runs["distill_warm"][0]), precision,
                                       bounded_table(teachers["distill_cold"]["cache"])),
              "teacher": teachers["distill_cold"]}
    return benchmark.publish(report, out_dir / "bench_distill.json")
