"""The platform team's case at toy size, on 2 real ranks under ZeRO-3: a decoder LLM shipped as
GGUF (tiny, saved as SmolLM2 is: tied embeddings, GQA, pad = eos, a chat template) imported, a
LoRA classifier tuned on it, the base continually pretrained with CLM, the adapter's compat on the
new base with the label-free score, label-free init+distill with no labeled file at all (on
inputs the old base generated: no label read, alpha 1, the last weights kept), and recycle-all on
a library whose bundle has no labeled dev set (judged and re-tuned label-free). And a GPT-2-style
tokenizer without a pad token, tuned and recycled (1 rank)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import (
    FIXTURES,
    check,
    finetune_config,
    read_jsonl,
    rtune,
    rtune_in_process,
    rtune_many,
    summary,
    train_losses,
    write_config,
)
from tiny_llm import smollm_like, write_gguf
from transformers import AutoModelForCausalLM

from rtune_ds.data.corpus import content_hash
from rtune_ds.files import sha256_file

pytestmark = pytest.mark.slow

UNLABELED = FIXTURES / "cls_train.jsonl"  # read as texts only: its labels are never read


def recycle_job(root: Path, name: str, bundle: Path, base: Path, method: str,
                extra: tuple = (), labeled: tuple = ("train", "dev", "test")) -> list[str]:
    """The argv of `rtune recycle` with a config whose task names only the `labeled` files."""
    cfg = finetune_config(root / name, base, "full", train={"max_steps": 12, "eval_every": 6})
    cfg["task"] = {k: v for k, v in cfg["task"].items()
                   if k not in ("train", "dev", "test") or k in labeled}
    return ["recycle", "--config", str(write_config(root / f"{name}.yaml", cfg)), "--ds-config",
            "ds_configs/zero3.json", "--method", method, "--bundle", str(bundle), "--base",
            str(base), *extra]


@pytest.fixture(scope="module")
def llm(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """The whole chain; each stage's directory by name."""
    root = tmp_path_factory.mktemp("llm")
    gguf = write_gguf(smollm_like(root / "released"), root / "gguf" / "tiny.gguf")
    check(rtune_in_process(["models", "import-gguf", str(gguf), "--out", str(root / "v0")],
                           cache_dir))
    # bf16 under ZeRO-3: the adapter's parameters, added after zero.Init, must take the base's
    # dtype (DeepSpeed flattens a group into one buffer); pinned for that, not for speed
    lora = finetune_config(root / "lora", root / "v0", "lora",
                           train={"max_steps": 12, "eval_every": 12, "precision": "bf16"})
    cpt = {"run_dir": str(root / "cpt"), "seed": 3, "model": {"path": str(root / "v0")},
           "data": {"train": [str(FIXTURES / "computing.jsonl")], "seq_len": 32,
                    "eval_fraction": 0.1},
           "train": {"max_steps": 8, "micro_batch_size": 4, "grad_accum": 2, "lr": 3e-3,
                     "eval_every": 4, "eval_max_blocks": 32, "precision": "fp32"}}
    bundle, v1 = root / "lora" / "final", root / "cpt" / "final"
    # label-free inputs the old base writes from a few task texts (their labels never read)
    few = root / "few.jsonl"
    few.write_text("".join(UNLABELED.read_text().splitlines(keepends=True)[:6]))
    generated = root / "generated.jsonl"
    check(rtune_in_process(["generate-inputs", "--base", str(root / "v0"), "--examples", str(few),
                            "--n", "12", "--max-new-tokens", "12", "--out", str(generated)],
                           cache_dir))
    # a library whose bundle no longer has its labeled dev set (only the test file is left)
    (root / "library").mkdir()
    (root / "library" / "lora").symlink_to(bundle)
    test_only = write_config(root / "test_only.yaml", {"task": {
        "type": "classification", "test": str(FIXTURES / "cls_test.jsonl"), "max_len": 32},
        "train": {"micro_batch_size": 8, "global_batch_size": 32, "lr": 2e-2,
                  "precision": "fp32"}})
    rtune_many([
        ["finetune", "--config", str(write_config(root / "lora.yaml", lora)), "--ds-config",
         "ds_configs/zero3.json"],
        ["pretrain", "--config", str(write_config(root / "cpt.yaml", cpt)), "--ds-config",
         "ds_configs/zero3.json"],
        recycle_job(root, "compat", bundle, v1, "compat", ("--unlabeled", str(UNLABELED))),
        recycle_job(root, "label_free", bundle, v1, "init+distill",
                    ("--unlabeled", str(generated)), labeled=("test",)),
        ["recycle-all", "--bundles", str(root / "library"), "--base", str(v1), "--config",
         str(test_only), "--ds-config", "ds_configs/zero3.json", "--unlabeled", str(UNLABELED),
         "--agree-at", "1", "--out", str(root / "recycle_all"), "--then", "tune",
         "train.max_steps=4"],
    ], cache_dir)
    return {"root": root, "gguf": gguf, "v0": root / "v0", "lora": root / "lora",
            "cpt": root / "cpt", "v1": v1, "compat": root / "compat", "generated": generated,
            "label_free": root / "label_free", "recycle_all": root / "recycle_all"}


