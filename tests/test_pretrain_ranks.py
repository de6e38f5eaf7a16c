"""2 real ranks (gloo) under the deepspeed launcher: every ZeRO stage trains, ranks agree, the export
loads with plain from_pretrained, resumes are exact (also at another world size or ZeRO stage),
and a simulated two-node run matches."""
import json
import threading

import pytest
import torch
from conftest import (
    STAGES,
    check,
    free_port,
    pretrain_args,
    rtune,
    rtune_many,
    summary,
    tiny_config,
    train_losses,
    write_config,
)
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.slow


def eval_loss_of_export(run_dir, cache):
    """Eval loss of final/ loaded with plain from_pretrained, on the engine's eval blocks."""
    from rtune_ds.data.corpus import packed_blocks, split_blocks
    from rtune_ds.data.tokenizer import tokenizer_hash
    from rtune_ds.train.evaluate import evaluate_lm
    from rtune_ds.train.objectives import make_objective

    cfg = json.loads((run_dir / "final" / "lineage.json").read_text())["config"]
    model = AutoModelForCausalLM.from_pretrained(str(run_dir / "final"), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(run_dir / "final"))
    blocks = packed_blocks(cfg["data"]["train"][0]["path"], tok, tokenizer_hash(tok),
                           cfg["data"]["seq_len"], "text", cache)
    held_out = split_blocks(blocks, cfg["data"]["eval_fraction"])[1][:cfg["train"]["eval_max_blocks"]]
    objective = make_objective("clm", tok, cfg["seed"], 0.15)
    model.eval()
    return evaluate_lm(model, {"general": held_out}, objective, 4)["eval/loss"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_zero_stage_trains_on_two_ranks(stage_runs, stage, cache_dir):
    run_dir = stage_runs / stage
    losses = train_losses(run_dir)
    assert len(losses) == 16
    assert sum(list(losses.values())[-4:]) / 4 < losses[1] - 1.0  # loss falls
    s = summary(run_dir)
    assert s["world_size"] == 2 and s["zero_stage"] == int(stage[4])
    assert len(set(s["rank_weight_digests"])) == 1  # both ranks hold identical weights
    engine_eval = s["final_eval"]["eval/loss"]
    assert eval_loss_of_export(run_dir, cache_dir / "packed") == pytest.approx(engine_eval, abs=1e-5)
    lineage = json.loads((run_dir / "final" / "lineage.json").read_text())
    assert lineage["steps"] == 16 and lineage["parent"] is None
    assert lineage["schedule"]["min_lr"] == pytest.approx(3e-4)


def test_stages_agree(stage_runs):
    finals = [summary(stage_runs / s)["final_eval"]["eval/loss"] for s in STAGES]
    assert max(finals) - min(finals) < 1e-3, finals


def max_weight_diff(a, b):
    wa, wb = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_stop_and_resume_matches_uninterrupted_run(stage_runs, stage):
    full, resumed = stage_runs / stage, stage_runs / f"{stage}_resumed"
    assert (resumed / "checkpoints" / "step_00000007").is_dir()  # where the first launch stopped
    assert max_weight_diff(full, resumed) <= 1e-6
    a, b = train_losses(full), train_losses(resumed)
    assert list(b) == list(range(1, 17))  # metrics.jsonl has each step once
    assert all(abs(a[s] - b[s]) <= 1e-5 for s in a)


def test_two_node_no_ssh_launch_matches_single_node(stage_runs, tmp_path, cache_dir):
    reference = stage_runs / "zero2"
    run_dir = tmp_path / "two_node"
    cfg = write_config(tmp_path / "run.yaml", tiny_config(run_dir))
    port = free_port()
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")  # names only: --no_ssh contacts none
    results = {}

    def node(rank):
        launcher = ["--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(rank),
                    "--master_addr", "127.0.0.1", "--master_port", str(port)]
        results[rank] = rtune(["pretrain", "--config", str(cfg), "--ds-config",
                               "ds_configs/zero2.json"], cache_dir, launcher_args=launcher)

    threads = [threading.Thread(target=node, args=(r,)) for r in (0, 1)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for r in (0, 1):
        check(results[r])
    assert summary(run_dir)["world_size"] == 2
    assert max_weight_diff(reference, run_dir) <= 1e-6


SHRINK, GROW = ["zero2", "zero3"], ["zero0", "zero2", "zero3"]


@pytest.fixture(scope="module")
def resized(tmp_path_factory, cache_dir):
    """Runs continued at another world size: shrink-<stage> stopped after 8 steps on 2 ranks and
    finished on 1, grow-<stage> stopped after 8 on 1 rank and finished on 2 (the 2-rank halves of
    all of them in one launch). (root, {stage: the 1-rank resume refused for its global batch})"""
    root = tmp_path_factory.mktemp("resized")

    def args(name, stage):
        return [*pretrain_args(root, name, stage), "--resume", "auto"]

    for stage in GROW:
        check(rtune([*args(f"grow-{stage}", stage), "train.stop_after=8",
                     "train.global_batch_size=16"], cache_dir))
        assert not (root / f"grow-{stage}" / "final").exists()  # the schedule is not done yet
    rtune_many([*([*args(f"shrink-{stage}", stage), "train.stop_after=8"] for stage in SHRINK),
                *(args(f"grow-{stage}", stage) for stage in GROW)], cache_dir)
    refused = {}
    for stage in SHRINK:
        refused[stage] = rtune(args(f"shrink-{stage}", stage), cache_dir)
        check(rtune([*args(f"shrink-{stage}", stage), "train.global_batch_size=16"], cache_dir))
    return root, refused


@pytest.mark.parametrize("stage", SHRINK)
def test_resume_at_another_world_size_through_universal_checkpoint(stage_runs, resized, stage):
    root, refused = resized
    run_dir = root / f"shrink-{stage}"
    # 1 rank x micro 4 x accum 2 != the saved 16
    assert refused[stage].returncode == 2
    assert "train.global_batch_size=16" in refused[stage].stderr
    assert summary(run_dir)["world_size"] == 1
    assert (run_dir / "checkpoints" / "step_00000008_universal").is_dir()
    a, b = train_losses(stage_runs / stage), train_losses(run_dir)
    assert list(b) == list(range(1, 17))
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-4


@pytest.mark.parametrize("stage", GROW)
def test_resume_at_a_larger_world_size(stage_runs, resized, stage):
    run_dir = resized[0] / f"grow-{stage}"
    assert summary(run_dir)["world_size"] == 2
    # a ZeRO-0 checkpoint holds the whole optimizer state and loads as it is
    assert (run_dir / "checkpoints" / "step_00000008_universal").is_dir() == (stage != "zero0")
    a, b = train_losses(stage_runs / stage), train_losses(run_dir)
    assert list(b) == list(range(1, 17))
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-4


def test_resume_with_another_zero_stage(stage_runs, tmp_path, cache_dir):
    """ZeRO-1 -> 2 converts through a universal checkpoint; DeepSpeed has no conversion to or
    from stage 0 or 3, so those are refused before any compute, leaving the run dir as it was.
    (1 rank with the 2-rank global batch: the data order, and so the curve, is the same.)"""
    full = stage_runs / "zero2"
    run_dir = tmp_path / "restage"
    cfg = write_config(tmp_path / "restage.yaml", tiny_config(run_dir))
    args = ["pretrain", "--config", str(cfg), "--resume", "auto", "train.global_batch_size=16"]
    check(rtune([*args, "--ds-config", "ds_configs/zero1.json", "train.stop_after=8"], cache_dir))
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    for refused_stage in (0, 3):
        ds = f"ds_configs/zero{refused_stage}.json"
        refused = rtune([*args, "--ds-config", ds], cache_dir)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert all(s in refused.stderr for s in ("'deepspeed'", ds, "stage 1",
                                                 f"stage {refused_stage}")), refused.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before
    check(rtune([*args, "--ds-config", "ds_configs/zero2.json"], cache_dir))
    assert summary(run_dir)["zero_stage"] == 2
    assert (run_dir / "checkpoints" / "step_00000008_universal").is_dir()
    a, b = train_losses(full), train_losses(run_dir)
    assert list(b) == list(range(1, 17))
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-4
