"""rtune recycle --method distill | init+distill on 2 real ranks (gloo), student under ZeRO-2 and
ZeRO-3, the teacher under its own ZeRO-3 config with its parameters offloaded to CPU: training runs
in lockstep, the kd/* terms are logged, the teacher is frozen and bitwise unchanged; the teacher
cache built on 2 ranks trains as the live teacher does; a teacher that cannot read the student's
inputs or has other labels is refused before any output."""
import json

import pytest
from conftest import check, derived_base, read_jsonl, recycle, recycle_args, rtune_many

pytestmark = pytest.mark.slow

CASES = [("distill", "zero2", "full", []), ("distill", "zero3", "lora", []),
         ("init+distill", "zero2", "lora", ["distill.beta=0.5"]),
         ("init+distill", "zero3", "full", ["distill.beta=0.5"])]


def run_name(method: str, ds: str, kind: str) -> str:
    return f"kd_{method}_{ds}_{kind}".replace("+", "_")


# after CASES, whose zero2 full distill builds the teacher cache: the same teacher, live and warm
CACHE_CASES = {"kd_cache_live": ["distill.teacher_cache=false"], "kd_cache_warm": []}


@pytest.fixture(scope="module")
def distilled(recycle_env):
    """Every case recycled onto v1 on 2 ranks, in one launch, with a teacher cache of its own."""
    root, bases, bundles, cache = recycle_env
    teacher_cache = f"distill.teacher_cache_dir={root / 'kd_teacher_cache'}"
    jobs = [recycle_args(recycle_env, run_name(method, ds, kind), bundles[kind], bases["v1"],
                         method, ds, ["train.eval_every=10", teacher_cache, *extra])
            for method, ds, kind, extra in CASES]
    jobs += [recycle_args(recycle_env, name, bundles["full"], bases["v1"], "distill", "zero3",
                          ["train.eval_every=10", teacher_cache, *extra])
             for name, extra in CACHE_CASES.items()]
    rtune_many(jobs, cache)
    return root


@pytest.mark.parametrize("method,ds,kind,extra", CASES)
def test_distillation_trains_in_lockstep_with_a_frozen_offloaded_teacher(distilled, method, ds,
                                                                         kind, extra):
    run = distilled / run_name(method, ds, kind)
    teacher = json.loads((run / "teacher.json").read_text())
    assert teacher["weights_digest_before"] == teacher["weights_digest_after"]
    assert teacher["trainable_parameters"] == 0 and teacher["parameters_with_grad"] == 0
    assert teacher["zero_stage"] == 3  # ds_configs/teacher_offload.json, whatever the student runs
    summary = json.loads((run / "summary.json").read_text())
    assert summary["zero_stage"] == int(ds[-1])
    assert len(set(summary["rank_weight_digests"])) == 1  # both ranks hold the same student
    metrics = read_jsonl(run / "metrics.jsonl")
    train = [m for m in metrics if "train/loss" in m]
    assert len(train) == 10
    for m in train:
        assert {"kd/ce", "kd/kl"} <= set(m) and m["kd/kl"] >= 0
        want = 0.5 * m["kd/ce"] + 0.5 * m["kd/kl"] + 0.5 * m.get("kd/hidden", 0.0)
        assert m["train/loss"] == pytest.approx(want, rel=1e-4)
    assert ("kd/hidden" in train[0]) == bool(extra)
    evals = [m for m in metrics if "eval/accuracy" in m]
    if method == "distill":  # a fresh head learns from the teacher
        assert evals[-1]["eval/accuracy"] > evals[0]["eval/accuracy"]
    lineage = json.loads((run / "final" / "lineage.json").read_text())
    assert lineage["recycled"]["method"] == method


def test_a_teacher_cache_built_on_two_ranks_trains_as_the_live_teacher(distilled):
    built, live, warm = (json.loads((distilled / run / "teacher.json").read_text())
                         for run in (run_name("distill", "zero2", "full"), *CACHE_CASES))
    assert built["cache"]["status"] == "built" and built["cache"]["stored"]
    assert warm["cache"] == {"status": "hit", "key": built["cache"]["key"],
                             "file": built["cache"]["file"]}
    assert live["cache"]["status"] == "off"
    steps = {}
    for run in CACHE_CASES:
        steps[run] = [{k: m[k] for k in ("train/loss", "kd/ce", "kd/kl")}
                      for m in read_jsonl(distilled / run / "metrics.jsonl") if "kd/kl" in m]
        assert len(set(json.loads((distilled / run / "summary.json").read_text())[
            "rank_weight_digests"])) == 1
    assert len(steps["kd_cache_live"]) == 10
    for a, b in zip(steps["kd_cache_live"], steps["kd_cache_warm"], strict=True):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6)


