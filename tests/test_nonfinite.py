"""A NaN/Inf loss or gradient: train.nonfinite=stop ends the run with exit 3, naming the step and
keeping the last good checkpoint; train.nonfinite=skip leaves out that step's update and goes on.
The fault is real, not injected: AdamW at lr 1e6 without clipping turns the tiny model's gradients
Inf/NaN from the second step on (and every later step, as the weights stay degenerate)."""
import re

import pytest
import torch
from conftest import check, read_jsonl, rtune, tiny_config, train_losses, write_config
from safetensors.torch import load_file


def blowup_config(run_dir, **train):
    return tiny_config(run_dir, train={"lr": 1e6, "grad_clip": 0.0, "schedule": "constant",
                                       "warmup_steps": 0, "eval_every": 0, **train})


def test_the_policy_is_validated(tmp_path):
    from rtune_ds.config.load import run_config_from
    from rtune_ds.errors import ConfigError

    with pytest.raises(ConfigError, match=r"run\.yaml: key 'train\.nonfinite'.*'ignore'"):
        run_config_from(tiny_config(tmp_path / "run"), ["train.nonfinite=ignore"], "run.yaml",
                        "pretrain")


def test_stop_names_the_step_keeps_the_last_good_checkpoint_and_exits_3(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "run.yaml", blowup_config(run_dir, max_steps=6, save_every=1))
    proc = rtune(["pretrain", "--config", str(cfg)], cache_dir)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    bad = int(re.match(r"rtune: error: step (\d+): ", err).group(1))
    good = f"step_{bad - 1:08d}"
    assert bad >= 2 and "NaN/Inf" in err and "train.nonfinite=stop" in err and good in err, err
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "latest").read_text() == good
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest"] + [
        f"step_{s:08d}" for s in range(1, bad)]  # nothing of the poisoned step
    assert list(train_losses(run_dir)) == list(range(1, bad))
    assert not (run_dir / "final").exists()


@pytest.mark.parametrize("ds, nproc", [("zero0", 1),
                                         pytest.param("zero2", 2, marks=pytest.mark.slow)])
def test_skip_leaves_out_the_updates_and_goes_on(tmp_path, cache_dir, ds, nproc):
    """Stage 0 leaves the update out itself; ZeRO-2 lets DeepSpeed's own check of the gradient
    norm do it, and the loop keeps the LR schedule on its step count."""
    def run(name, **train):
        cfg = write_config(tmp_path / f"{name}.yaml", blowup_config(tmp_path / name, **train))
        check(rtune(["pretrain", "--config", str(cfg), "--ds-config", f"ds_configs/{ds}.json"],
                    cache_dir, nproc))
        return tmp_path / name

    skip = run("skip", max_steps=6, nonfinite="skip")
    counts = [m["train/nonfinite_skipped"] for m in read_jsonl(skip / "metrics.jsonl")]
    first = counts.index(1) + 1  # the first skipped step
    assert first >= 2 and counts == [max(0, s - first + 1) for s in range(1, 7)]
    # every step from `first` on was left out: the weights are those after step first - 1
    ref = run("ref", max_steps=first - 1)
    a = load_file(str(skip / "final" / "model.safetensors"))
    b = load_file(str(ref / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(t.isfinite().all() for t in a.values())
    states = torch.load(skip / "checkpoints" / "step_00000006" / "mp_rank_00_model_states.pt",
                        weights_only=False)  # our own file
    assert states["lr_scheduler"]["last_epoch"] == 6
