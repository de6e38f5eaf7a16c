"""The launch scripts parse, and print the launcher command they run."""
import os
import subprocess
import sys

import pytest
from conftest import (
    DEEPSPEED,
    REPO,
    base_env,
    finetune_config,
    free_port,
    tiny_base,
    write_config,
)

SCRIPTS = sorted((REPO / "launch_scripts").glob("*.sh")) + [REPO / "launch_scripts" / "slurm.sbatch"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def launch(script, env, *args):
    full = {**os.environ, "RTUNE_LAUNCHER": "echo", "RTUNE_PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(REPO / "launch_scripts" / script), *args], env=full,
                          capture_output=True, text=True, check=True, cwd=env.get("CWD", REPO))


def test_single_node_command():
    out = launch("single_node.sh", {"NPROC": "3"}, "pretrain", "--config", "r.yaml").stdout.split()
    assert out == ["--log_level", "warning", "--num_gpus", "3", "--master_port", "29500",
                   "--module", "rtune_ds", "pretrain", "--config", "r.yaml"]
    out = launch("single_node.sh", {"RTUNE_LOG_LEVEL": "INFO"}, "pretrain").stdout.split()
    assert out[:2] == ["--log_level", "info"]


def hostfile(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("n1 slots=2\nn2 slots=2\n")
    return str(path)


def test_no_ssh_command(tmp_path):
    hosts = hostfile(tmp_path)
    out = launch("no_ssh_node.sh", {"HOSTFILE": hosts, "NODE_RANK": "1",
                                    "MASTER_ADDR": "10.1.1.1"}, "pretrain").stdout.split()
    assert out[:11] == ["--log_level", "warning", "--hostfile", hosts, "--no_ssh", "--node_rank",
                        "1", "--master_addr", "10.1.1.1", "--master_port", "29500"]


def test_hostfile_command_writes_deepspeed_env(tmp_path):
    hosts = hostfile(tmp_path)
    out = launch("multi_node_hostfile.sh", {"HOSTFILE": hosts, "MASTER_ADDR": "n1",
                                            "RTUNE_CACHE": "/shared/cache", "CWD": str(tmp_path)},
                 "pretrain").stdout.split()
    assert out[:6] == ["--log_level", "warning", "--hostfile", hosts, "--launcher", "pdsh"]
    env = (tmp_path / ".deepspeed_env").read_text()
    assert "RTUNE_CACHE=/shared/cache" in env and "RTUNE_LOG_LEVEL=warning" in env


def test_openmpi_command(tmp_path):
    hosts = hostfile(tmp_path)
    out = launch("openmpi.sh", {"HOSTFILE": hosts, "CWD": str(tmp_path)}, "pretrain").stdout.split()
    assert out[:8] == ["--log_level", "warning", "--hostfile", hosts, "--launcher", "openmpi",
                       "--module", "rtune_ds"]


def test_slurm_derives_master_and_node_rank(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-a\\ngpu-b\\n'\n")
    # a fake srun: drop its options, run the task once per node with that node's SLURM_NODEID
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ $1 == -* ]]; do shift; done\n'
                                  'for n in 0 1; do SLURM_NODEID=$n "$@"; done\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-[a-b]",
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "RANKS_PER_NODE": "4",
           "CWD": str(tmp_path)}
    full = {**os.environ, "RTUNE_LAUNCHER": "echo", "RTUNE_PYTHON": sys.executable, **env}
    proc = subprocess.run(["bash", str(REPO / "launch_scripts" / "slurm.sbatch"), "pretrain",
                           "--config", "r y.yaml"], env=full, capture_output=True, text=True,
                          check=True, cwd=tmp_path)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        assert f"--node_rank {rank} --master_addr gpu-a --master_port 29742" in line
        assert line.endswith("--module rtune_ds pretrain --config r y.yaml")
    assert (tmp_path / "rtune-hosts-4242").read_text() == "gpu-a slots=4\ngpu-b slots=4\n"


@pytest.mark.slow
def test_the_console_is_quiet_unless_verbose(tmp_path, cache_dir, monkeypatch):
    """Two ranks under single_node.sh: by default no INFO lines (launcher or ranks), no library
    load reports, progress bars or deprecation notices, and one progress bar, rank 0's; with
    --verbose the ranks' DeepSpeed INFO lines and the libraries' reports come back, even from a
    process where a quiet rtune ran in-process before (it leaves its settings in the
    environment every later launch inherits)."""
    for var, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DATASETS_VERBOSITY", "error"),
                       ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        monkeypatch.setenv(var, value)
    base = tiny_base(cache_dir)
    env = {k: v for k, v in base_env(cache_dir).items() if k != "RTUNE_NO_PROGRESS"}
    env.update(RTUNE_LAUNCHER=str(DEEPSPEED), RTUNE_PYTHON=sys.executable, NPROC="2")

    def run(name, *extra):
        cfg = finetune_config(tmp_path / name, base, train={"max_steps": 4, "eval_every": 2})
        proc = subprocess.run(
            ["bash", str(REPO / "launch_scripts" / "single_node.sh"), "finetune", "--config",
             str(write_config(tmp_path / f"{name}.yaml", cfg)), *extra],
            env={**env, "MASTER_PORT": str(free_port())}, cwd=tmp_path, capture_output=True,
            text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    quiet = run("quiet")
    for noise in ("[INFO]", "LOAD REPORT", "Loading weights", "built successfully",
                  "FutureWarning"):
        assert noise not in quiet, noise
    assert quiet.count("train:   0%") == 1
    verbose = run("verbose", "--verbose")
    for line in ("[INFO] [logging.py", "DeepSpeed info: version", "LOAD REPORT",
                 "Loading weights"):
        assert line in verbose, line