def test_the_imported_llm_is_tuned_with_lora_and_pretrained_with_clm(llm):
    lineage = json.loads((llm["v0"] / "lineage.json").read_text())
    assert lineage["gguf"]["sha256"] == sha256_file(llm["gguf"])
    losses = train_losses(llm["lora"])
    assert losses[max(losses)] < losses[min(losses)]
    bundle = json.loads((llm["lora"] / "final" / "lineage.json").read_text())
    assert bundle["method"] == "lora" and bundle["pad"]["token"] == "<|im_end|>"
    assert (summary(llm["lora"])["zero_stage"], summary(llm["lora"])["precision"]) == (3, "bf16")
    evals = [m["eval/loss"] for m in read_jsonl(llm["cpt"] / "metrics.jsonl") if "eval/loss" in m]
    assert evals[-1] < evals[0]  # CLM on the computing domain
    v1 = json.loads((llm["v1"] / "config.json").read_text())
    assert v1["tie_word_embeddings"] and v1["num_key_value_heads"] == 2


def test_compat_on_the_new_base_has_the_label_free_score(llm):
    compat = json.loads((llm["compat"] / "compat.json").read_text())
    free = compat["label_free"]
    assert free["predictions"] == len(UNLABELED.read_text().splitlines())
    assert 0 < free["agreement"] <= 1 and free["mean_kl"] > 0  # v1 moved: not the old model
    assert free["decision"] in ("keep", "init+distill") and "unlabeled inputs" in free["evidence"]
    assert free["inputs"]["sha256"] and set(compat["dev"]) >= {"accuracy", "loss"}


def test_label_free_init_distill_on_generated_inputs_reads_no_label_file(llm):
    run = llm["label_free"]
    lineage = json.loads((run / "final" / "lineage.json").read_text())
    free = lineage["recycled"]["label_free"]
    assert free["alpha"] == 1.0 and free["inputs"]["path"] == str(llm["generated"].resolve())
    assert free["inputs"]["sha256"] == content_hash(str(llm["generated"]))
    assert [d["split"] for d in lineage["data"]] == ["train", "test"]  # no train or dev labels
    assert lineage["data"][0]["examples"] == len(llm["generated"].read_text().splitlines())
    assert lineage["recycled"]["method"] == "init+distill"
    kl = [m["kd/kl"] for m in read_jsonl(run / "metrics.jsonl") if "kd/kl" in m]
    assert kl[-1] < kl[0]
    assert all(m["kd/ce"] == 0 for m in read_jsonl(run / "metrics.jsonl") if "kd/ce" in m)
    s = summary(run)
    assert s["best_step"] is None and s["step"] == 12  # no labels chose the weights kept
    assert "dev" not in s["metrics"] and 0 <= s["metrics"]["test"]["eval/accuracy"] <= 1
    assert not [m for m in read_jsonl(run / "metrics.jsonl") if "eval/accuracy" in m]
    teacher = json.loads((run / "teacher.json").read_text())
    assert teacher["cache"]["status"] in ("built", "hit")


