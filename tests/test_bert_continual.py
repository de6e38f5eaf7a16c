"""Continual pretraining (MLM) of a BERT checkpoint saved as released encoders are (`BertModel`:
a pooler, no MLM head): v1 carries the parent's tensors the MLM model does not hold (the pooler)
bit for bit, and the missing MLM head is initialised from the seed and warmed up alone first."""
import dataclasses
import json
import math
import shutil

import pytest
import torch
from conftest import (
    bert_config,
    engine_of,
    read_jsonl,
    tiny_bert_base,
    tiny_config,
)
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertForMaskedLM, BertForSequenceClassification

from rtune_ds.artifacts.hf_export import export_hf, tensor_sha256
from rtune_ds.config.load import run_config_from
from rtune_ds.data.blend import Blend
from rtune_ds.errors import ConfigError
from rtune_ds.jobs import pretraining
from rtune_ds.models.loader import (
    checkpoint_files,
    compare_with_parent,
    init_head,
    meta_base_model,
    read_tensors,
)
from rtune_ds.train.objectives import make_objective

POOLER = {"bert.pooler.dense.weight": "pooler.dense.weight",
          "bert.pooler.dense.bias": "pooler.dense.bias"}
MLM_HEAD = {"cls.predictions.bias", "cls.predictions.transform.dense.weight",
            "cls.predictions.transform.dense.bias", "cls.predictions.transform.LayerNorm.weight",
            "cls.predictions.transform.LayerNorm.bias"}


def compared(model_dir):
    return compare_with_parent(meta_base_model(model_dir, "mlm"),
                               checkpoint_files(model_dir, "test"))


def parent_tensors(model_dir, names):
    return read_tensors(checkpoint_files(model_dir, "test"), names)


def test_a_base_checkpoint_carries_its_pooler_under_the_prefix_and_lacks_the_head(cache_dir):
    found = compared(tiny_bert_base(cache_dir))
    assert found.carried == POOLER
    assert set(found.new) == MLM_HEAD  # the decoder is tied to the embeddings: not new
    assert found.recomputed == []


def test_a_released_checkpoints_position_ids_are_recomputed_not_carried(tmp_path, cache_dir):
    """all-MiniLM-L6-v2 stores the `embeddings.position_ids` buffer, which transformers 5 keeps
    out of the state dict and rebuilds: carrying it would be an unexpected key in v1."""
    base = tmp_path / "released"
    shutil.copytree(tiny_bert_base(cache_dir), base)
    names = list(checkpoint_files(base, "test"))
    tensors = parent_tensors(base, names) | {"embeddings.position_ids": torch.arange(128)[None]}
    save_file(tensors, str(base / "model.safetensors"), metadata={"format": "pt"})
    found = compared(base)
    assert found.recomputed == ["embeddings.position_ids"]
    assert found.carried == POOLER


def test_an_exported_version_keeps_its_names_and_needs_no_warmup(tmp_path, cache_dir):
    base = tiny_bert_base(cache_dir)
    v1 = tmp_path / "v1"
    model = BertForMaskedLM.from_pretrained(str(base))
    pooler = {mine: tensor for mine, tensor in
              zip(POOLER, parent_tensors(base, POOLER.values()).values())}
    model.save_pretrained(str(v1), state_dict={**model.state_dict(), **pooler})
    found = compared(v1)
    assert found.carried == {name: name for name in POOLER} and found.new == []
    cfg = run_config_from(bert_config(tmp_path / "run", v1), [], "test", "pretrain")
    assert pretraining.head_warmup_steps_of(cfg, found, "test") == 0
    cfg.model.head_warmup_steps = 5
    with pytest.raises(ConfigError, match="model.head_warmup_steps.*nothing to warm up"):
        pretraining.head_warmup_steps_of(cfg, found, "test")


@pytest.mark.parametrize("max_steps, default", [(3, 1), (16, 2), (300, 30), (5000, 100)])
def test_the_head_warmup_default_is_a_share_of_the_run_when_the_head_is_missing(
        tmp_path, cache_dir, max_steps, default):
    base = tiny_bert_base(cache_dir)
    cfg = run_config_from(bert_config(tmp_path / "run", base), [f"train.max_steps={max_steps}"],
                          "test", "pretrain")
    assert pretraining.head_warmup_steps_of(cfg, compared(base), "test") == default
    cfg.model.head_warmup_steps = 0  # the user's choice: no warm-up
    assert pretraining.head_warmup_steps_of(cfg, compared(base), "test") == 0


@pytest.mark.parametrize("model, key", [
    ({"head_warmup_steps": -1}, "model.head_warmup_steps"),
    ({"head_warmup_lr": 0}, "model.head_warmup_lr"),
    ({"preset": "roberta-1m", "head_warmup_steps": 5}, "model.head_warmup_steps"),
])
def test_bad_head_warmup_keys_are_refused_by_name(tmp_path, model, key):
    cfg = tiny_config(tmp_path / "run", model=model)
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        run_config_from(cfg, [], "test", "pretrain")


def test_a_new_mlm_head_is_initialised_from_the_seed_alone(cache_dir):
    base = tiny_bert_base(cache_dir)
    heads = []
    for seed in (3, 3, 4):
        model = BertForMaskedLM.from_pretrained(str(base))
        init_head(model, sorted(MLM_HEAD), seed)
        heads.append({name: model.get_parameter(name).detach().clone() for name in MLM_HEAD})
    head = heads[0]
    assert torch.equal(head["cls.predictions.transform.LayerNorm.weight"], torch.ones(64))
    assert all(not head[name].any() for name in MLM_HEAD if name.endswith("bias"))
    assert head["cls.predictions.transform.dense.weight"].std().item() == pytest.approx(0.02, 0.1)
    assert all(torch.equal(head[name], heads[1][name]) for name in MLM_HEAD)
    assert not torch.equal(head["cls.predictions.transform.dense.weight"],
                           heads[2]["cls.predictions.transform.dense.weight"])


