"""A real-style checkpoint end to end on 2 ranks under ZeRO-3: a BERT saved as `BertModel` (a
pooler, no MLM head) with a WordPiece tokenizer without EOS goes through continual pretraining
(MLM) -> fine-tuning (full and LoRA) -> compat -> init+distill. v1 keeps the pooler bit for bit,
and when v1 = v0 (continual pretraining at an LR too small to move an fp32 weight) the LoRA
bundle's compat on v1 is its score on v0."""
import json

import pytest
import torch
from conftest import (
    FIXTURES,
    finetune_config,
    rtune_many,
    tiny_bert_base,
    tiny_config,
    write_config,
)
from safetensors import safe_open

pytestmark = pytest.mark.slow

ZERO3 = ["--ds-config", "ds_configs/zero3.json"]


def tensors(model_dir, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors under `prefix` (after any 'bert.' a task or MLM class adds), by their short name."""
    out = {}
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        for key in f.keys():
            short = key.removeprefix("bert.")
            if short.startswith(prefix):
                out[short] = f.get_tensor(key)
    return out


@pytest.fixture(scope="module")
def chain(tmp_path_factory, cache_dir, bert_v1):
    """v1 (the session's BERT continual pretraining, bert_v1), and in one 2-rank ZeRO-3 launch:
    v1_same (v0 continually pretrained at an LR too small to move an fp32 weight), the full and
    LoRA bundles tuned on v0, and every recycling the tests read: run name -> run dir."""
    root = tmp_path_factory.mktemp("bert_chain")
    v0, v1 = tiny_bert_base(cache_dir), bert_v1[0] / "final"
    same = tiny_config(root / "v1_same", train={"max_steps": 1, "eval_every": 0, "lr": 1e-12,
                                                "warmup_steps": 0})
    same["model"] = {"path": str(v0), "objective": "mlm"}
    same["data"]["train"] = [str(FIXTURES / "computing.jsonl")]
    jobs = [["pretrain", "--config", str(write_config(root / "v1_same.yaml", same)), *ZERO3]]
    for method in ("full", "lora"):
        cfg = finetune_config(root / f"ft_{method}", v0, method,
                              train={"max_steps": 20, "eval_every": 10})
        jobs.append(["finetune", "--config", str(write_config(root / f"ft_{method}.yaml", cfg)),
                     *ZERO3])
    bundle = {m: root / f"ft_{m}" / "final" for m in ("full", "lora")}
    for name, method, tuned, base, *extra in (
            ("compat_same", "compat", "lora", root / "v1_same" / "final"),
            ("compat_v0", "compat", "lora", v0, "--force-same-base"),
            ("compat_full", "compat", "full", v1), ("compat_lora", "compat", "lora", v1),
            ("init_distill", "init+distill", "full", v1)):
        cfg = finetune_config(root / name, base, "full", train={"max_steps": 10, "eval_every": 5})
        jobs.append(["recycle", "--config", str(write_config(root / f"{name}.yaml", cfg)),
                     *ZERO3, "--method", method, "--bundle", str(bundle[tuned]), "--base",
                     str(base), *extra])
    rtune_many(jobs, cache_dir)
    return {"root": root, "v0": v0, "v1": v1}


def test_v1_carries_the_pooler_bit_for_bit_and_says_so(chain):
    v0, v1 = chain["v0"], chain["v1"]
    before, after = tensors(v0, "pooler."), tensors(v1, "pooler.")
    assert before and before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # training did move the encoder
    assert not torch.equal(tensors(v0, "encoder.layer.0.attention.self.query.weight")[
        "encoder.layer.0.attention.self.query.weight"],
        tensors(v1, "encoder.layer.0.attention.self.query.weight")[
        "encoder.layer.0.attention.self.query.weight"])
    lineage = json.dumps(json.loads((v1 / "lineage.json").read_text()))
    assert "pooler.dense.weight" in lineage


def test_lora_compat_on_an_unchanged_v1_is_its_score_on_v0(chain):
    a, b = (json.loads((chain["root"] / run / "compat.json").read_text())
            for run in ("compat_same", "compat_v0"))
    assert a["dev"]["accuracy"] == b["dev"]["accuracy"]
    assert a["dev"]["loss"] == pytest.approx(b["dev"]["loss"], abs=1e-5)
    # and it is the bundle's own best-dev score, not a random pooler's majority baseline
    assert a["dev"]["accuracy"] == pytest.approx(a["old_metrics"]["dev"]["eval/accuracy"])


def test_full_and_lora_bundles_recycle_onto_the_continually_pretrained_v1(chain):
    for method in ("full", "lora"):
        result = json.loads((chain["root"] / f"compat_{method}" / "compat.json").read_text())
        assert 0 <= result["dev"]["accuracy"] <= 1 and result["mapping"]["mapped"]
    run = chain["root"] / "init_distill"
    summary = json.loads((run / "summary.json").read_text())
    assert len(set(summary["rank_weight_digests"])) == 1  # the ranks agree
    teacher = json.loads((run / "teacher.json").read_text())
    assert teacher["weights_digest_before"] == teacher["weights_digest_after"]
    assert (run / "final" / "bundle.json").is_file()