def test_recycle_all_judges_a_bundle_without_dev_labels_as_its_own_compat_launch(llm):
    """The library's label-free score is the one `rtune recycle --method compat --unlabeled`
    gives the same bundle on the same base; its decision follows --agree-at, and the queue
    re-tunes it label-free."""
    report = json.loads((llm["recycle_all"] / "recycle_all.json").read_text())
    [row] = report["bundles"]
    alone = json.loads((llm["compat"] / "compat.json").read_text())["label_free"]
    assert row["status"] == "scored" and row["label_free"] and row["compat_dev"] is None
    assert row["old_dev"] == json.loads((llm["lora"] / "summary.json").read_text())[
        "metrics"]["dev"]["eval/accuracy"]  # the bundle's own record, from v0
    assert row["agreement"] == alone["agreement"]
    assert row["mean_kl"] == pytest.approx(alone["mean_kl"], rel=1e-4)
    assert row["decision"] == ("keep" if alone["agreement"] >= 1 else "init+distill")
    assert row["evidence"].startswith("no labeled dev set: agrees with the old model")
    assert row["compat_test"] is not None and report["unlabeled"]["sha256"]
    if row["decision"] == "init+distill":
        [tuned] = report["tuned"]
        assert tuned["status"] == "tuned" and tuned["steps"] == 4 and tuned["recycled_dev"] is None
        assert tuned["recycled_test"] is not None
        lineage = json.loads((Path(tuned["bundle_out"]) / "lineage.json").read_text())
        assert lineage["recycled"]["label_free"]["alpha"] == 1.0
    assert "| agreement |" in (llm["recycle_all"] / "recycle_all.md").read_text()


def moved(base: Path, out: Path) -> Path:
    """`base` with its weights moved a little (seeded) and its tokenizer files as they are."""
    torch.manual_seed(11)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(str(out))
    for file in base.glob("*token*"):
        shutil.copy(file, out)
    return out


def test_a_gpt2_style_tokenizer_without_pad_is_tuned_and_recycled(tmp_path, cache_dir):
    v0 = smollm_like(tmp_path / "v0", pad=False)
    ft = finetune_config(tmp_path / "ft", v0, "lora", train={"max_steps": 20, "eval_every": 10})
    check(rtune(["finetune", "--config", str(write_config(tmp_path / "ft.yaml", ft))], cache_dir))
    lineage = json.loads((tmp_path / "ft" / "final" / "lineage.json").read_text())
    assert lineage["pad"] == {"token": "<|im_end|>", "id": 2,
                              "source": "eos: the tokenizer has no pad token"}
    v1 = moved(v0, tmp_path / "v1")
    args = recycle_job(tmp_path, "init", tmp_path / "ft" / "final", v1, "init")
    args[args.index("ds_configs/zero3.json")] = "ds_configs/zero0.json"
    check(rtune(args, cache_dir))
    recycled = json.loads((tmp_path / "init" / "final" / "lineage.json").read_text())
    assert recycled["pad"]["source"] == "eos: the tokenizer has no pad token"
    assert recycled["recycled"]["method"] == "init"
    assert recycled["recycled"]["bundle"]["path"] == str((tmp_path / "ft" / "final").resolve())
    evals = [m for m in read_jsonl(tmp_path / "init" / "metrics.jsonl") if "eval/accuracy" in m]
    assert evals[0]["step"] == 0 and len(evals) == 3  # from the mapped bundle, every 6 steps
