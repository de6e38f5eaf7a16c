"""Crash safety (issue 8, acceptance 1): a 2-rank run killed with SIGKILL at a random step (the
launcher's whole process group, as a node failure or the OOM killer would) resumes with
--resume auto from its last complete checkpoint and ends with the weights of an uninterrupted run
(within 1e-6: resumes are within one float32 ulp, not bitwise)."""
import os
import random
import re
import signal
import subprocess
import time

import pytest
from conftest import (
    DEEPSPEED,
    REPO,
    base_env,
    check,
    free_port,
    rtune,
    tiny_config,
    train_losses,
    write_config,
)
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
STEPS = 16  # tiny_config's max_steps


def logged_step(run_dir) -> int:
    """The last step in metrics.jsonl while the run writes it (a partial last line reads low)."""
    path = run_dir / "metrics.jsonl"
    steps = re.findall(r'^\{"step": (\d+)', path.read_text(), re.M) if path.is_file() else []
    return max(map(int, steps), default=0)


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_sigkill_at_a_random_step_then_resume_matches_the_uninterrupted_run(tmp_path, cache_dir,
                                                                            stage_runs, stage):
    kill_at = random.Random(f"sigkill-{stage}").randint(3, STEPS - 4)

    def args(name):
        cfg = tiny_config(tmp_path / name, train={"save_every": 2, "eval_every": 0})
        return ["pretrain", "--config", str(write_config(tmp_path / f"{name}.yaml", cfg)),
                "--ds-config", f"ds_configs/{stage}.json"]

    killed = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([str(DEEPSPEED), "--num_gpus", "2", "--master_port",
                                 str(free_port()), "--module", "rtune_ds", *args("killed")],
                                cwd=REPO, env=base_env(cache_dir), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 300
            while logged_step(killed) < kill_at:
                assert proc.poll() is None and time.time() < deadline, "ended before the kill"
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "final").exists()
    resumed_from = int((killed / "checkpoints" / "latest").read_text().split("_")[1])
    assert 2 <= resumed_from <= logged_step(killed) < STEPS

    check(rtune([*args("killed"), "--resume", "auto"], cache_dir, nproc=2))
    assert list(train_losses(killed)) == list(range(1, STEPS + 1))
    # the uninterrupted run (evaluating and checkpointing at other steps changes no weight)
    full = load_file(str(stage_runs / stage / "final" / "model.safetensors"))
    resumed = load_file(str(killed / "final" / "model.safetensors"))
    assert full.keys() == resumed.keys()
    assert max((full[k] - resumed[k]).abs().max().item() for k in full) <= 1e-6
