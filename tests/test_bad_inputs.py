"""Each mistake exits non-zero before training, with a message that names the culprit, and leaves
no run output behind."""
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, rtune, tiny_base, tiny_config, write_config


def setup_case(tmp_path, cache_dir, case):
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
    elif case == "block longer than the positions":
        cfg["model"] = {"path": str(tiny_base(cache_dir))}  # 256 positions
        cfg["data"]["seq_len"] = 100000
        culprit = "key 'data.seq_len': 100000 tokens per block"
    elif case == "block longer than roberta's positions":
        # 258 position embeddings, of which the first pad_token_id + 1 come before the tokens
        cfg["model"] = {"path": str(tiny_base(cache_dir, "roberta-1m"))}
        cfg["data"]["seq_len"] = 258
        culprit = "takes at most 257 (config.json max_position_embeddings 258 less the padding"
    return write_config(tmp_path / "run.yaml", cfg), extra, culprit


CASES = ["unknown key", "wrong type", "missing data file", "empty dataset",
         "malformed deepspeed json", "missing model dir", "resume without checkpoint",
         "deepspeed literal contradicts", "bad override", "global batch not divisible",
         "block longer than the positions", "block longer than roberta's positions"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_early_and_names_culprit(tmp_path, cache_dir, case):
    config, extra, culprit = setup_case(tmp_path, cache_dir, case)
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


@pytest.mark.parametrize("config, length, limit", [
    ({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512, 512),
    ({"model_type": "bert", "max_position_embeddings": 512, "pad_token_id": 0}, 512, 512),
    ({"model_type": "gpt2", "n_positions": 1024}, 1024, 1024),
    ({"model_type": "llama", "max_position_embeddings": 256}, 256, 256),
    ({"model_type": "t5"}, 100000, None),  # relative positions: no limit to check
])
def test_the_position_limit_of_each_kind_of_model(tmp_path, config, length, limit):
    from rtune_ds.errors import ConfigError
    from rtune_ds.models.hf_config import check_positions

    (tmp_path / "config.json").write_text(json.dumps(config))
    check_positions(str(tmp_path), length, "data.seq_len", "per block", "run.yaml")
    if limit is not None:
        with pytest.raises(ConfigError, match=rf"run\.yaml: key 'data\.seq_len': {length + 1} "
                                              rf"tokens per block, .* at most {limit} "):
            check_positions(str(tmp_path), length + 1, "data.seq_len", "per block", "run.yaml")


HOSTS_SCRIPTS = {"multi_node_hostfile.sh": {"MASTER_ADDR": "node0"},
                 "no_ssh_node.sh": {"NODE_RANK": "0", "MASTER_ADDR": "node0"},
                 "openmpi.sh": {}}


@pytest.mark.parametrize("script", sorted(HOSTS_SCRIPTS))
def test_a_malformed_hostfile_line_is_refused_before_the_launcher(tmp_path, script):
    hosts = tmp_path / "hosts"
    hosts.write_text("# two nodes\nnode0 slots=2\nnode1 slots=two\n")
    env = {**os.environ, "RTUNE_LAUNCHER": "echo", "RTUNE_PYTHON": sys.executable,
           "HOSTFILE": str(hosts), **HOSTS_SCRIPTS[script]}
    proc = subprocess.run(["bash", str(REPO / "launch_scripts" / script), "pretrain"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert err == (f"rtune: error: {hosts}:3: 'node1 slots=two': slots=two is not a whole number "
                   "of ranks (>= 1)"), err
    assert "Traceback" not in proc.stderr
    assert proc.stdout == "" and not (tmp_path / ".deepspeed_env").exists()  # no launcher ran


@pytest.mark.parametrize("text, culprit", [
    ("node0 slots=2\nnode1\n", ":2: 'node1': a hostfile line is '<hostname> slots="),
    ("node0 slots=0\n", ":1: 'node0 slots=0': slots=0 is not a whole number"),
    ("node0 slots=2\n\nnode0 slots=4\n", ":3: host node0 is listed again (first on line 1)"),
    ("# nothing but a comment\n", ": no host in it"),
])
def test_hostfile_mistakes_name_the_file_and_line(tmp_path, text, culprit):
    from rtune_ds.errors import ConfigError
    from rtune_ds.launch import check_hostfile

    hosts = tmp_path / "hosts"
    hosts.write_text(text)
    with pytest.raises(ConfigError) as err:
        check_hostfile(str(hosts))
    assert str(err.value).startswith(f"{hosts}{culprit}"), err.value
    with pytest.raises(ConfigError, match="nope: cannot read it"):
        check_hostfile(str(tmp_path / "nope"))


def test_a_good_hostfile_reads_as_the_launcher_would(tmp_path):
    from rtune_ds.launch import check_hostfile

    hosts = tmp_path / "hosts"
    hosts.write_text("# rack 1\nnode0 slots=8\n  node1\tslots=4 max_slots=4  # spare\n\n")
    assert check_hostfile(str(hosts)) == {"node0": 8, "node1": 4}


def test_an_unknown_log_level_is_refused(tmp_path, cache_dir):
    from conftest import base_env

    config = write_config(tmp_path / "run.yaml", tiny_config(tmp_path / "run"))
    proc = subprocess.run([sys.executable, "-m", "rtune_ds", "pretrain", "--config", str(config)],
                          cwd=REPO, env={**base_env(cache_dir), "RTUNE_LOG_LEVEL": "loud"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "rtune: error: RTUNE_LOG_LEVEL='loud': one of debug, info, warning, error")
    assert not (tmp_path / "run").exists()
