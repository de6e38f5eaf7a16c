"""rtune recycle-all on real ranks: a library on one loaded base scores every bundle exactly as a
separate `rtune recycle --method compat` launch does (ZeRO-2 and ZeRO-3, 2 ranks, bundles of two
label sets and three kinds) and leaves the base's weights as they were; corrupt and foreign
bundles are refused by name and the rest scored; `--then tune` killed with SIGKILL resumes with
the unfinished bundles only and ends with the table of an uninterrupted run; a bundle recycled
twice (v0 -> v1 -> v2) traces both hops with `rtune lineage`."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import (
    FIXTURES,
    REPO,
    base_env,
    check,
    derived_base,
    finetune_config,
    recycle,
    rtune,
    rtune_many,
    tiny_bert_base,
    write_config,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(recycle_env):
    """recycle_env plus an IA3 bundle for a two-label task (tuned on v0), and a library directory
    of the three kinds: full (4 labels), lora (4 labels), ia3 (2 labels)."""
    root, bases, bundles, cache = recycle_env
    two = root / "two_labels"
    two.mkdir(exist_ok=True)
    for split in ("train", "dev", "test"):
        rows = [json.loads(line) for line in (FIXTURES / f"cls_{split}.jsonl").read_text().splitlines()]
        keep = sorted({r["label"] for r in rows})[:2]
        (two / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows
                                                    if r["label"] in keep))
    if not (root / "ft_ia3" / "final").is_dir():
        cfg = finetune_config(root / "ft_ia3", bases["v0"], "ia3",
                              train={"max_steps": 20, "eval_every": 10})
        cfg["task"].update({s: str(two / f"{s}.jsonl") for s in ("train", "dev", "test")})
        check(rtune(["finetune", "--config", str(write_config(root / "ft_ia3.yaml", cfg))], cache))
    shelf = root / "library"
    if not shelf.is_dir():
        for name, path in (("full", bundles["full"]), ("lora", bundles["lora"]),
                           ("ia3", root / "ft_ia3" / "final")):
            shutil.copytree(path, shelf / name)
    return root, bases, shelf, cache


def separate_compat(env, name: str) -> dict:
    """`rtune recycle --method compat` of one library bundle on v1, 1 rank, with the config the
    bundle records (what recycle-all uses without --config); made once."""
    root, bases, shelf, cache = env
    run_dir = root / "separate" / name
    if not (run_dir / "compat.json").is_file():
        config = json.loads((shelf / name / "lineage.json").read_text())["config"]
        config["run_dir"] = str(run_dir)
        (root / "separate").mkdir(exist_ok=True)
        job = write_config(root / "separate" / f"{name}.yaml", config)
        check(rtune(["recycle", "--config", str(job), "--method", "compat", "--bundle",
                     str(shelf / name), "--base", str(bases["v1"])], cache))
    return json.loads((run_dir / "compat.json").read_text())


@pytest.fixture(scope="module")
def on_two_ranks(env):
    """The library through recycle-all on 2 ranks under ZeRO-2 and ZeRO-3 (root/all_<ds>), in
    one launch."""
    root, bases, shelf, cache = env
    rtune_many([["recycle-all", "--bundles", str(shelf), "--base", str(bases["v1"]), "--out",
                 str(root / f"all_{ds}"), "--ds-config", f"ds_configs/{ds}.json"]
                for ds in ("zero2", "zero3")], cache)


@pytest.mark.parametrize("ds", ["zero2", "zero3"])
def test_a_library_on_one_base_scores_as_separate_launches_and_restores_the_base(env, on_two_ranks,
                                                                               ds):
    root, bases, shelf, cache = env
    out = root / f"all_{ds}"
    report = json.loads((out / "recycle_all.json").read_text())
    assert report["world_size"] == 2 and report["zero_stage"] == int(ds[-1])
    for name in ("full", "lora", "ia3"):
        got = json.loads((out / "compat" / name / "compat.json").read_text())
        want = separate_compat(env, name)
        for split in ("dev", "test"):
            assert got[split]["accuracy"] == want[split]["accuracy"], (name, split)
            assert got[split]["loss"] == pytest.approx(want[split]["loss"], abs=1e-5), (name, split)
    # peft holds one adapter type per model: the delta rides with the first adapter type's load
    loads = report["library"]["loads"]
    assert sorted(load["adapter_type"] for load in loads) == ["ia3", "lora"]
    assert sum(load["bundles"] for load in loads) == 3
    assert all(load["digest_before"] == load["digest_after"] for load in loads)
    assert {load["adapter_type"]: load["label_rows"] for load in loads} == {"ia3": 4, "lora": 4}
    rows = {r["bundle"]: r for r in report["bundles"]}
    assert len(rows["ia3"]["labels"]) == 2 and len(rows["full"]["labels"]) == 4
    for r in rows.values():
        assert r["decision"] in ("keep", "init", "init+distill") and r["evidence"]
        assert r["compat_dev"] == json.loads(
            (out / "compat" / r["bundle"] / "compat.json").read_text())["dev"]["accuracy"]
    assert "| 1 |" in (out / "recycle_all.md").read_text()


def plain_peft_adapter(root, v0):
    """A LoRA classifier adapter saved by peft itself (no rtune metadata, no labels)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = root / "plain_adapter_lib"
    if not out.is_dir():
        tok = AutoTokenizer.from_pretrained(str(v0))
        model = AutoModelForSequenceClassification.from_pretrained(
            str(v0), num_labels=4, pad_token_id=tok.pad_token_id, dtype=torch.float32)
        torch.manual_seed(5)
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, task_type="SEQ_CLS",
                                                      target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():
            for p in peft_model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.05)
        peft_model.save_pretrained(str(out))
    return out


