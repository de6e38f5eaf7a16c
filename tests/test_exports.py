"""Intermediate HF exports of (continual) pretraining (train.export_fractions): the steps they fall
on, the config checks, and on 2 real ranks under ZeRO-3 a continual run from a parent that is
stopped, set back (as by a kill between an export and its checkpoint) and resumed: each export is
written once, loads with plain transformers, holds the weights of its step and says so."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, check, rtune, tiny_base, tiny_config, write_config

from rtune_ds.config.load import run_config_from
from rtune_ds.errors import ConfigError
from rtune_ds.recipes.pretrain import export_steps


@pytest.mark.parametrize("fractions, max_steps, steps", [
    ([0.25, 0.5], 8, {2, 4}),
    ([0.05, 0.25, 0.5, 0.51, 0.99], 8, {2, 4}),  # 0 and max_steps are left out; 4 comes once
    ([0.1, 0.9], 100, {10, 90}),
    ([], 8, set()),
])
def test_export_steps(fractions, max_steps, steps):
    assert export_steps(fractions, max_steps) == steps


def pretrain_data(tmp_path: Path, fractions) -> dict:
    return tiny_config(tmp_path / "run", train={"export_fractions": fractions})


def test_fractions_are_accepted_for_pretraining(tmp_path):
    cfg = run_config_from(pretrain_data(tmp_path, [0.25, "0.75"]), [], "pt.yaml", "pretrain")
    assert cfg.train.export_fractions == [0.25, 0.75]  # YAML reads 7.5e-1 as a string
    default = run_config_from(tiny_config(tmp_path / "run"), [], "pt.yaml", "pretrain")
    assert default.train.export_fractions == []


@pytest.mark.parametrize("fractions, message", [
    ([0.5, 0], r"'train.export_fractions\[1\]': must be in \(0, 1\), got 0"),
    ([1.0], r"'train.export_fractions\[0\]': must be in \(0, 1\), got 1.0"),
    ([-0.5], r"'train.export_fractions\[0\]': must be in \(0, 1\)"),
    (["half"], r"'train.export_fractions\[0\]': expected float"),
])
def test_bad_fractions_are_refused_by_key(tmp_path, fractions, message):
    with pytest.raises(ConfigError, match=r"^pt.yaml: key " + message):
        run_config_from(pretrain_data(tmp_path, fractions), [], "pt.yaml", "pretrain")


def test_fine_tuning_refuses_export_fractions(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "llama"}))
    data = {"run_dir": str(tmp_path / "run"), "model": {"path": str(base)},
            "task": {"train": str(FIXTURES / "cls_train.jsonl"),
                     "dev": str(FIXTURES / "cls_dev.jsonl")},
            "train": {"export_fractions": [0.5]}}
    with pytest.raises(ConfigError, match=r"'train.export_fractions': intermediate HF exports are "
                                          r"for pretraining"):
        run_config_from(data, [], "ft.yaml", "finetune")


# --- 2 real ranks, ZeRO-3 -----------------------------------------------------------------------

GLOBAL_BATCH, SEQ_LEN = 16, 32  # tiny_config: micro 4 x accum 2 x 2 ranks; data.seq_len


@pytest.fixture(scope="module")
def continual(tmp_path_factory, cache_dir):
    """(run dir, parent): 8 steps from a tiny base, exports at 0.25 and 0.5 (and fractions that
    round to 0, to 4 again and to 8), checkpoints every 2 steps. The first launch stops at step 4;
    then the step-4 checkpoint is removed, so the resumed launch passes step 4 again."""
    root, parent = tmp_path_factory.mktemp("exports"), tiny_base(cache_dir)
    run_dir = root / "run"
    cfg = tiny_config(run_dir, train={"max_steps": 8, "eval_every": 4, "save_every": 2,
                                      "export_fractions": [0.05, 0.25, 0.5, 0.51, 0.99]})
    cfg["model"] = {"path": str(parent)}
    args = ["pretrain", "--config", str(write_config(root / "run.yaml", cfg)),
            "--ds-config", "ds_configs/zero3.json"]
    check(rtune([*args, "train.stop_after=4"], cache_dir, 2))
    exports, ckpt = run_dir / "exports", run_dir / "checkpoints"
    assert sorted(p.name for p in exports.iterdir()) == ["step-2", "step-4"]
    assert not (run_dir / "final").exists()
    shutil.rmtree(ckpt / "step_00000004")
    (ckpt / "latest").write_text("step_00000002")
    (exports / "step-4" / "kept").write_text("")  # gone if step-4 were written again
    check(rtune([*args, "--resume", "auto"], cache_dir, 2))
    return run_dir, parent


def hf_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                       output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    AutoTokenizer.from_pretrained(str(model_dir))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
def test_exports_are_written_once_with_the_lineage_of_their_step(continual):
    run_dir, parent = continual
    exports = run_dir / "exports"
    assert sorted(p.name for p in exports.iterdir()) == ["step-2", "step-4"]  # no staging left
    assert (exports / "step-4" / "kept").is_file()  # the resume kept the export it found
    final = json.loads((run_dir / "final" / "lineage.json").read_text())
    assert final["steps"] == 8 and "intermediate" not in final
    for step in (2, 4):
        lineage = json.loads((exports / f"step-{step}" / "lineage.json").read_text())
        assert lineage["steps"] == step and lineage["intermediate"] is True
        assert lineage["tokens"] == step * GLOBAL_BATCH * SEQ_LEN
        assert lineage["parent"] == final["parent"] and lineage["parent"]["path"] == str(
            parent.resolve())
        assert lineage["schedule"] == final["schedule"]  # the schedule of the whole run
        assert lineage["config"]["train"]["export_fractions"] == [0.05, 0.25, 0.5, 0.51, 0.99]


@pytest.mark.slow
def test_exports_load_and_hold_the_weights_of_their_step(continual):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run_dir, parent = continual
    weights = {name: hf_weights(run_dir / "exports" / name) for name in ("step-2", "step-4")}
    weights["final"], weights["parent"] = hf_weights(run_dir / "final"), hf_weights(parent)
    names = list(weights)
    for i, a in enumerate(names):  # training moved the weights between every two of them
        for b in names[i + 1:]:
            assert max_diff(weights[a], weights[b]) > 1e-4, (a, b)
    # the same weights as DeepSpeed's own consolidation of the step's checkpoint (step 4's was
    # written again by the resumed launch, which retrained steps 3-4 from the step-2 one)
    for step in (2, 4):
        saved = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"),
                                                         tag=f"step_{step:08d}")
        export = weights[f"step-{step}"]
        assert saved and set(saved) <= set(export)
        assert max((saved[k] - export[k]).abs().max().item() for k in saved) <= 1e-6, step
