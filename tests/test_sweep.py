"""rtune sweep: one real 2-rank launch per DeepSpeed config, one table, losses agree. (Two
configs: every stage's training and agreement is test_pretrain_ranks'.)"""
import json

import pytest
from conftest import check, rtune, tiny_config, write_config

pytestmark = pytest.mark.slow


def test_sweep_over_zero_stages(tmp_path, cache_dir):
    job = write_config(tmp_path / "job.yaml", tiny_config(tmp_path / "unused"))
    configs = ["ds_configs/zero1.json", "ds_configs/zero3.json"]
    check(rtune(["sweep", "--job", str(job), "--ds-configs", *configs, "--nproc", "2",
                 "--out", str(tmp_path / "sweep")], cache_dir, timeout=900))
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["zero_stage"] for r in report["rows"]] == [1, 3]
    assert all(r["world_size"] == 2 and r["tokens_per_s"] > 0 for r in report["rows"])
    assert all(len(r["peak_rss_mb_per_rank"]) == 2 for r in report["rows"])
    assert report["losses_agree"] is True
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| zero3 | 2 | 3 |" in table and "agree within 0.001: yes" in table
    assert (tmp_path / "sweep" / "tensorboard" / "zero1").is_dir()


def test_sweep_refuses_a_missing_config_before_launching(tmp_path, cache_dir):
    job = write_config(tmp_path / "job.yaml", tiny_config(tmp_path / "unused"))
    proc = rtune(["sweep", "--job", str(job), "--ds-configs", "ds_configs/zero9.json",
                  "--out", str(tmp_path / "sweep")], cache_dir)
    assert proc.returncode == 2 and "zero9.json" in proc.stderr
    assert not (tmp_path / "sweep").exists()
