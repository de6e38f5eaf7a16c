"""Continual pretraining v0 -> v1 with the recipe of "Reuse, Don't Retrain"."""
import json

import pytest
from conftest import FIXTURES, check, read_jsonl, rtune, tiny_config, write_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rtune_ds.train.schedules import continual_pretraining_recipe

pytestmark = pytest.mark.slow


def test_v1_from_v0_follows_the_recipe(tmp_path, cache_dir):
    v0_dir, v1_dir = tmp_path / "v0", tmp_path / "v1"
    v0_cfg = write_config(tmp_path / "v0.yaml", tiny_config(v0_dir, train={"max_steps": 12}))
    check(rtune(["pretrain", "--config", str(v0_cfg)], cache_dir))
    v0_lineage = json.loads((v0_dir / "final" / "lineage.json").read_text())
    v0_min_lr = v0_lineage["schedule"]["min_lr"]

    total = 20
    v1 = tiny_config(v1_dir, train={"max_steps": total, "schedule": "recipe", "lr": None,
                            "warmup_steps": 0, "eval_every": 10})
    v1["model"] = {"path": str(v0_dir / "final")}
    v1["data"]["switch"] = {"train": [str(FIXTURES / "computing.jsonl")]}
    v1["data"]["eval_fraction"] = 0.1
    v1_cfg = write_config(tmp_path / "v1.yaml", v1)
    # ZeRO-3: each rank loads only its shard of v0 (HfDeepSpeedConfig + zero.Init)
    check(rtune(["pretrain", "--config", str(v1_cfg), "--ds-config", "ds_configs/zero3.json"],
                cache_dir, nproc=2))

    lineage = json.loads((v1_dir / "final" / "lineage.json").read_text())
    assert lineage["parent"]["path"] == str((v0_dir / "final").resolve())
    assert lineage["parent"]["fingerprint"] == v0_lineage["fingerprint"]
    schedule = continual_pretraining_recipe(v0_min_lr, total)
    switch = schedule.first_step_at_or_below(0.2)
    assert lineage["schedule"]["peak_lr"] == pytest.approx(v0_min_lr)
    assert lineage["schedule"]["switch_step"] == switch

    train = [m for m in read_jsonl(v1_dir / "metrics.jsonl") if "train/lr" in m]
    lrs = {m["step"]: m["train/lr"] for m in train}
    assert lrs[1] == pytest.approx(v0_min_lr)  # no warmup: starts at the parent's min LR
    for step, lr in lrs.items():
        assert lr == pytest.approx(schedule.lr(step - 1))
    phases = {m["step"]: m["data/phase"] for m in train}
    assert all(phases[s] == 0.0 for s in phases if s <= switch)
    assert all(phases[s] == 1.0 for s in phases if s > switch)
    assert train[-1]["data/weight/computing"] == 1.0 and train[0]["data/weight/computing"] == 0.0
    evals = [m for m in read_jsonl(v1_dir / "metrics.jsonl") if "eval/loss" in m]
    assert evals[0]["step"] == 0  # v1 starts exactly where v0 ended
    assert evals[0]["eval/loss/general"] == pytest.approx(
        v0_lineage["final_eval"]["eval/loss/general"], abs=1e-5)
    assert {"eval/loss/general", "eval/loss/computing"} <= set(evals[-1])

    events = EventAccumulator(str(v1_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/grad_norm", "eval/loss",
            "eval/ppl", "data/phase", "data/weight/computing"} <= tags
    tb_phase = {e.step: e.value for e in events.Scalars("data/phase")}
    assert tb_phase == phases
