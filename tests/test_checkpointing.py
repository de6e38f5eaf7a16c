"""Checkpoints are complete or ignored: a half-written one (a kill during the save) is never
resumed from, and the resumed run ends where the uninterrupted one does."""
import pytest
from safetensors.torch import load_file

from conftest import check, rtune, tiny_config, write_config, train_losses

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
