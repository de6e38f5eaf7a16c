"""Early stopping (train.patience): the best state counts the evals since its best one and keeps the
count in checkpoints; the one loop ends once the count reaches the patience (in this process, on a
toy model with scripted dev scores); the config is checked before any compute; and on 2 real
ranks a fine-tuning run stops before max_steps with the bundle of its best dev state, and a run
split by train.stop_after stops where the uninterrupted one does."""
import io
import json
from pathlib import Path

import pytest
import torch
from conftest import (
    FIXTURES,
    check,
    finetune_config,
    read_jsonl,
    rtune,
    rtune_many,
    tiny_base,
    write_config,
)

from rtune_ds.config.load import run_config_from
from rtune_ds.errors import ConfigError
from rtune_ds.train.guards import BestState


def toy() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 1)


# --- BestState counts stale evals --------------------------------------------------------------

@pytest.mark.parametrize("mode, scores, stale", [
    ("max", [0.5, 0.5, 0.6, 0.55, 0.6, 0.7], [0, 1, 0, 1, 2, 0]),  # a tie is no improvement
    ("min", [1.0, 0.9, 0.95, 0.9, 0.8, 0.85], [0, 0, 1, 2, 0, 1]),
])
def test_stale_counts_evals_since_the_best(mode, scores, stale):
    model, best, seen = toy(), BestState("eval/m", mode), []
    for step, value in enumerate(scores):
        best.offer(model, step, {"eval/m": value})
        seen.append(best.stale)
    assert seen == stale


def test_stale_count_survives_a_checkpoint_and_goes_on():
    model, best = toy(), BestState("eval/accuracy", "max")
    for step, value in enumerate([0.3, 0.6, 0.5, 0.4]):
        best.offer(model, step, {"eval/accuracy": value})
    assert (best.step, best.stale) == (1, 2)
    buffer = io.BytesIO()
    torch.save({"best": best.state_dict()}, buffer)
    buffer.seek(0)
    resumed = BestState("eval/accuracy", "max")
    resumed.load_state_dict(torch.load(buffer, weights_only=True)["best"])
    assert (resumed.step, resumed.stale) == (1, 2)
    resumed.offer(model, 4, {"eval/accuracy": 0.6})  # a tie with the best: still stale
    assert resumed.stale == 3
    resumed.offer(model, 5, {"eval/accuracy": 0.61})
    assert (resumed.step, resumed.stale) == (5, 0)
    old = BestState("eval/accuracy", "max")
    old.load_state_dict({k: v for k, v in best.state_dict().items() if k != "stale"})
    assert old.stale == 0  # a checkpoint written before the count existed


# --- the one loop, in this process ---------------------------------------------------------------

# dev score after each step (index = step; 0: before training); patience 2 with an eval every
# step: best at 3, stale at 4 (a tie) and 5 -> the loop ends at step 5 of 10
SCORES = [0.1, 0.3, 0.2, 0.5, 0.5, 0.4, 0.9, 0.9, 0.9, 0.9, 0.9]


class ToySource:
    def global_batch(self, step, size):
        return torch.randn(size, 4, generator=torch.Generator().manual_seed(step))

    def make_inputs(self, rows, keys):
        return {"x": rows}

    def scalars(self, step):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def launch(run_dir: Path, patience: int | None = 2, stop_after=None, resume=None, seen=None):
    """One launch of the loop on a fresh toy model; `seen` gets the weights at each eval's step."""
    from rtune_ds.train import engine
    from rtune_ds.train.schedules import constant

    start = int(resume.split("_")[1]) if resume else 0
    steps = [start]

    def loss_fn(eng, inputs):
        steps[0] += 1  # one micro-batch per step
        return eng(inputs["x"]).pow(2).mean()

    def evaluate(module):
        if seen is not None:
            seen[steps[0]] = module.weight.detach().clone()
        return {"eval/accuracy": SCORES[steps[0]]}

    ds = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2,
          "gradient_accumulation_steps": 1, "steps_per_print": 10**9,
          "optimizer": {"type": "AdamW", "params": {"lr": 0.05}}, "zero_optimization": {"stage": 0}}
    spec = engine.LoopSpec(run_dir=run_dir, ds_config=ds, schedule=constant(0.05, 10), max_steps=10,
                           micro_batch=2, grad_accum=1, stop_after=stop_after, eval_every=1,
                           resume_tag=resume, best_metric="eval/accuracy", patience=patience)
    return engine.train(toy(), spec, ToySource(), loss_fn, evaluate)


