#!/usr/bin/env bash
# Recycling on the main job's v0 -> v1 pair (run `make main` first), FOLDOC-category task:
#   1. tune v0 (full data) -> the old bundle;  2. compat on v1;  3. vanilla tuning of v1 vs init;
#   4. few-shot (32 per class), seeds 1..3: vanilla, distill, init, init+distill on v1.
#   NPROC=2 bash launch_scripts/recycle_job.sh      (results: runs/recycle/report.json)
set -euo pipefail
cd "$(dirname "$0")/.."
CFG=launch_scripts/configs/foldoc_category.yaml
DS="--ds-config ds_configs/zero2.json"
OLD=runs/recycle/ft_v0/final
run_job() { NPROC="${NPROC:-2}" bash launch_scripts/single_node.sh "$@"; }
done_run() { test -f "$1/summary.json" || test -f "$1/compat.json"; }
done_run runs/recycle/ft_v0 || run_job finetune --config $CFG $DS
done_run runs/recycle/compat_v1 || run_job recycle --config $CFG $DS --method compat \
  --bundle $OLD --base runs/v1/final run_dir=runs/recycle/compat_v1
done_run runs/recycle/vanilla_v1 || run_job finetune --config $CFG $DS model.path=runs/v1/final \
  run_dir=runs/recycle/vanilla_v1
done_run runs/recycle/init_v1 || run_job recycle --config $CFG $DS --method init --bundle $OLD \
  --base runs/v1/final run_dir=runs/recycle/init_v1
FEW="task.few_shot=32 train.max_steps=80"
for seed in 1 2 3; do
  done_run runs/recycle/fs_vanilla_s$seed || run_job finetune --config $CFG $DS $FEW seed=$seed \
    model.path=runs/v1/final run_dir=runs/recycle/fs_vanilla_s$seed
  for m in distill init init+distill; do
    dir=runs/recycle/fs_${m/+/_}_s$seed
    done_run $dir || run_job recycle --config $CFG $DS $FEW seed=$seed --method $m --bundle $OLD \
      --base runs/v1/final run_dir=$dir
  done
done
python - <<'PY'
import json, statistics
from pathlib import Path
R = Path("runs/recycle")
def evals(run):
    return [m for m in map(json.loads, (R / run / "metrics.jsonl").read_text().splitlines())
            if "eval/accuracy" in m]
report = {"compat_v1": json.loads((R / "compat_v1/compat.json").read_text())["dev"]}
vanilla_best = max(m["eval/accuracy"] for m in evals("vanilla_v1"))
report["vanilla_best_dev"] = vanilla_best
for run in ("vanilla_v1", "init_v1"):
    reach = [m["step"] for m in evals(run) if m["eval/accuracy"] >= vanilla_best]
    report[f"{run}_steps_to_vanilla_best"] = reach[0] if reach else None
    s = json.loads((R / run / "summary.json").read_text())["metrics"]
    report[run] = {"dev": s["dev"]["eval/accuracy"], "test": s["test"]["eval/accuracy"]}
few = {}
for m in ("vanilla", "distill", "init", "init_distill"):
    tests = [json.loads((R / f"fs_{m}_s{s}/summary.json").read_text())["metrics"]["test"]["eval/accuracy"]
             for s in (1, 2, 3)]
    few[m] = {"test_per_seed": tests, "mean": statistics.mean(tests)}
report["few_shot_32"] = few
(R / "report.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps(report, indent=2))
PY
