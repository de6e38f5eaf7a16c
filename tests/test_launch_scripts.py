"""The launch scripts parse, and print the launcher command they run."""
import os
import subprocess

import pytest
from conftest import REPO

SCRIPTS = sorted((REPO / "launch_scripts").glob("*.sh")) + [REPO / "launch_scripts" / "slurm.sbatch"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def launch(script, env, *args):
    full = {**os.environ, "RTUNE_LAUNCHER": "echo", **env}
    return subprocess.run(["bash", str(REPO / "launch_scripts" / script), *args], env=full,
                          capture_output=True, text=True, check=True, cwd=env.get("CWD", REPO))


def test_single_node_command():
    out = launch("single_node.sh", {"NPROC": "3"}, "pretrain", "--config", "r.yaml").stdout.split()
    assert out == ["--num_gpus", "3", "--master_port", "29500", "--module", "rtune_ds",
                   "pretrain", "--config", "r.yaml"]


def test_no_ssh_command():
    out = launch("no_ssh_node.sh", {"HOSTFILE": "hosts", "NODE_RANK": "1",
                                    "MASTER_ADDR": "10.1.1.1"}, "pretrain").stdout.split()
    assert out[:9] == ["--hostfile", "hosts", "--no_ssh", "--node_rank", "1", "--master_addr",
                       "10.1.1.1", "--master_port", "29500"]


def test_hostfile_command_writes_deepspeed_env(tmp_path):
    out = launch("multi_node_hostfile.sh", {"HOSTFILE": "hosts", "MASTER_ADDR": "n1",
                                            "RTUNE_CACHE": "/shared/cache", "CWD": str(tmp_path)},
                 "pretrain").stdout.split()
    assert out[:4] == ["--hostfile", "hosts", "--launcher", "pdsh"]
    assert "RTUNE_CACHE=/shared/cache" in (tmp_path / ".deepspeed_env").read_text()


def test_openmpi_command(tmp_path):
    out = launch("openmpi.sh", {"HOSTFILE": "hosts", "CWD": str(tmp_path)}, "pretrain").stdout.split()
    assert out[:6] == ["--hostfile", "hosts", "--launcher", "openmpi", "--module", "rtune_ds"]


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
    full = {**os.environ, "RTUNE_LAUNCHER": "echo", **env}
    proc = subprocess.run(["bash", str(REPO / "launch_scripts" / "slurm.sbatch"), "pretrain",
                           "--config", "r y.yaml"], env=full, capture_output=True, text=True,
                          check=True, cwd=tmp_path)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        assert f"--node_rank {rank} --master_addr gpu-a --master_port 29742" in line
        assert line.endswith("--module rtune_ds pretrain --config r y.yaml")
    assert (tmp_path / "rtune-hosts-4242").read_text() == "gpu-a slots=4\ngpu-b slots=4\n"
