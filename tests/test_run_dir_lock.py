"""One launch at a time per run dir: a second launch into a run dir a live launch holds is refused
at once (exit 2, naming the holder's host and pid); the lock of a killed launch does not block."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO, base_env, check, read_jsonl, rtune, tiny_config, write_config

from rtune_ds.artifacts.run_dir import LOCK_NAME, hold_run_dir, release_unused_run_dirs
from rtune_ds.errors import ConfigError

HOLD = ("import sys, time\n"
        "from rtune_ds.artifacts.run_dir import hold_run_dir\n"
        "hold_run_dir(sys.argv[1], 'holder')\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n")


def start_holder(run_dir) -> subprocess.Popen:
    """Another process that holds `run_dir` (it takes the lock and sleeps)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def test_a_dir_another_process_holds_is_refused_naming_it_until_that_process_dies(tmp_path):
    run_dir = tmp_path / "run"
    holder = start_holder(run_dir)
    try:
        with pytest.raises(ConfigError) as err:
            hold_run_dir(run_dir, "run.yaml")
        message = str(err.value)
        assert message.startswith(f"run.yaml: key 'run_dir': {run_dir} is in use")
        assert f"host {socket.gethostname()}, pid {holder.pid}" in message
        assert "\n" not in message
    finally:
        kill(holder)
    assert str(holder.pid) in (run_dir / LOCK_NAME).read_text()  # the dead holder's record stays
    hold_run_dir(run_dir, "run.yaml")  # and does not block
    assert f'"pid": {os.getpid()}' in (run_dir / LOCK_NAME).read_text()
    hold_run_dir(run_dir, "run.yaml")  # this process again (the demo's jobs in one launch)


def test_a_refused_launch_leaves_no_run_dir_and_one_with_output_stays_held(tmp_path):
    unused = tmp_path / "a" / "b" / "run"
    hold_run_dir(unused, "run.yaml")
    assert (unused / LOCK_NAME).is_file()
    used = tmp_path / "used"
    hold_run_dir(used, "run.yaml")
    (used / "config.yaml").write_text("{}\n")
    release_unused_run_dirs()
    assert not (tmp_path / "a").exists()  # with the parents the lock made
    assert (used / LOCK_NAME).is_file()
    holder = subprocess.run([sys.executable, "-c", HOLD, str(used)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert holder.returncode != 0 and f"pid {os.getpid()}" in holder.stderr


def test_only_rank_0_takes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    hold_run_dir(tmp_path / "run", "run.yaml")
    assert not (tmp_path / "run").exists()


def timed(args, cache_dir, nproc=1):
    started = time.monotonic()
    proc = rtune(args, cache_dir, nproc=nproc, timeout=300)
    return proc, time.monotonic() - started


@pytest.mark.slow
def test_a_second_launch_is_refused_at_once_and_a_killed_holder_does_not_block(tmp_path,
                                                                              cache_dir):
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "run.yaml", tiny_config(
        run_dir, train={"max_steps": 100000, "save_every": 4, "eval_every": 0,
                        "global_batch_size": 8}))  # the same on 1 and 2 ranks
    launch = ["pretrain", "--config", str(cfg), "--resume", "auto"]
    with open(tmp_path / "holder.log", "w") as log:
        holder = subprocess.Popen([sys.executable, "-m", "rtune_ds", *launch], cwd=REPO,
                                  env=base_env(cache_dir), stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoints" / "latest").is_file():
            assert holder.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "holder.log").read_text()[-3000:]
            time.sleep(0.1)
        # stopped, it is still a live holder, and writes no more checkpoints while we test
        os.killpg(holder.pid, signal.SIGSTOP)
        for nproc in (1, 2):  # 2: only rank 0 takes the lock; the launcher ends rank 1
            # the same start-up refused by a config error: what the launch costs before any check
            base, base_s = timed([*launch, "train.max_steps=0"], cache_dir, nproc)
            assert base.returncode == 2 and "train.max_steps" in base.stderr
            second, second_s = timed(launch, cache_dir, nproc)
            assert second.returncode == 2, second.stderr[-3000:]
            err = [line for line in second.stderr.splitlines()
                   if line.startswith("rtune: error:")]  # rank 0's
            assert len(err) == 1 and "is in use by a live launch" in err[0], second.stderr[-3000:]
            err = err[0]
            assert f"host {socket.gethostname()}, pid {holder.pid}" in err, err
            assert "Traceback" not in second.stderr
            # one process is refused within 5 s; under the launcher add what its own start-up costs
            assert second_s < (5 if nproc == 1 else base_s + 5), (second_s, base_s)
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # as the OOM killer or a lost node would
        holder.wait()
    assert str(holder.pid) in (run_dir / LOCK_NAME).read_text()
    resumed_from = int((run_dir / "checkpoints" / "latest").read_text().split("_")[1])
    check(rtune([*launch, "train.stop_after=2"], cache_dir))
    steps = [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in m]
    assert steps[-1] == resumed_from + 2
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step_{resumed_from + 2:08d}"

