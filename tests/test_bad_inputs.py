"""Each mistake exits non-zero before training, with a message that names the culprit, and leaves
no run output behind."""
import json

import pytest
from conftest import rtune, tiny_config, write_config


def setup_case(tmp_path, case):
    cfg = tiny_config(tmp_path / "run")
    extra = []
    if case == "unknown key":
        cfg["train"]["learning_rate"] = 0.1
        culprit = "train.learning_rate"
    elif case == "wrong type":
        cfg["train"]["max_steps"] = "many"
        culprit = "train.max_steps"
    elif case == "missing data file":
        cfg["data"]["train"] = [str(tmp_path / "nope.jsonl")]
        culprit = "nope.jsonl"
    elif case == "empty dataset":
        empty = tmp_path / "empty.jsonl"
        empty.write_text(json.dumps({"text": "  "}) + "\n")
        cfg["data"]["train"] = [str(empty)]
        culprit = "empty.jsonl"
    elif case == "malformed deepspeed json":
        bad = tmp_path / "ds_bad.json"
        bad.write_text('{"zero_optimization": {"stage": 2,}}')
        cfg["deepspeed"] = str(bad)
        culprit = "ds_bad.json"
    elif case == "missing model dir":
        cfg["model"] = {"path": str(tmp_path / "no_model")}
        culprit = "model.path"
    elif case == "resume without checkpoint":
        extra = ["--resume", "required"]
        culprit = "no complete checkpoint"
    elif case == "deepspeed literal contradicts":
        ds = tmp_path / "ds_literal.json"
        ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 16}))
        cfg["deepspeed"] = str(ds)
        culprit = "train.micro_batch_size"
    elif case == "bad override":
        extra = ["train.lr"]
        culprit = "train.lr"
    elif case == "global batch not divisible":
        cfg["train"]["global_batch_size"] = 6
        culprit = "train.global_batch_size"
    return write_config(tmp_path / "run.yaml", cfg), extra, culprit


CASES = ["unknown key", "wrong type", "missing data file", "empty dataset",
         "malformed deepspeed json", "missing model dir", "resume without checkpoint",
         "deepspeed literal contradicts", "bad override", "global batch not divisible"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_early_and_names_culprit(tmp_path, cache_dir, case):
    config, extra, culprit = setup_case(tmp_path, case)
    proc = rtune(["pretrain", "--config", str(config), *extra], cache_dir)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("rtune: error:") and culprit in err, err
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing that could look like a run


@pytest.mark.slow
def test_batch_not_divisible_by_world_size_under_launcher(tmp_path, cache_dir):
    cfg = tiny_config(tmp_path / "run", train={"global_batch_size": 12})  # 12 % (4 x 2) != 0
    proc = rtune(["pretrain", "--config", str(write_config(tmp_path / "run.yaml", cfg))],
                 cache_dir, nproc=2)
    assert proc.returncode != 0
    assert "train.global_batch_size" in proc.stderr and "world size 2" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_existing_checkpoints_need_resume(tmp_path, cache_dir):
    (tmp_path / "run" / "checkpoints" / "step_00000004").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_00000004")
    config = write_config(tmp_path / "run.yaml", tiny_config(tmp_path / "run"))
    proc = rtune(["pretrain", "--config", str(config)], cache_dir)
    assert proc.returncode == 2 and "--resume auto" in proc.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize("case", ["read-only parent", "parent is a file"])
def test_run_dir_that_cannot_be_written_fails_before_compute(tmp_path, cache_dir, case):
    import os

    if case == "read-only parent":
        if os.geteuid() == 0:
            pytest.skip("root ignores file permissions")
        parent = tmp_path / "ro"
        parent.mkdir(mode=0o500)
    else:
        parent = tmp_path / "file"
        parent.write_text("")
    run_dir = parent / "run"
    proc = rtune(["pretrain", "--config", str(write_config(tmp_path / "run.yaml",
                                                           tiny_config(run_dir)))], cache_dir)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("rtune: error:") and "key 'run_dir'" in err and str(parent) in err, err
    assert "Traceback" not in proc.stderr and not run_dir.exists()


def test_a_write_failing_mid_checkpoint_exits_3_and_keeps_the_last_checkpoint(tmp_path, cache_dir):
    """As on a full disk: the resumed launch may not grow a file past 4 MB (RLIMIT_FSIZE; Python
    ignores SIGXFSZ, so the write fails with an error), and a checkpoint of this model is ~10 MB."""
    import resource
    import subprocess
    import sys

    from conftest import REPO, base_env, check

    run_dir, limit = tmp_path / "run", 4 << 20
    cfg = write_config(tmp_path / "run.yaml",
                       tiny_config(run_dir, train={"max_steps": 4, "eval_every": 0}))
    check(rtune(["pretrain", "--config", str(cfg), "train.stop_after=2"], cache_dir))
    ckpt = run_dir / "checkpoints"
    saved = {p.name: p.read_bytes() for p in (ckpt / "step_00000002").iterdir()}
    proc = subprocess.run(
        [sys.executable, "-m", "rtune_ds", "pretrain", "--config", str(cfg), "--resume", "auto"],
        cwd=REPO, env=base_env(cache_dir), capture_output=True, text=True, timeout=600,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 3, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("rtune: error:") and "step_00000004: writing it failed" in err, err
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step_00000002"]  # no staging dir
    assert (ckpt / "latest").read_text() == "step_00000002"
    assert {p.name: p.read_bytes() for p in (ckpt / "step_00000002").iterdir()} == saved
    assert not (run_dir / "final").exists()
