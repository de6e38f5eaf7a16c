"""Checkpoints are complete or ignored: a half-written one (a kill during the save) is never
resumed from, and the resumed run ends where the uninterrupted one does."""
import signal
import subprocess
import sys
import time

import pytest
from conftest import (
    REPO,
    base_env,
    check,
    rtune,
    tiny_config,
    train_losses,
    write_config,
)
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def test_resume_skips_a_half_written_checkpoint(tmp_path, cache_dir):
    def launch(name, *extra):
        cfg = write_config(tmp_path / f"{name}.yaml",
                           tiny_config(tmp_path / name, train={"save_every": 4}))
        return check(rtune(["pretrain", "--config", str(cfg), *extra], cache_dir))

    launch("full")
    launch("cut", "train.stop_after=8")
    ckpt = tmp_path / "cut" / "checkpoints"
    assert (ckpt / "latest").read_text() == "step_00000008"
    # what a SIGKILL in the middle of saving step 12 leaves behind: a staging dir, no `latest` update
    (ckpt / ".tmp-step_00000012").mkdir()
    (ckpt / ".tmp-step_00000012" / "mp_rank_00_model_states.pt").write_bytes(b"trunc")
    launch("cut", "--resume", "auto")
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "latest", "step_00000004", "step_00000008", "step_00000012", "step_00000016"]
    full = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
    assert max((full[k] - cut[k]).abs().max().item() for k in full) <= 1e-6
    assert list(train_losses(tmp_path / "cut")) == list(range(1, 17))


def test_sigterm_checkpoints_and_exits_zero(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "run.yaml",
                       tiny_config(run_dir, train={"max_steps": 400, "eval_every": 0}))
    proc = subprocess.Popen([sys.executable, "-m", "rtune_ds", "pretrain", "--config", str(cfg)],
                            cwd=REPO, env=base_env(cache_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run_dir / "metrics.jsonl").is_file() or len(train_losses(run_dir)) < 3:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by a signal" in err
    stopped = int((run_dir / "checkpoints" / "latest").read_text().split("_")[1])
    assert 3 <= stopped < 400 and max(train_losses(run_dir)) == stopped
    assert not (run_dir / "final").exists()
    check(rtune(["pretrain", "--config", str(cfg), "--resume", "auto", "train.stop_after=2"],
                cache_dir))
    assert list(train_losses(run_dir)) == list(range(1, stopped + 3))


def test_sigkill_while_a_checkpoint_is_written_resumes_from_the_previous_one(tmp_path, cache_dir):
    import os

    def config(name):
        return write_config(tmp_path / f"{name}.yaml",
                            tiny_config(tmp_path / name, train={"save_every": 2}))

    check(rtune(["pretrain", "--config", str(config("full"))], cache_dir))
    cfg, ckpt = config("cut"), tmp_path / "cut" / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "rtune_ds", "pretrain", "--config", str(cfg)],
                            cwd=REPO, env=base_env(cache_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, staging = time.time() + 300, None
    while staging is None:  # the first save that starts after a complete checkpoint exists
        assert proc.poll() is None and time.time() < deadline, "no checkpoint save to interrupt"
        if (ckpt / "latest").is_file():
            staging = next(ckpt.glob(".tmp-step_*"), None)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    previous = (ckpt / "latest").read_text()
    assert staging.is_dir() and staging.name != f".tmp-{previous}"  # killed mid-save
    assert int(staging.name.split("_")[1]) > int(previous.split("_")[1])
    check(rtune(["pretrain", "--config", str(cfg), "--resume", "auto"], cache_dir))
    assert not list(ckpt.glob(".tmp-*"))
    resumed_from = int(previous.split("_")[1])
    losses = train_losses(tmp_path / "cut")
    assert list(losses) == list(range(1, 17)) and resumed_from < 16
    full = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
    assert max((full[k] - cut[k]).abs().max().item() for k in full) <= 1e-6


def test_staged_dir_replaces_whole_or_leaves_the_old_one(tmp_path):
    from rtune_ds.errors import RunError
    from rtune_ds.io import staged_dir

    out = tmp_path / "final"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RunError, match=f"{out}: writing it failed"):
        with staged_dir(out) as tmp:
            (tmp / "new.txt").write_text("new")
            raise OSError(28, "No space left on device")
    with pytest.raises(ValueError):
        with staged_dir(out) as tmp:
            raise ValueError("not a write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no staging dir left
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    with staged_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
