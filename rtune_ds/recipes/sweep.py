"""rtune sweep: the same job once per DeepSpeed config, each a real launch, then one table.

The job is a pretraining job, or a fine-tuning job (one with a `task` section: how a PEFT run
compares across ZeRO stages). Each launch goes to OUT/<config name>/ and leaves its summary.json;
the table (markdown + JSON + TensorBoard hparams under OUT/tensorboard) has tokens/s, step time,
peak memory per rank, the final eval loss, and whether the final losses agree within the stated
tolerance.
"""
from __future__ import annotations

import json
from pathlib import Path

from rtune_ds.config.load import load_run_config, read_mapping
from rtune_ds.errors import ConfigError
from rtune_ds.io import save_json, save_text
from rtune_ds.launch import launcher_command, run_launch
from rtune_ds.report import markdown_table

# absolute, on the final eval loss: ZeRO stages only reorder reductions, whose rounding compounds
# over the steps; bf16 keeps 8 bits of mantissa (the SmolLM2 LoRA sweep, 24 steps: the stages'
# losses differed by up to 0.016)
LOSS_TOLERANCE = {"fp32": 1e-3, "bf16": 0.03}


def loss_tolerance(rows: list[dict]) -> float:
    """The tolerance of the least precise run."""
    return max(LOSS_TOLERANCE[r["precision"]] for r in rows)


def job_command(job: str) -> str:
    """finetune for a job with a task section, else pretrain."""
    return "finetune" if "task" in read_mapping(job) else "pretrain"


def launch_command(job: str, ds_config: str, nproc: int, run_dir: Path,
                   overrides: list[str]) -> list[str]:
    return launcher_command(nproc, [job_command(job), "--config", job, "--ds-config", ds_config,
                                    f"run_dir={run_dir}", *overrides])


def row_of(name: str, run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    return {"config": name, "world_size": s["world_size"], "zero_stage": s["zero_stage"],
            "precision": s["precision"], "tokens_per_s": s["tokens"] / s["step"]
            / s["median_step_time_s"], "median_step_time_s": s["median_step_time_s"],
            "peak_rss_mb_per_rank": s["peak_rss_mb_per_rank"],
            "final_eval_loss": s["final_eval"]["eval/loss"]}


def markdown(rows: list[dict], agree: bool, tolerance: float) -> str:
    lines = markdown_table(
        ["config", "ranks", "ZeRO", "precision", "tokens/s", "step time (s)",
         "peak RSS per rank (MB)", "final eval loss"],
        ([r["config"], r["world_size"], r["zero_stage"], r["precision"],
          f"{r['tokens_per_s']:.0f}", f"{r['median_step_time_s']:.3f}",
          " / ".join(f"{m:.0f}" for m in r["peak_rss_mb_per_rank"]), f"{r['final_eval_loss']:.5f}"]
         for r in rows))
    lines.append("")
    lines.append(f"Final eval losses agree within {tolerance:g} (precision "
                 f"{', '.join(sorted({r['precision'] for r in rows}))}): "
                 f"{'yes' if agree else 'NO'}")
    return "\n".join(lines) + "\n"


def run(job: str, ds_configs: list[str], nproc: int, out: str, overrides: list[str]) -> dict:
    # bad input fails before any launch
    load_run_config(job, overrides + ["run_dir=sweep-check"], job_command(job))
    for path in ds_configs:
        if not Path(path).is_file():
            raise ConfigError(f"--ds-configs: DeepSpeed JSON not found: {path}")
    out_dir = Path(out)
    rows = []
    for path in ds_configs:
        name = Path(path).stem
        run_dir = out_dir / name
        run_launch(launch_command(job, path, nproc, run_dir, overrides),
                   f"sweep: {path} (run dir {run_dir})")
        rows.append(row_of(name, run_dir))
    losses = [r["final_eval_loss"] for r in rows]
    tolerance = loss_tolerance(rows)
    agree = max(losses) - min(losses) <= tolerance
    report = {"job": job, "nproc": nproc, "loss_tolerance": tolerance,
              "losses_agree": agree, "rows": rows}
    save_json(report, out_dir / "sweep.json")
    save_text(markdown(rows, agree, tolerance), out_dir / "sweep.md")
    _tensorboard(out_dir, rows)
    print(markdown(rows, agree, tolerance))
    return report


def _tensorboard(out_dir: Path, rows: list[dict]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    for r in rows:
        with SummaryWriter(str(out_dir / "tensorboard" / r["config"])) as writer:
            writer.add_hparams({"config": r["config"], "zero_stage": r["zero_stage"],
                                "world_size": r["world_size"]},
                               {"sweep/tokens_per_s": r["tokens_per_s"],
                                "sweep/step_time_s": r["median_step_time_s"],
                                "sweep/peak_rss_mb": max(r["peak_rss_mb_per_rank"]),
                                "sweep/final_eval_loss": r["final_eval_loss"]}, run_name=".")
