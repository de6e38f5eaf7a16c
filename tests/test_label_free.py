"""Label-free recycling, in-process: the loss is the KL to the old model alone and reads no label,
the unlabeled inputs replace the train split (a .txt or a table, their labels never read), the
label-free compat score (agreement and KL with the old model) against a hand computation, the
keep / re-tune advice it gives, and the refusals that name the key."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import FIXTURES, finetune_config, rtune_in_process, write_config
from test_guards import ToyLM, expected_terms, kl_by_hand, make_batch
from tiny_llm import smollm_like

from rtune_ds.config.load import run_config_from
from rtune_ds.config.schema import DistillConfig, TaskConfig
from rtune_ds.data.examples import Examples, load_task
from rtune_ds.data.tokenizer import load_tokenizer
from rtune_ds.errors import ConfigError
from rtune_ds.jobs.pairs import adopt_task
from rtune_ds.jobs.recycling import bundle_job_config
from rtune_ds.recipes.recycle_all import rank
from rtune_ds.recycling.advice import label_free_advice
from rtune_ds.train.distill import Distiller
from rtune_ds.train.inference import agreement
from rtune_ds.train.objectives import IGNORE


@pytest.mark.parametrize("task_type", ["classification", "lm"])
def test_label_free_loss_is_the_kl_alone_and_reads_no_label(task_type):
    out = 3 if task_type == "classification" else None
    student, teacher = ToyLM(1, out=out), ToyLM(2, out=out)
    batch = make_batch(task_type, 5)
    _, kl, _ = expected_terms(student, teacher, batch, task_type, 5.0)
    if task_type == "classification":
        batch["labels"] = torch.full_like(batch["labels"], IGNORE)  # as unlabeled inputs have
    loss = Distiller(teacher, DistillConfig(alpha=1.0, temperature=5.0), task_type, [])(
        student, batch)
    assert loss.item() == pytest.approx(kl, rel=1e-5) and loss.item() > 0
    if task_type == "classification":  # a loss with a CE term would read the missing labels
        mixed = Distiller(teacher, DistillConfig(alpha=0.7, temperature=5.0), task_type, [])
        assert torch.isnan(mixed(student, batch))


@pytest.mark.parametrize("task_type", ["classification", "lm"])
def test_agreement_and_kl_with_the_old_model_against_a_hand_computation(task_type):
    out = 3 if task_type == "classification" else None
    old, other = ToyLM(2, out=out), ToyLM(7, out=out)
    batch = make_batch(task_type, 6)
    examples = Examples(batch["input_ids"], batch["attention_mask"], batch["labels"])
    # one forward of all rows: the toy pools over padding too, so a row's logits depend on its
    # batch's width
    same = agreement(old, old, examples, 3, out)
    assert same["agreement"] == 1.0 and same["mean_kl"] == pytest.approx(0.0, abs=1e-7)
    score = agreement(old, other, examples, 3, out)
    t = old(batch["input_ids"], batch["attention_mask"]).logits
    s = other(batch["input_ids"], batch["attention_mask"]).logits
    if task_type == "classification":
        pairs = [(s[b], t[b]) for b in range(len(t))]
    else:
        pairs = [(s[b, i], t[b, i]) for b in range(t.shape[0]) for i in range(t.shape[1] - 1)
                 if batch["labels"][b, i + 1] != IGNORE]
    assert score["predictions"] == len(pairs)
    assert score["agreement"] == pytest.approx(
        sum(int(sl.argmax() == tl.argmax()) for sl, tl in pairs) / len(pairs))
    assert score["mean_kl"] == pytest.approx(
        sum(kl_by_hand(sl, tl, 1.0).item() for sl, tl in pairs) / len(pairs), rel=1e-5)
    assert score["agreement"] < 1 and score["mean_kl"] > 0


@pytest.mark.parametrize("agreed, decision", [(0.95, "keep"), (0.9, "keep"),
                                              (0.89, "init+distill"), (0.2, "init+distill")])
def test_label_free_advice_flips_at_its_threshold(agreed, decision):
    advice = label_free_advice(agreed)
    assert advice["decision"] == decision and f"{agreed:.3f}" in advice["evidence"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(smollm_like(tmp_path_factory.mktemp("tok")))


def test_unlabeled_inputs_replace_the_train_split_and_their_labels_are_never_read(tokenizer,
                                                                                  tmp_path):
    texts = tmp_path / "inputs.txt"
    texts.write_text("a compiler\n\n  \nthe old kernel\nmachine code\n")
    task = TaskConfig(train=str(tmp_path / "never_read.jsonl"), dev=str(FIXTURES / "cls_dev.jsonl"),
                      labels=["animal", "food", "place", "tool"])
    for path, rows in ((texts, 3), (FIXTURES / "cls_train.jsonl", None)):
        data = load_task(task, tokenizer, 0, "job.yaml", str(path))
        train = data.splits["train"]
        want = rows or len((FIXTURES / "cls_train.jsonl").read_text().splitlines())
        assert len(train) == want and data.files["train"] == str(path)
        assert (train.labels == IGNORE).all() and data.sizes["dev"] > 0
    lm = load_task(TaskConfig(type="lm", dev=str(FIXTURES / "sft_dev.jsonl")), tokenizer, 0,
                   "job.yaml", str(texts)).splits["train"]
    for row, n in enumerate(lm.lengths.tolist()):  # every token after the BOS is a target
        assert lm.labels[row, 0] == IGNORE and (lm.labels[row, 1:n] != IGNORE).all()
        assert (lm.labels[row, n:] == IGNORE).all()
    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ConfigError, match=r"no_text.jsonl: no 'text' column"):
        load_task(task, tokenizer, 0, "job.yaml", str(no_text))


def test_label_free_needs_no_labeled_file_but_its_inputs(tmp_path):
    base = smollm_like(tmp_path / "base")
    unlabeled = f"distill.unlabeled={FIXTURES / 'cls_train.jsonl'}"

    def job(**task) -> dict:
        return {"run_dir": str(tmp_path / "run"), "model": {"path": str(base)},
                "task": {k: str(FIXTURES / v) for k, v in task.items()}}

    with pytest.raises(ConfigError, match=r"key 'task.train': is required .*distill.unlabeled"):
        run_config_from(job(dev="cls_dev.jsonl"), [], "job.yaml", "finetune")
    with pytest.raises(ConfigError, match=r"key 'task.dev': is required .*distill.unlabeled"):
        run_config_from(job(train="cls_train.jsonl"), [], "job.yaml", "finetune")
    cfg = run_config_from(job(dev="cls_dev.jsonl"), [unlabeled], "job.yaml", "finetune")
    assert cfg.task.train is None and cfg.task.dev
    cfg = run_config_from(job(), [unlabeled], "job.yaml", "finetune")
    assert (cfg.task.train, cfg.task.dev, cfg.task.test) == (None, None, None)
    with pytest.raises(ConfigError, match=r"key 'distill.unlabeled': file of unlabeled inputs "
                                          r"not found: .*missing.txt"):
        run_config_from(job(), [f"distill.unlabeled={tmp_path / 'missing.txt'}"], "job.yaml",
                        "finetune")


def test_the_analyses_that_score_dev_refuse_a_label_free_job_naming_task_dev(tmp_path,
                                                                            cache_dir):
    """A bundle made label-free records a job with no dev set: `rtune analyze compat` (whose job
    is the bundle's) and the pair analyses (adopt_task) say so before any model is read."""
    base, bundle = smollm_like(tmp_path / "base"), tmp_path / "bundle"
    bundle.mkdir()
    job = {"task": {"test": str(FIXTURES / "cls_test.jsonl")},
           "distill": {"unlabeled": str(FIXTURES / "cls_train.jsonl")}}
    (bundle / "lineage.json").write_text(json.dumps({"config": job}))
    proc = rtune_in_process(["analyze", "compat", "--bundle", str(bundle), "--bases", str(base),
                             "--out", str(tmp_path / "curve")], cache_dir)
    assert proc.returncode == 2 and f"{bundle / 'lineage.json'}: key 'task.dev': this analysis " \
        "scores the labeled dev set" in proc.stderr
    assert not (tmp_path / "curve").exists()
    cfg = run_config_from(job, [f"model.path={base}", f"run_dir={tmp_path / 'run'}"], "job.yaml",
                          "finetune")
    meta = {"task": {"type": "classification", "labels": ["animal", "food", "place", "tool"]}}
    pairs = [SimpleNamespace(a=SimpleNamespace(meta=meta))]
    with pytest.raises(ConfigError, match=r"job.yaml: key 'task.dev': this analysis scores"):
        adopt_task(cfg, "job.yaml", pairs)
    cfg.task.dev = str(FIXTURES / "cls_dev.jsonl")
    adopt_task(cfg, "job.yaml", pairs)
    assert cfg.task.labels == meta["task"]["labels"]


def test_the_library_table_ranks_labeled_rows_by_gain_kept_then_label_free_by_agreement():
    rows = [{"bundle": "free_low", "label_free": True, "agreement": 0.5, "kept_gain": None},
            {"bundle": "unknown", "label_free": False, "agreement": None, "kept_gain": None},
            {"bundle": "kept_low", "label_free": False, "agreement": None, "kept_gain": -0.2},
            {"bundle": "free_high", "label_free": True, "agreement": 0.95, "kept_gain": None},
            {"bundle": "kept_high", "label_free": False, "agreement": None, "kept_gain": 0.9}]
    assert [r["bundle"] for r in sorted(rows, key=rank)] == [
        "kept_high", "kept_low", "unknown", "free_high", "free_low"]


@pytest.mark.parametrize("dev, label_free", [("cls_dev.jsonl", False), ("gone.jsonl", True),
                                             (None, True)])
def test_a_library_job_is_label_free_exactly_when_its_dev_set_is_gone(tmp_path, dev, label_free):
    """recycle-all --unlabeled: a bundle's job (from its lineage) keeps its labeled files when its
    dev set is there; else its missing files are dropped and it reads the unlabeled inputs
    (without them, such a job is refused)."""
    base, bundle = smollm_like(tmp_path / "base"), tmp_path / "bundle"
    bundle.mkdir()
    task = {"train": str(tmp_path / "gone_train.jsonl"), "test": str(FIXTURES / "cls_test.jsonl"),
            **({"dev": str(FIXTURES / dev) if dev != "gone.jsonl" else str(tmp_path / dev)}
               if dev else {})}
    if not label_free:
        task["train"] = str(FIXTURES / "cls_train.jsonl")
    (bundle / "lineage.json").write_text(json.dumps({"config": {"task": task}}))
    unlabeled = str(FIXTURES / "cls_train.jsonl")
    cfg, where = bundle_job_config(bundle, None, [], tmp_path / "run", str(base), unlabeled)
    assert where == str(bundle / "lineage.json") and cfg.model.path == str(base)
    assert (cfg.distill.unlabeled == unlabeled) is label_free
    assert cfg.task.test == task["test"]
    assert cfg.task.train == (None if label_free else task["train"])
    assert cfg.task.dev == (None if label_free else task["dev"])
    if label_free:  # without --unlabeled the job is refused, naming the key
        with pytest.raises(ConfigError, match=r"key 'task\.(train|dev)'"):
            bundle_job_config(bundle, None, [], tmp_path / "run", str(base), None)


def test_label_free_is_refused_where_labels_train(tmp_path, cache_dir):
    base = smollm_like(tmp_path / "base")
    cfg = write_config(tmp_path / "ft.yaml", finetune_config(tmp_path / "run", base))
    unlabeled = f"distill.unlabeled={FIXTURES / 'cls_train.jsonl'}"
    proc = rtune_in_process(["finetune", "--config", str(cfg), unlabeled], cache_dir)
    assert proc.returncode == 2 and "key 'distill.unlabeled': label-free training is " \
        "recycling" in proc.stderr
    proc = rtune_in_process(["recycle", "--config", str(cfg), "--method", "init", "--bundle",
                             str(tmp_path), "--base", str(base), "--unlabeled",
                             str(FIXTURES / "cls_train.jsonl")], cache_dir)
    assert proc.returncode == 2 and "key 'distill.unlabeled': init tunes on labels" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_recycle_all_refuses_missing_unlabeled_inputs_before_any_bundle_is_read(tmp_path,
                                                                                 cache_dir):
    base = smollm_like(tmp_path / "base")
    common = ["recycle-all", "--bundles", str(tmp_path / "none"), "--base", str(base), "--out",
              str(tmp_path / "out")]
    proc = rtune_in_process([*common, "--unlabeled", str(tmp_path / "gone.txt")], cache_dir)
    assert proc.returncode == 2 and "--unlabeled" in proc.stderr and "gone.txt: file of " \
        "unlabeled inputs not found" in proc.stderr
    proc = rtune_in_process([*common, "--unlabeled", str(FIXTURES / "cls_train.jsonl"),
                             "--agree-at", "1.5"], cache_dir)
    assert proc.returncode == 2 and "--agree-at 1.5: must be in (0, 1]" in proc.stderr
    assert not (tmp_path / "out").exists()
