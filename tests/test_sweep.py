"""rtune sweep: one real 2-rank launch per DeepSpeed config, one table, losses agree; a job with
a task section is swept as fine-tuning (the PEFT case). (Two configs: every stage's training and
agreement is test_pretrain_ranks'.)"""
import json

import pytest
from conftest import check, finetune_config, rtune, tiny_config, write_config
from tiny_llm import smollm_like

from rtune_ds.recipes.sweep import job_command, loss_tolerance


def test_a_job_with_a_task_is_swept_as_fine_tuning(tmp_path):
    pretraining = write_config(tmp_path / "pt.yaml", tiny_config(tmp_path / "unused"))
    tuning = write_config(tmp_path / "ft.yaml", finetune_config(tmp_path / "unused", tmp_path))
    assert (job_command(str(pretraining)), job_command(str(tuning))) == ("pretrain", "finetune")


def test_the_loss_tolerance_is_the_least_precise_runs():
    fp32, bf16 = {"precision": "fp32"}, {"precision": "bf16"}
    assert loss_tolerance([fp32, fp32]) == 1e-3
    assert loss_tolerance([fp32, bf16]) == loss_tolerance([bf16]) == 0.03


@pytest.mark.slow
def test_sweep_of_a_lora_job_over_zero_stages(tmp_path, cache_dir):
    """A fine-tuning job (a task section) is swept as `rtune finetune`: here LoRA on a tiny
    decoder saved as SmolLM2 is, the PEFT case whose ZeRO stage the README advises on."""
    cfg = finetune_config(tmp_path / "unused", smollm_like(tmp_path / "llm"), "lora",
                          train={"max_steps": 4, "eval_every": 4, "log_every": 2})
    job = write_config(tmp_path / "lora.yaml", cfg)
    check(rtune(["sweep", "--job", str(job), "--ds-configs", "ds_configs/zero0.json",
                 "ds_configs/zero3.json", "--nproc", "2", "--out", str(tmp_path / "sweep")],
                cache_dir, timeout=900))
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["zero_stage"] for r in report["rows"]] == [0, 3]
    assert all(r["world_size"] == 2 and r["tokens_per_s"] > 0 for r in report["rows"])
    assert all(len(r["peak_rss_mb_per_rank"]) == 2 for r in report["rows"])
    assert report["losses_agree"] is True
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| zero3 | 2 | 3 |" in table and "agree within 0.001 (precision fp32): yes" in table
    assert (tmp_path / "sweep" / "tensorboard" / "zero0").is_dir()
    for stage in ("zero0", "zero3"):
        lineage = json.loads((tmp_path / "sweep" / stage / "final" / "lineage.json").read_text())
        assert lineage["method"] == "lora"


@pytest.mark.slow
def test_sweep_refuses_a_missing_config_before_launching(tmp_path, cache_dir):
    job = write_config(tmp_path / "job.yaml", tiny_config(tmp_path / "unused"))
    proc = rtune(["sweep", "--job", str(job), "--ds-configs", "ds_configs/zero9.json",
                  "--out", str(tmp_path / "sweep")], cache_dir)
    assert proc.returncode == 2 and "zero9.json" in proc.stderr
    assert not (tmp_path / "sweep").exists()