def test_the_loop_ends_after_patience_evals_with_the_best_weights(one_rank, tmp_path):
    seen = {}
    result = launch(tmp_path, seen=seen)
    assert (result.step, result.early_stopped, result.finished) == (5, True, True)
    assert result.best_step == 3 and result.best_eval == {"eval/accuracy": 0.5}
    assert torch.equal(result.engine.module.weight, seen[3])  # restored
    assert not torch.equal(seen[5], seen[3])
    assert sorted(seen) == [0, 1, 2, 3, 4, 5]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_00000005"


def test_without_patience_the_loop_trains_to_max_steps(one_rank, tmp_path):
    result = launch(tmp_path, patience=None)
    assert (result.step, result.early_stopped, result.finished) == (10, False, True)
    assert result.best_step == 6  # the first 0.9


def test_a_split_run_stops_where_the_whole_one_does(one_rank, tmp_path):
    first = launch(tmp_path, stop_after=4)  # ends at step 4 with one stale eval counted
    assert (first.step, first.early_stopped, first.finished) == (4, False, False)
    second = launch(tmp_path, resume="step_00000004")
    assert (second.step, second.early_stopped, second.best_step) == (5, True, 3)
    again = launch(tmp_path, resume="step_00000005")  # a relaunch of the stopped run: no step
    assert (again.step, again.early_stopped, again.finished, again.best_step) == (5, True, True, 3)
    assert not again.step_times


# --- config checks ------------------------------------------------------------------------------

