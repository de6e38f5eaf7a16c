#!/usr/bin/env bash
# The main job: real text -> v0 pretrained on general English (WordNet glosses) -> v1 continually
# pretrained with the "Reuse, Don't Retrain" recipe, switching to computing text (FOLDOC).
#   NPROC=2 bash launch_scripts/main_job.sh        (TensorBoard: tensorboard --logdir runs)
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIGS=launch_scripts/configs
run_job() { NPROC="${NPROC:-2}" bash launch_scripts/single_node.sh "$@"; }
echo "+ rtune data prepare --out data" >&2
rtune data prepare --out data
run_job pretrain --config "$CONFIGS/v0.yaml" --ds-config ds_configs/zero2.json --resume auto
run_job pretrain --config "$CONFIGS/v1.yaml" --ds-config ds_configs/zero2.json --resume auto
python - <<'PY'
import json
for v in ("v0", "v1"):
    s = json.load(open(f"runs/{v}/summary.json"))
    print(v, {k: round(x, 4) for k, x in s["final_eval"].items() if k.startswith("eval/loss")})
PY