def test_a_teacher_with_another_vocabulary_is_refused(recycle_env, cache_dir):
    root, bases, bundles, _ = recycle_env
    from conftest import FIXTURES
    from transformers import AutoTokenizer

    from rtune_ds.data.tokenizer import train_tokenizer

    other = derived_base(cache_dir, "v1_othertok", lambda m: m)
    if AutoTokenizer.from_pretrained(str(other)).vocab_size == \
            AutoTokenizer.from_pretrained(str(bases["v0"])).vocab_size:
        train_tokenizer([str(FIXTURES / "computing.jsonl")], "text", 500,
                        cache_dir / "bases" / "other_tok").save_pretrained(str(other))
    proc = recycle(recycle_env, "kd_othertok", bundles["full"], other, method="distill")
    assert proc.returncode == 2 and "tokenizer" in proc.stderr and "teacher" in proc.stderr
    assert "Traceback" not in proc.stderr and not (root / "kd_othertok").exists()


def test_a_student_task_with_other_labels_than_the_teacher_is_refused(recycle_env):
    root, bases, bundles, _ = recycle_env
    labels = json.loads((bundles["full"] / "bundle.json").read_text())["task"]["labels"]
    proc = recycle(recycle_env, "kd_labels", bundles["full"], bases["v1"], method="distill",
                   extra=[f"task.labels=[{','.join(reversed(labels))}]"])
    assert proc.returncode == 2 and "task.labels" in proc.stderr
    assert not (root / "kd_labels").exists()


def test_distillation_settings_are_validated_by_key(recycle_env):
    _, bases, bundles, _ = recycle_env
    for override, key in (("distill.alpha=1.5", "distill.alpha"),
                          ("distill.temperature=0", "distill.temperature"),
                          ("distill.hidden_layers=[9]", "distill.hidden_layers"),
                          ("distill.teacher_cache_dir=README.md", "distill.teacher_cache_dir")):
        extra = [override] + (["distill.beta=1.0"] if "hidden" in key else [])
        proc = recycle(recycle_env, "kd_bad", bundles["full"], bases["v1"], method="distill",
                       extra=extra)
        assert proc.returncode == 2 and key in proc.stderr, proc.stderr[-500:]


def test_bench_distill_reports_both_runs_and_leaves_no_shared_memory(recycle_env, tmp_path):
    from pathlib import Path

    from conftest import finetune_config, rtune, write_config

    root, bases, bundles, cache = recycle_env
    shm = Path("/dev/shm")
    before = set(shm.glob("deepspeed_allreduce_buffer_*"))
    cfg = write_config(tmp_path / "job.yaml", finetune_config(tmp_path / "unused", bases["v1"]))
    proc = check(rtune(["bench", "distill", "--config", str(cfg), "--ds-config",
                        "ds_configs/zero2.json", "--bundle", str(bundles["full"]), "--base",
                        str(bases["v1"]), "--steps", "6", "--out", str(tmp_path / "bench")],
                       cache))
    report = json.loads((tmp_path / "bench" / "bench_distill.json").read_text())
    runs = ("finetune", "distill_live", "distill_cold", "distill_warm")
    assert {report[run]["steps"] for run in runs} == {6} and report["repeats"] == 1
    ft = report["finetune"]["median_step_time_s"]
    assert report["step_time_ratio"] == pytest.approx(
        report["distill_warm"]["median_step_time_s"] / ft)
    assert report["step_time_ratio_live"] == pytest.approx(
        report["distill_live"]["median_step_time_s"] / ft)
    assert [report[run]["teacher_cache"]["status"] for run in runs[1:]] == ["off", "built", "hit"]
    assert len(report["distill_warm"]["peak_rss_mb_per_rank"]) == 2
    assert report["teacher"]["weights_digest_before"] == report["teacher"]["weights_digest_after"]
    losses = report["losses"]
    assert losses["equal"] and losses["steps_compared"] == 6
    assert losses["cached_final"] == pytest.approx(losses["live_final"], rel=1e-4)
    assert '"step_time_ratio"' in proc.stdout
    # DeepSpeed's CPU all-reduce buffers are unlinked once mapped: launches leave no RAM behind
    assert not set(shm.glob("deepspeed_allreduce_buffer_*")) - before