def finetune_data(tmp_path: Path, **train) -> dict:
    base = tmp_path / "base"
    base.mkdir(exist_ok=True)
    (base / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return {"run_dir": str(tmp_path / "run"), "model": {"path": str(base)},
            "task": {"train": str(FIXTURES / "cls_train.jsonl"),
                     "dev": str(FIXTURES / "cls_dev.jsonl")},
            "train": {"eval_every": 5, **train}}


def test_patience_is_accepted_for_fine_tuning(tmp_path):
    cfg = run_config_from(finetune_data(tmp_path, patience=3), [], "ft.yaml", "finetune")
    assert cfg.train.patience == 3
    default = run_config_from(finetune_data(tmp_path), [], "ft.yaml", "finetune")
    assert default.train.patience is None


@pytest.mark.parametrize("train, command, message", [
    ({"patience": 0}, "finetune", r"'train.patience': must be >= 1, got 0"),
    ({"patience": True}, "finetune", r"'train.patience': expected int"),
    ({"patience": 2, "eval_every": 0}, "finetune", r"'train.patience': needs train.eval_every > 0"),
    ({"patience": 2}, "pretrain", r"'train.patience': .*pretraining keeps no best state"),
])
def test_bad_patience_is_refused_by_key(tmp_path, train, command, message):
    data = finetune_data(tmp_path, **train)
    if command == "pretrain":
        data = {"run_dir": data["run_dir"], "model": {"preset": "llama-1m"},
                "data": {"train": [str(FIXTURES / "general.jsonl")]}, "train": data["train"]}
    with pytest.raises(ConfigError, match=r"^cfg.yaml: key " + message):
        run_config_from(data, [], "cfg.yaml", command)


# --- 2 real ranks -------------------------------------------------------------------------------

STEPS, EVERY = 60, 2


@pytest.fixture(scope="module")
def early(tmp_path_factory, cache_dir):
    """A 2-rank ZeRO-3 fine-tuning run with patience 2 and an eval every 2 steps; its config."""
    root = tmp_path_factory.mktemp("early")
    run_dir = root / "whole"
    cfg = finetune_config(run_dir, tiny_base(cache_dir), "full",
                          train={"max_steps": STEPS, "eval_every": EVERY, "patience": 2})
    args = ["--config", str(write_config(root / "whole.yaml", cfg)),
            "--ds-config", "ds_configs/zero3.json"]
    check(rtune(["finetune", *args], cache_dir, 2))
    return run_dir, cfg


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def evals_of(run_dir: Path) -> dict[int, dict]:
    return {m["step"]: m for m in read_jsonl(run_dir / "metrics.jsonl") if "eval/accuracy" in m}


@pytest.mark.slow
def test_two_ranks_stop_early_with_the_best_dev_state(early, cache_dir):
    from rtune_ds.recycling.merge import apply_bundle
    from rtune_ds.train.evaluate import evaluate_classification

    run_dir, _ = early
    s, evals = summary_of(run_dir), evals_of(run_dir)
    assert s["early_stopped"] is True and s["patience"] == 2
    best = s["best_step"]
    assert s["step"] == best + 2 * EVERY < STEPS  # the second eval without improvement ends it
    assert sorted(evals) == list(range(0, s["step"] + 1, EVERY))
    assert max(m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")) == s["step"]
    accuracy = {step: m["eval/accuracy"] for step, m in evals.items()}
    assert accuracy[best] == max(accuracy.values())
    assert all(accuracy[step] < accuracy[best] for step in accuracy if step < best)
    # dev scored again after the run is the eval logged at best_step, not the last one's
    dev = s["metrics"]["dev"]
    assert dev["eval/accuracy"] == accuracy[best]
    assert dev["eval/loss"] == pytest.approx(evals[best]["eval/loss"], abs=1e-6)
    assert dev["eval/loss"] != pytest.approx(evals[s["step"]]["eval/loss"], abs=1e-6)
    # test was scored with those weights: the bundle, applied to the base again, gives its numbers
    from rtune_ds.config.schema import TaskConfig
    from rtune_ds.data.examples import load_task
    from rtune_ds.data.tokenizer import load_tokenizer

    base = tiny_base(cache_dir)
    task = TaskConfig(train=str(FIXTURES / "cls_train.jsonl"), dev=str(FIXTURES / "cls_dev.jsonl"),
                      test=str(FIXTURES / "cls_test.jsonl"), max_len=32)
    test = load_task(task, load_tokenizer(base), 3, "test").splits["test"]
    with torch.no_grad():
        got = evaluate_classification(apply_bundle(run_dir / "final", base).eval(), test, 8, 4)
    assert got["eval/accuracy"] == s["metrics"]["test"]["eval/accuracy"]
    assert got["eval/loss"] == pytest.approx(s["metrics"]["test"]["eval/loss"], abs=1e-5)
    bundle = json.loads((run_dir / "final" / "bundle.json").read_text())
    assert bundle["metrics"]["best_step"] == best


@pytest.mark.slow
def test_a_run_split_by_stop_after_stops_at_the_same_step(early, cache_dir, tmp_path):
    whole, cfg = early
    s = summary_of(whole)
    # cut after the first eval that did not improve: the count (1) must cross the resume
    cut = s["best_step"] + EVERY
    run_dir = tmp_path / "split"
    cfg = write_config(tmp_path / "split.yaml", {**cfg, "run_dir": str(run_dir)})
    args = ["finetune", "--config", str(cfg), "--ds-config", "ds_configs/zero3.json"]
    rtune_many([[*args, f"train.stop_after={cut}"], [*args, "--resume", "auto"]], cache_dir)
    assert (run_dir / "checkpoints" / f"step_{cut:08d}").is_dir()  # where the first launch stopped
    split = summary_of(run_dir)
    assert (split["step"], split["best_step"], split["early_stopped"]) == (
        s["step"], s["best_step"], True)
    assert split["metrics"]["test"] == pytest.approx(s["metrics"]["test"], abs=1e-6)
    assert sorted(evals_of(run_dir)) == sorted(evals_of(whole))