def test_the_export_carries_the_pooler_bit_for_bit(one_rank, tmp_path, cache_dir):
    base = tiny_bert_base(cache_dir)
    out = tmp_path / "final"
    engine = engine_of(BertForMaskedLM.from_pretrained(str(base)))
    export_hf(engine, AutoTokenizer.from_pretrained(str(base)), out, {"command": "test"}, base)

    parent, child = parent_tensors(base, POOLER.values()), parent_tensors(out, POOLER)
    for mine, theirs in POOLER.items():
        assert child[mine].dtype == parent[theirs].dtype
        assert torch.equal(child[mine], parent[theirs])
    carried = json.loads((out / "lineage.json").read_text())["carried_from_parent"]
    assert carried["copied_unchanged"] is True
    assert {name: row["from"] for name, row in carried["tensors"].items()} == POOLER
    assert all(row["sha256"] == tensor_sha256(parent[POOLER[name]])
               for name, row in carried["tensors"].items())
    clf, info = BertForSequenceClassification.from_pretrained(str(out), num_labels=2,
                                                              output_loading_info=True)
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias"}
    assert torch.equal(clf.bert.pooler.dense.weight, parent["pooler.dense.weight"])


def test_the_head_warmup_trains_the_new_head_alone(one_rank, tmp_path, cache_dir):
    """Through the one loop: the encoder and embeddings stay bit for bit, the head moves, every
    parameter is trainable again after, no checkpoint is written, and a resume skips it."""
    base = tiny_bert_base(cache_dir)
    run_dir = tmp_path / "run"
    cfg = bert_config(run_dir, base, head_warmup_steps=3, head_warmup_lr=3e-2)
    cfg["data"]["cache_dir"] = str(cache_dir / "packed")  # in this process: no RTUNE_CACHE
    cfg = run_config_from(cfg, [], "test", "pretrain")
    p = pretraining.plan(cfg, "test", None)
    tokenizer, data = pretraining.load_inputs(p)
    model = pretraining.build_model(p, tokenizer)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    objective = make_objective("mlm", tokenizer, cfg.seed, cfg.model.mlm_probability)
    source = Blend(data.names, data.train_blocks, data.phases, None, cfg.seed, objective.batch)
    result = pretraining.warm_up_head(p, model, source, run_dir)

    assert result.finished and result.step == 3
    moved = {name for name, param in model.named_parameters()
             if not torch.equal(param.detach(), before[name])}
    assert moved == MLM_HEAD
    assert all(param.requires_grad for param in model.parameters())
    log = read_jsonl(run_dir / "head_warmup" / "metrics.jsonl")
    assert [row["step"] for row in log] == [1, 2, 3]
    assert all(row["train/lr"] == pytest.approx(3e-2) for row in log)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "head_warmup" /
                                                             "checkpoints").exists()
    assert sum(source.state_dict()["cursors"]) == 3 * p.ds_config["train_batch_size"]
    assert pretraining.warm_up_head(dataclasses.replace(p, resume_tag="step_00000004"), model,
                                    source, run_dir) is None


@pytest.mark.slow
def test_continual_mlm_of_a_bert_checkpoint_at_two_ranks_under_zero3(bert_v1, cache_dir):
    """v0 as released (BertModel) -> v1 by `rtune pretrain` (MLM, 2 ranks, ZeRO-3), stopped once
    and resumed: the pooler comes through bit for bit, a classifier on v1 misses only its own
    head, the new MLM head is warmed up once (not again on resume) and the MLM loss then starts
    below ln(vocab)."""
    v0 = tiny_bert_base(cache_dir)
    run_dir, warmup_log = bert_v1
    assert (run_dir / "head_warmup" / "metrics.jsonl").read_text() == warmup_log  # not rerun

    v1 = run_dir / "final"
    parent, child = parent_tensors(v0, POOLER.values()), parent_tensors(v1, POOLER)
    for mine, theirs in POOLER.items():
        assert child[mine].dtype == parent[theirs].dtype
        assert torch.equal(child[mine], parent[theirs])
    clf, info = BertForSequenceClassification.from_pretrained(str(v1), num_labels=2,
                                                              output_loading_info=True)
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias"}

    lineage = json.loads((v1 / "lineage.json").read_text())
    carried = lineage["carried_from_parent"]
    assert {name: row["from"] for name, row in carried["tensors"].items()} == POOLER
    assert carried["copied_unchanged"] is True
    head = lineage["new_head"]
    assert set(head["initialised"]) == MLM_HEAD
    assert head["warmup_steps"] == 20 and head["warmup_lr"] == pytest.approx(3e-2)
    assert lineage["steps"] == 6
    with safe_open(str(v1 / "model.safetensors"), "pt") as fh:
        assert "cls.predictions.transform.dense.weight" in set(fh.keys())

    warmup = [row for row in map(json.loads, warmup_log.splitlines()) if "train/loss" in row]
    assert [row["step"] for row in warmup] == list(range(1, 21))
    assert head["warmup_loss"] == {"first": warmup[0]["train/loss"],
                                   "last": warmup[-1]["train/loss"]}
    ln_vocab = math.log(len(AutoTokenizer.from_pretrained(str(v0))))
    evals = [row for row in read_jsonl(run_dir / "metrics.jsonl") if "eval/loss" in row]
    assert evals[0]["step"] == 0 and evals[0]["eval/loss"] < ln_vocab - 0.1