def test_corrupt_and_foreign_bundles_are_refused_by_name_and_the_rest_scored(env, cache_dir):
    root, bases, shelf, cache = env
    bert = root / "ft_bert"
    if not (bert / "final").is_dir():
        cfg = finetune_config(bert, tiny_bert_base(cache_dir), "full",
                              train={"max_steps": 4, "eval_every": 0})
        check(rtune(["finetune", "--config", str(write_config(root / "ft_bert.yaml", cfg))], cache))
    mixed = root / "mixed_library"
    shutil.copytree(shelf / "full", mixed / "full")
    shutil.copytree(shelf / "full", mixed / "corrupt")
    delta = mixed / "corrupt" / "delta.safetensors"
    delta.write_bytes(delta.read_bytes()[: delta.stat().st_size // 2])  # truncated
    shutil.copytree(bert / "final", mixed / "bert")
    shutil.copytree(plain_peft_adapter(root, bases["v0"]), mixed / "plain")
    task = write_config(root / "mixed_task.yaml", finetune_config(root / "unused", bases["v1"]))
    check(rtune(["recycle-all", "--bundles", str(mixed), "--base", str(bases["v1"]), "--config",
                 str(task), "--out", str(root / "mixed_out")], cache))
    rows = {r["bundle"]: r for r in
            json.loads((root / "mixed_out" / "recycle_all.json").read_text())["bundles"]}
    assert rows["corrupt"]["status"] == "refused"
    assert "corrupt/delta.safetensors" in rows["corrupt"]["reason"]
    assert "not a safetensors file" in rows["corrupt"]["reason"]
    assert rows["bert"]["status"] == "refused"
    assert "cannot be mapped" in rows["bert"]["reason"] and "bert." in rows["bert"]["reason"]
    assert rows["full"]["status"] == rows["plain"]["status"] == "scored"
    assert rows["plain"]["kind"] == "peft" and rows["plain"]["old_dev"] is None
    assert rows["plain"]["decision"] == "init" and "no old score" in rows["plain"]["evidence"]
    assert rows["full"]["compat_dev"] == separate_compat(env, "full")["dev"]["accuracy"]
    assert not (root / "mixed_out" / "compat" / "corrupt").exists()  # refused before any output
    md = (root / "mixed_out" / "recycle_all.md").read_text()
    assert "| corrupt | refused |" in md and "| bert | refused |" in md


def tune_table(out) -> list[dict]:
    return [{k: t[k] for k in ("bundle", "method", "old_dev", "compat_dev", "recycled_dev",
                               "recycled_test", "steps", "best_step")}
            for t in json.loads((out / "recycle_all.json").read_text())["tuned"]]


def test_then_tune_killed_resumes_with_the_unfinished_bundles_only(env):
    root, bases, shelf, cache = env
    queue = root / "queue_library"
    for name in ("lora", "ia3"):  # both need re-tuning (compat keeps < 90% of their gain)
        shutil.copytree(shelf / name, queue / name, dirs_exist_ok=True)
    args = ["recycle-all", "--bundles", str(queue), "--base", str(bases["v1"]), "--then", "tune"]
    check(rtune([*args, "--out", str(root / "tune_whole")], cache))
    whole = tune_table(root / "tune_whole")
    assert [t["method"] for t in whole] == ["init", "init"] and len(whole) == 2

    out = root / "tune_killed"
    proc = subprocess.Popen([sys.executable, "-m", "rtune_ds", *args, "--out", str(out)],
                            cwd=REPO, env=base_env(cache), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "tune" / whole[0]["bundle"]
    deadline = time.time() + 300
    while not (first / "summary.json").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (first / "summary.json").is_file(), "the first bundle finished before the kill"
    assert not (out / "recycle_all.json").exists()
    finished_at = (first / "final" / "bundle.json").stat().st_mtime_ns

    check(rtune([*args, "--out", str(out)], cache))
    tuned = json.loads((out / "recycle_all.json").read_text())["tuned"]
    assert [t["status"] for t in tuned] == ["finished earlier", "tuned"]
    assert (first / "final" / "bundle.json").stat().st_mtime_ns == finished_at
    assert tune_table(out) == whole
    md = (out / "recycle_all.md").read_text()
    assert "## Re-tuned (--then tune)" in md and "finished earlier" in md


def test_a_bundle_recycled_twice_traces_both_hops(env, cache_dir):
    root, bases, shelf, cache = env

    def moved_again(model):
        torch.manual_seed(13)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        return model

    v2 = derived_base(cache_dir, "v2", moved_again)
    b0 = shelf / "full"
    check(recycle((root, bases, None, cache), "hop1", b0, bases["v1"], method="init"))
    b1 = root / "hop1" / "final"
    check(recycle((root, bases, None, cache), "hop2", b1, v2, method="init"))
    proc = check(rtune(["lineage", str(root / "hop2"), "--json"], cache))
    tree = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert tree["kind"] == "bundle" and tree["method"] == "init"
    base2, hop1 = tree["parents"]
    assert (base2["role"], base2["path"]) == ("base", str(v2.resolve()))
    assert (hop1["role"], hop1["path"]) == ("recycled from", str(b1.resolve()))
    base1, hop0 = hop1["parents"]
    assert base1["path"] == str(bases["v1"].resolve())
    assert hop0["path"] == str(b0.resolve()) and hop0["parents"][0]["path"] == str(
        bases["v0"].resolve())
    for node in (base2, hop1, base1, hop0, hop0["parents"][0]):
        assert node["recorded_fingerprint"] and node["changed"] is False, node["path"]
    text = check(rtune(["lineage", str(root / "hop2")], cache)).stdout
    assert text.count("recycled from: bundle") == 2 and "fingerprint matches" in text
    # the chain's middle bundle changed after it was recycled: the tree says so
    meta = b1 / "bundle.json"
    meta.write_text(meta.read_text().replace('"metrics"', '"metrics" ', 1))
    text = check(rtune(["lineage", str(root / "hop2")], cache)).stdout
    assert "CHANGED since recorded" in text
    # v0 -> v2 directly and v1 -> v2 both recycle
    two_hops = root / "to_v2"
    shutil.copytree(b0, two_hops / "from_v0")
    shutil.copytree(b1, two_hops / "from_v1")
    check(rtune(["recycle-all", "--bundles", str(two_hops), "--base", str(v2), "--out",
                 str(root / "to_v2_out")], cache))
    rows = json.loads((root / "to_v2_out" / "recycle_all.json").read_text())["bundles"]
    assert sorted((r["bundle"], r["status"]) for r in rows) == [("from_v0", "scored"),
                                                                ("from_v1", "scored")]
