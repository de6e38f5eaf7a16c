"""Calibrating v1 of the study on the released MiniLM (issue 21): for each candidate setting of
v1's continual pretraining (LR, steps, blend), pretrain v1 from v0 on the decontaminated corpora,
then measure the study's upgrade gate: the relative fall of the computing and the general MLM
eval losses (v1's first eval, after the head warm-up, to its last), and the dev gain over the
majority class that the v0 full-FT bundle keeps on v1 with no training.

    python scripts/calibrate_upgrade.py --data PREPARED_DIR --out DIR [--nproc 2]

Writes DIR/calibration.json (one entry per candidate, with its seconds); the committed result is
rtune_ds/resources/calibration/minilm_v1.json."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from rtune_ds.demo.data import study_data
from rtune_ds.models.released import fetch_released

CANDIDATES = [  # (name, lr, steps, [general, computing] before / after the switch)
    ("lr1e-4_100", 1e-4, 100, [[0.5, 0.5], [0.1, 0.9]]),  # the first protocol's v1
    ("lr5e-4_100_dom", 5e-4, 100, [[0.2, 0.8], [0.05, 0.95]]),
    ("lr1e-3_100_dom", 1e-3, 100, [[0.2, 0.8], [0.05, 0.95]]),
    ("lr5e-4_100_only", 5e-4, 100, [[0.02, 0.98], [0.01, 0.99]]),
    ("lr5e-4_200_only", 5e-4, 200, [[0.02, 0.98], [0.01, 0.99]]),
]


def rtune(nproc: int, *args: str) -> None:
    cmd = ["deepspeed", "--num_gpus", str(nproc), "--module", "rtune_ds", *args]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--nproc", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out).resolve()
    study = study_data(Path(args.data), out, {"train": 512, "dev": 256})
    v0 = str(fetch_released("all-minilm-l6-v2"))
    tasks, corpora = out / "tasks", out / "corpora"
    task = {"run_dir": str(out / "bundle"), "seed": 1, "model": {"path": v0},
            "task": {"type": "classification", "train": str(tasks / "foldoc_category_train.jsonl"),
                     "dev": str(tasks / "foldoc_category_dev.jsonl"),
                     "test": str(tasks / "foldoc_category_test.jsonl"), "max_len": 32},
            "train": {"micro_batch_size": 16, "global_batch_size": 32, "lr": 1e-4,
                      "max_steps": 96, "warmup_steps": 10, "min_lr_ratio": 0.0,
                      "eval_every": 16, "save_every": 0, "log_every": 8, "precision": "auto"}}
    (out / "bundle.yaml").write_text(yaml.safe_dump(task))
    if not (out / "bundle" / "summary.json").is_file():
        rtune(args.nproc, "finetune", "--config", str(out / "bundle.yaml"))
    bundle = json.loads((out / "bundle" / "summary.json").read_text())["metrics"]
    results = []
    for name, lr, steps, ((g0, c0), (g1, c1)) in CANDIDATES:
        run = out / name
        general, computing = str(corpora / "general.jsonl"), str(corpora / "computing.jsonl")
        cfg = {"run_dir": str(run), "seed": 0,
               "model": {"path": v0, "head_warmup_steps": 60, "head_warmup_lr": 3e-3},
               "data": {"train": [{"path": general, "weight": g0},
                                  {"path": computing, "weight": c0}],
                        "switch": {"train": [{"path": general, "weight": g1},
                                             {"path": computing, "weight": c1}]},
                        "seq_len": 128, "eval_fraction": 0.02},
               "train": {"micro_batch_size": 8, "grad_accum": 1, "max_steps": steps, "lr": lr,
                         "schedule": "recipe", "eval_every": 20, "eval_max_blocks": 32,
                         "save_every": 0, "log_every": 10, "precision": "auto"}}
        (out / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        if not (run / "final" / "config.json").is_file():
            t0 = time.time()
            rtune(args.nproc, "pretrain", "--config", str(out / f"{name}.yaml"))
            (run / "calibration_seconds.txt").write_text(f"{time.time() - t0:.0f}\n")
        seconds = float((run / "calibration_seconds.txt").read_text())
        compat = run / "compat"
        if not (compat / "compat.json").is_file():
            rtune(args.nproc, "recycle", "--method", "compat", "--config", str(out / "bundle.yaml"),
                  "--bundle", str(out / "bundle" / "final"), "--base", str(run / "final"),
                  f"run_dir={compat}")
        c = json.loads((compat / "compat.json").read_text())
        evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                 if "eval/loss" in line]
        first, last = evals[0], evals[-1]
        fall = {d: (first[f"eval/loss/{d}"] - last[f"eval/loss/{d}"]) / first[f"eval/loss/{d}"]
                for d in ("general", "computing")}
        majority, old = c["dev_majority_baseline"], bundle["dev"]["eval/accuracy"]
        kept = (c["dev"]["accuracy"] - majority) / (old - majority)
        results.append({"name": name, "lr": lr, "steps": steps, "mix": [[g0, c0], [g1, c1]],
                        "loss_first": {d: first[f"eval/loss/{d}"] for d in fall},
                        "loss_last": {d: last[f"eval/loss/{d}"] for d in fall},
                        "relative_fall": fall,
                        "fall_gap": fall["computing"] - fall["general"],
                        "bundle_dev_on_v0": old, "compat_dev_on_v1": c["dev"]["accuracy"],
                        "majority": majority, "gain_kept": kept, "seconds": round(seconds)})
        (out / "calibration.json").write_text(json.dumps(
            {"decontamination": study["decontamination"], "candidates": results}, indent=1))
        print(json.dumps(results[-1]), flush=True)


if __name__ == "__main__":
    main()
