"""The MLM loss on the masked rows only equals the full computation: loss, every gradient, the
eval loss, and training through a ZeRO-3 engine."""
import functools
import subprocess

import pytest
import torch
from conftest import (
    DEEPSPEED,
    REPO,
    base_env,
    check,
    free_port,
    read_jsonl,
    rtune,
    tiny_config,
    write_config,
)
from transformers import BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

from rtune_ds.models.presets import build_preset
from rtune_ds.train import evaluate
from rtune_ds.train.objectives import IGNORE, LMObjective, lm_loss, mlm_head_of

VOCAB = 300
full_loss = functools.partial(lm_loss, masked_rows=False)


class Tokenizer:  # what build_preset reads of a tokenizer
    pad_token_id, bos_token_id, eos_token_id = 1, 0, 2

    def __len__(self):
        return VOCAB


def tiny(family: str) -> torch.nn.Module:
    """Dropout stays on in BERT and DistilBERT (their defaults, 0.1): the heads have none, so the
    encoder draws the same random numbers either way."""
    torch.manual_seed(0)
    shape = dict(vocab_size=VOCAB, max_position_embeddings=64)
    if family == "roberta":
        return build_preset("roberta-1m", Tokenizer(), 32, 0)
    if family == "bert":
        return BertForMaskedLM(BertConfig(**shape, hidden_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=128))
    return DistilBertForMaskedLM(DistilBertConfig(**shape, dim=64, n_layers=2, n_heads=4,
                                                  hidden_dim=128))


def mlm_batch(rows: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    objective = LMObjective("mlm", seed=1, mask_token_id=4, vocab_size=VOCAB,
                            special_ids=(0, 1, 2, 3, 4))
    blocks = torch.randint(5, VOCAB, (rows, 32), generator=torch.Generator().manual_seed(seed))
    return objective.batch(blocks, list(range(seed * rows, seed * rows + rows)))


def loss_and_grads(model, batch, loss_fn):
    model.zero_grad()
    torch.manual_seed(5)
    loss = loss_fn(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("family", ["roberta", "bert", "distilbert"])
def test_masked_rows_loss_and_every_gradient_equal_the_full_head(family):
    model, batch = tiny(family).train(), mlm_batch()
    seen = []
    decoder = model.get_output_embeddings()
    decoder.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[:-1]))
    full, full_grads = loss_and_grads(model, batch, full_loss)
    rows, rows_grads = loss_and_grads(model, batch, lm_loss)
    assert seen == [(4, 32), ((batch["labels"] != IGNORE).sum().item(),)]
    assert abs(rows.item() - full.item()) <= 1e-5 and full.item() > 1
    assert rows_grads.keys() == full_grads.keys() and len(full_grads) > 40
    for name, grad in full_grads.items():
        assert (rows_grads[name] - grad).abs().max().item() <= 1e-5, name
        assert (rows_grads[name] - grad).norm() <= 1e-5 * grad.norm() + 1e-12, name
    assert any(g.abs().max() > 1e-3 for g in full_grads.values())


def test_other_models_take_their_own_full_loss():
    llama = build_preset("llama-1m", Tokenizer(), 32, 0)
    assert mlm_head_of(llama) is None
    blocks = torch.randint(5, VOCAB, (2, 16))
    batch = LMObjective("clm").batch(blocks, [0, 1])
    assert torch.equal(lm_loss(llama, batch), llama(**batch).loss)


def test_eval_loss_and_perplexity_are_unchanged(monkeypatch):
    model = tiny("bert").eval()
    objective = LMObjective("mlm", seed=3, mask_token_id=4, vocab_size=VOCAB,
                            special_ids=(0, 1, 2, 3, 4))
    sets = {"a": torch.randint(5, VOCAB, (7, 32)), "b": torch.randint(5, VOCAB, (3, 32))}
    rows = evaluate.evaluate_lm(model, sets, objective, 2)
    monkeypatch.setattr(evaluate, "lm_loss", full_loss)
    full = evaluate.evaluate_lm(model, sets, objective, 2)
    assert rows.keys() == full.keys()
    for key, value in full.items():
        assert rows[key] == pytest.approx(value, rel=1e-6), key


@pytest.mark.parametrize("stage", [0, 3])
def test_training_through_a_zero_engine_matches_the_full_head(one_rank, stage):
    """Three optimizer steps of 2 micro-batches each: the losses and the weights agree."""
    import deepspeed

    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, "gradient_clipping": 1.0,
              "steps_per_print": 10**9, "zero_optimization": {
                  "stage": stage, "stage3_param_persistence_threshold": 0}}  # every one sharded
    runs = {}
    for name, loss_fn in (("rows", lm_loss), ("full", full_loss)):
        model = tiny("bert")
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                          config=config)
        losses = []
        for micro in range(6):
            torch.manual_seed(micro)
            loss = loss_fn(engine, mlm_batch(2, micro))
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            weights = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
        runs[name] = losses, weights
        engine.destroy()
    assert runs["rows"][0] == pytest.approx(runs["full"][0], abs=1e-5)
    assert runs["rows"][0][-1] != runs["rows"][0][0]
    for name, weight in runs["full"][1].items():
        assert (runs["rows"][1][name] - weight).abs().max().item() <= 1e-5, name


FULL_HEAD_RTUNE = '''import functools
from rtune_ds.recipes import pretrain
from rtune_ds.train import evaluate, objectives
pretrain.lm_loss = evaluate.lm_loss = functools.partial(objectives.lm_loss, masked_rows=False)
from rtune_ds.cli import entry
entry()
'''


@pytest.mark.slow
def test_pretraining_on_two_ranks_under_zero3_matches_the_full_head(tmp_path, cache_dir):
    """Uneven masked-row counts across ranks do not stall ZeRO-3; train and eval losses agree."""
    script = tmp_path / "full_head_rtune.py"
    script.write_text(FULL_HEAD_RTUNE)
    metrics = {}
    for side in ("rows", "full"):
        cfg = tiny_config(tmp_path / side, model={"preset": "roberta-1m"})
        args = ["pretrain", "--config", str(write_config(tmp_path / f"{side}.yaml", cfg)),
                "--ds-config", "ds_configs/zero3.json"]
        if side == "rows":
            check(rtune(args, cache_dir, 2))
        else:
            check(subprocess.run([str(DEEPSPEED), "--num_gpus", "2", "--master_port",
                                  str(free_port()), str(script), *args], cwd=REPO,
                                 env=base_env(cache_dir), capture_output=True, text=True,
                                 timeout=600))
        metrics[side] = {(m["step"], k): v for m in read_jsonl(tmp_path / side / "metrics.jsonl")
                         for k, v in m.items() if k in ("train/loss", "eval/loss", "eval/ppl")}
    assert metrics["rows"].keys() == metrics["full"].keys()
    assert {k for _, k in metrics["full"]} == {"train/loss", "eval/loss", "eval/ppl"}
    for key, value in metrics["full"].items():
        assert metrics["rows"][key] == pytest.approx(value, rel=1e-5), key
