"""The loop's guards and the distillation objective, in this process on one rank: a toy torch model
and, where the guard acts on one, a real DeepSpeed engine (ZeRO-0, or ZeRO-3 for the partitioned
best state) on CPU/gloo."""
import io
import os
import signal
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import engine_of

from rtune_ds.config.schema import DistillConfig
from rtune_ds.errors import ConfigError
from rtune_ds.train.distill import Distiller
from rtune_ds.train.guards import BestState, StopRequest, update_left_out
from rtune_ds.train.objectives import IGNORE


def toy(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    model[0].bias.requires_grad_(False)  # a frozen parameter: not part of the best state
    return model


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def nudge(module: torch.nn.Module, by: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(by)


def backward(engine, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(2, 4, generator=g), torch.randn(2, 2, generator=g)
    engine.backward(torch.nn.functional.mse_loss(engine(x), y))


def same(a, b) -> bool:
    """Equal nested state (dicts, lists, tensors, numbers)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def optimizer_state(engine):
    """The optimizer's moments and step counts, not the LR the schedule sets in its groups."""
    state = engine.basic_optimizer.state_dict()
    return {"state": {k: {n: v.clone() if isinstance(v, torch.Tensor) else v
                          for n, v in s.items()} for k, s in state["state"].items()},
            "groups": [{k: v for k, v in g.items() if k != "lr"} for g in state["param_groups"]]}


# --- BestState --------------------------------------------------------------------------------

SCORES = [0.5, 0.4, 0.7, 0.7, 0.6]  # a tie (step 4) does not replace the best


@pytest.mark.parametrize("mode, best_step", [("max", 3), ("min", 2)])
def test_best_state_keeps_the_best_eval_by_its_mode(mode, best_step):
    model, best, seen = toy(), BestState("eval/score", mode), {}
    for step, value in enumerate(SCORES, 1):
        nudge(model, 0.1)
        seen[step] = weights(model)
        best.offer(model, step, {"eval/score": value, "eval/other": -value})
    assert best.step == best_step
    assert best.eval == {"eval/score": SCORES[best_step - 1], "eval/other": -SCORES[best_step - 1]}
    assert sorted(best.tensors) == ["0.weight", "2.bias", "2.weight"]  # trainable ones only
    for name, tensor in best.tensors.items():
        assert torch.equal(tensor, seen[best_step][name])
    assert best.world_size == 1 and not best.partitioned


def test_restore_puts_the_best_weights_back():
    model, best = toy(), BestState("eval/loss", "min")
    best.offer(model, 1, {"eval/loss": 1.0})
    at_best = weights(model)
    nudge(model, 0.5)
    best.offer(model, 2, {"eval/loss": 2.0})  # worse: not kept
    frozen_now = model[0].bias.detach().clone()
    best.restore(model)
    now = weights(model)
    for name in ("0.weight", "2.weight", "2.bias"):
        assert torch.equal(now[name], at_best[name]), name
    assert torch.equal(now["0.bias"], frozen_now)  # not trained, so not part of the state


def test_an_eval_without_the_best_metric_is_refused():
    best = BestState("eval/accuracy", "max")
    with pytest.raises(ConfigError, match=r"'eval/accuracy'.*eval/f1, eval/loss"):
        best.offer(toy(), 1, {"eval/loss": 1.0, "eval/f1": 0.5})


def test_best_state_round_trips_through_a_checkpoint_file():
    model, best = toy(), BestState("eval/accuracy", "max")
    best.offer(model, 7, {"eval/accuracy": 0.8})
    at_best = weights(model)
    buffer = io.BytesIO()
    torch.save({"best": best.state_dict()}, buffer)
    buffer.seek(0)
    loaded = BestState("eval/accuracy", "max")
    loaded.load_state_dict(torch.load(buffer, weights_only=True)["best"])
    assert (loaded.step, loaded.eval, loaded.world_size, loaded.partitioned) == (
        7, {"eval/accuracy": 0.8}, 1, False)
    assert same(loaded.tensors, best.tensors)
    loaded.offer(model, 8, {"eval/accuracy": 0.7})  # the loaded best still decides
    assert loaded.step == 7
    nudge(model, 1.0)
    loaded.restore(model)
    assert torch.equal(weights(model)["2.weight"], at_best["2.weight"])
    empty = BestState("eval/accuracy", "max")
    empty.load_state_dict(None)  # a checkpoint saved before any eval
    assert empty.step is None and empty.tensors == {}


def test_zero3_partitions_are_kept_restored_and_refused_at_another_world_size(one_rank,
                                                                             monkeypatch):
    # persistence threshold 10: the biases stay whole on every rank (ds_persist), the weights
    # are partitioned; the state holds both kinds
    engine = engine_of(toy(), {"stage": 3, "stage3_param_persistence_threshold": 10})
    module, best = engine.module, BestState("eval/loss", "min")
    best.offer(module, 3, {"eval/loss": 0.1})
    assert best.partitioned and best.world_size == 1
    assert "2.bias#full" in best.tensors and "2.weight#full" not in best.tensors
    kept = {n: t.clone() for n, t in best.tensors.items()}
    with torch.no_grad():
        for p in module.parameters():
            p.ds_tensor.add_(1.0)
    best.restore(module)
    for name, p in module.named_parameters():
        if name in kept:
            assert torch.equal(p.ds_tensor, kept[name]), name
    state = best.state_dict()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"ZeRO-3 partitions of 1 ranks; resume it on that many"):
        BestState("eval/loss", "min").load_state_dict(state)
    whole = BestState("eval/loss", "min")
    whole.load_state_dict({**state, "partitioned": False})  # whole tensors fit any world size
    assert whole.step == 3


# --- update_left_out --------------------------------------------------------------------------

def test_a_step_left_out_keeps_weights_and_optimizer_state_but_advances_the_schedule(one_rank):
    engine = engine_of(toy())
    optimizer = engine.basic_optimizer
    backward(engine, 1)
    engine.step()  # one update applied: the optimizer has state to keep
    before, state = weights(engine.module), optimizer_state(engine)
    lr, epoch, steps = engine.get_lr()[0], engine.lr_scheduler.last_epoch, engine.global_steps
    own_step = vars(optimizer).get("step")  # the LR scheduler's wrapper
    backward(engine, 2)
    with update_left_out(engine):
        engine.step()
    assert same(weights(engine.module), before)
    assert same(optimizer_state(engine), state)
    assert engine.lr_scheduler.last_epoch == epoch + 1 and engine.get_lr()[0] < lr
    assert engine.global_steps == steps + 1
    assert all(p.grad is None or not p.grad.any() for p in engine.module.parameters())
    assert vars(optimizer).get("step") is own_step

    backward(engine, 3)
    engine.step()  # outside it the update applies
    assert not torch.equal(weights(engine.module)["2.weight"], before["2.weight"])
    assert not same(optimizer_state(engine), state)


def test_update_left_out_gives_the_optimizer_back_after_an_error(one_rank):
    engine = engine_of(toy())
    own_step = vars(engine.basic_optimizer).get("step")
    with pytest.raises(RuntimeError, match="inside"):
        with update_left_out(engine):
            raise RuntimeError("inside")
    assert vars(engine.basic_optimizer).get("step") is own_step
    before = weights(engine.module)
    backward(engine, 4)
    engine.step()
    assert not torch.equal(weights(engine.module)["0.weight"], before["0.weight"])


# --- StopRequest ------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_real_signal_requests_the_stop_and_release_restores_the_handlers(sig):
    previous = {s: signal.getsignal(s) for s in StopRequest.SIGNALS}
    stop = StopRequest()
    try:
        assert not stop.requested
        os.kill(os.getpid(), sig)
        deadline = time.monotonic() + 5
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.01)  # Python runs the handler in the main thread between bytecodes
        assert stop.requested
    finally:
        stop.release()
    assert {s: signal.getsignal(s) for s in StopRequest.SIGNALS} == previous


# --- Distiller --------------------------------------------------------------------------------

class ToyLM(torch.nn.Module):
    """input_ids -> logits over `out` classes (pooled) or over the vocabulary at every position,
    with the hidden states HF models return (embeddings, then each layer)."""

    def __init__(self, seed: int, vocab: int = 11, out: int | None = None):
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.mid = torch.nn.Embedding(vocab, 6), torch.nn.Linear(6, 6)
        self.head, self.pooled = torch.nn.Linear(6, out or vocab), out is not None

    def forward(self, input_ids, attention_mask, output_hidden_states=False):
        h0 = self.emb(input_ids)
        h1 = torch.tanh(self.mid(h0))
        logits = self.head(h1.mean(1) if self.pooled else h1)
        return SimpleNamespace(logits=logits, hidden_states=(h0, h1))


def kl_by_hand(s_row, t_row, temperature):
    p = torch.softmax(t_row / temperature, -1)
    return (temperature ** 2 * (p * (p.log() - torch.log_softmax(s_row / temperature, -1)))).sum()


def expected_terms(student, teacher, batch, task_type, temperature):
    """(ce, kl, hidden MSE of hidden_states[1]) written out position by position."""
    s = student(batch["input_ids"], batch["attention_mask"])
    t = teacher(batch["input_ids"], batch["attention_mask"])
    if task_type == "classification":
        rows = [(s.logits[b], t.logits[b], batch["labels"][b]) for b in range(len(s.logits))]
    else:  # position i predicts token i + 1
        labels = batch["labels"]
        rows = [(s.logits[b, i], t.logits[b, i], labels[b, i + 1])
                for b in range(labels.shape[0]) for i in range(labels.shape[1] - 1)
                if labels[b, i + 1] != IGNORE]
    ce = sum(-torch.log_softmax(sl, -1)[y] for sl, _, y in rows) / len(rows)
    kl = sum(kl_by_hand(sl, tl, temperature) for sl, tl, _ in rows) / len(rows)
    mask = batch["attention_mask"].bool()
    diffs = [(s.hidden_states[1][b, i] - t.hidden_states[1][b, i]) ** 2
             for b in range(mask.shape[0]) for i in range(mask.shape[1]) if mask[b, i]]
    hidden = torch.stack(diffs).mean()
    return ce.item(), kl.item(), hidden.item()


def make_batch(task_type, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(11, (3, 5), generator=g)
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[2, 3:] = 0  # a padded row
    if task_type == "classification":
        labels = torch.tensor([0, 2, 1])
    else:
        labels = ids.clone()
        labels[:, :2] = IGNORE  # the prompt
        labels[2, 3:] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("task_type", ["classification", "lm"])
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_distill_loss_is_the_weighted_sum_written_out(task_type, beta):
    out = 3 if task_type == "classification" else None
    student, teacher = ToyLM(1, out=out), ToyLM(2, out=out)  # the teacher not frozen on purpose
    settings = DistillConfig(alpha=0.3, temperature=2.0, beta=beta)
    kd = Distiller(teacher, settings, task_type, [1])
    batches = [make_batch(task_type, seed) for seed in (5, 6)]
    terms = [expected_terms(student, teacher, b, task_type, 2.0) for b in batches]
    for batch, (ce, kl, hidden) in zip(batches, terms):
        loss = kd(student, batch)
        want = (1 - 0.3) * ce + 0.3 * kl + beta * hidden
        assert loss.item() == pytest.approx(want, rel=1e-5)
        loss.backward()
    assert all(p.grad is None for p in teacher.parameters())  # its forward ran under no_grad
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    scalars = kd.scalars()  # means over the micro-batches since the last call
    want = {"kd/ce": sum(t[0] for t in terms) / 2, "kd/kl": sum(t[1] for t in terms) / 2}
    if beta > 0:
        want["kd/hidden"] = sum(t[2] for t in terms) / 2
    assert scalars == pytest.approx(want, rel=1e-5)
    assert kd.scalars() == {k: 0.0 for k in want}  # nothing since
