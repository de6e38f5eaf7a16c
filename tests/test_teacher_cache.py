"""The teacher cache (rtune_ds/train/teacher_cache.py) in this process: a miss builds and stores the
teacher's logits, a hit reads them without computing, any changed part of the key misses, a failed
or foreign file never passes for the cache; the tiny teacher's logits of an example do not depend
on its batch-mates; and `rtune recycle --method distill` with the cache warm trains as the live
teacher does (per-step losses), while a changed bundle or train set builds a new file."""
import errno
import json
import shutil

import pytest
import torch
from conftest import FIXTURES, check, read_jsonl, recycle
from safetensors.torch import load_file, save_file

from rtune_ds.train import teacher_cache

SHAPE = (5, 3)
PARTS = {"teacher": {"base": "b0", "bundle": "u0"}, "inputs": "i0", "task_type": "classification",
         "labels": ["a", "b", "c"], "precision": "fp32"}
SHORT = ["train.max_steps=2", "train.warmup_steps=0", "train.eval_every=0"]  # a run that keys


def counting(table: torch.Tensor):
    calls = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return table.clone()

    return compute, calls


def test_a_miss_builds_and_stores_then_a_hit_reads_without_computing(tmp_path):
    table = torch.randn(SHAPE)
    compute, calls = counting(table)
    built, first = teacher_cache.cached_outputs(tmp_path, PARTS, SHAPE, compute)
    read, second = teacher_cache.cached_outputs(tmp_path, PARTS, SHAPE, compute)
    assert (first["status"], first["stored"], second["status"]) == ("built", True, "hit")
    assert len(calls) == 1 and first["key"] == second["key"]
    assert torch.equal(built, table) and torch.equal(read, table)
    assert [p.name for p in tmp_path.iterdir()] == [f"{first['key']}.safetensors"]


@pytest.mark.parametrize("change", [
    {"teacher": {"base": "b0", "bundle": "u1"}},  # other bundle weights
    {"inputs": "i1"},  # another train set, or the same texts tokenised otherwise
    {"labels": ["a", "c", "b"]},  # the same labels in another order are other logit columns
    {"precision": "bf16"},
])
def test_any_changed_part_is_a_new_key_and_a_miss(tmp_path, change):
    compute, calls = counting(torch.randn(SHAPE))
    _, before = teacher_cache.cached_outputs(tmp_path, PARTS, SHAPE, compute)
    _, after = teacher_cache.cached_outputs(tmp_path, {**PARTS, **change}, SHAPE, compute)
    assert after["status"] == "built" and after["key"] != before["key"] and len(calls) == 2
    assert len(list(tmp_path.iterdir())) == 2


def test_a_failed_write_leaves_no_file_and_the_run_goes_on(tmp_path, monkeypatch):
    def half_written(tensors, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"\0" * 64)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(teacher_cache, "save_file", half_written)
    compute, calls = counting(torch.randn(SHAPE))
    with pytest.warns(UserWarning, match="teacher cache"):
        table, record = teacher_cache.cached_outputs(tmp_path, PARTS, SHAPE, compute)
    assert record["status"] == "built" and record["stored"] is False
    assert "No space left" in record["store_error"] and str(tmp_path) in record["store_error"]
    assert table.shape == SHAPE and list(tmp_path.iterdir()) == []  # no file, no staging left
    monkeypatch.undo()
    _, again = teacher_cache.cached_outputs(tmp_path, PARTS, SHAPE, compute)
    assert again["status"] == "built" and again["stored"] and len(calls) == 2


@pytest.mark.parametrize("foreign", ["garbage", "other key", "other shape", "fp16"])
def test_a_file_that_is_not_this_keys_table_is_built_anew(tmp_path, foreign):
    key = teacher_cache.cache_key(PARTS)
    path = tmp_path / f"{key}.safetensors"
    if foreign == "garbage":
        path.write_bytes(b"not a safetensors file")
    else:
        table = torch.randn(4, 3) if foreign == "other shape" else torch.randn(SHAPE)
        save_file({"logits": table.half() if foreign == "fp16" else table}, str(path),
                  metadata={"key": "0" * 64 if foreign == "other key" else key})
    want = torch.randn(SHAPE)
    compute, calls = counting(want)
    table, record = teacher_cache.cached_outputs(tmp_path, PARTS, SHAPE, compute)
    assert record["status"] == "built" and len(calls) == 1 and torch.equal(table, want)
    assert torch.equal(load_file(str(path))["logits"], want)


def test_the_inputs_digest_follows_the_ids_and_the_masks():
    from rtune_ds.data.examples import Examples

    ids = torch.tensor([[5, 6, 7], [5, 8, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    digest = teacher_cache.inputs_digest(Examples(ids, mask, torch.tensor([0, 1])))
    assert digest == teacher_cache.inputs_digest(Examples(ids.clone(), mask.clone(),
                                                          torch.tensor([1, 1])))  # labels: no
    other_ids, other_mask = ids.clone(), mask.clone()
    other_ids[1, 2], other_mask[1, 2] = 9, 1
    assert teacher_cache.inputs_digest(Examples(other_ids, mask, torch.tensor([0, 1]))) != digest
    assert teacher_cache.inputs_digest(Examples(ids, other_mask, torch.tensor([0, 1]))) != digest


@pytest.mark.parametrize("precision, shift, equal", [
    ("fp32", 5e-5, True), ("fp32", 5e-4, False),
    ("bf16", 1e-3, True),  # what a bf16 teacher's batch-shaped rounding does (llama-10m, 30 steps)
    ("bf16", 2e-2, False)])
def test_bench_distill_judges_cached_losses_by_the_precisions_tolerance(precision, shift, equal):
    from rtune_ds.recipes.bench_distill import compare_losses

    live = [{"train/loss": 1.4, "kd/ce": 2.0, "kd/kl": 0.002}, {"train/loss": 0.7, "kd/ce": 1.3,
                                                               "kd/kl": 0.001}]
    cached = [{k: v + shift for k, v in step.items()} for step in live]
    found = compare_losses(live, cached, precision)
    assert found["equal"] is equal and found["steps_compared"] == 2
    assert found["max_abs_diff_per_step"] == pytest.approx(dict.fromkeys(live[0], shift))
    assert found["max_rel_diff_per_step"]["kd/kl"] == pytest.approx(shift / 0.001)
    assert compare_losses(live, cached[:1], precision)["equal"] is False  # a step missing


# --- the real teacher on the tiny fixture (slow: the session's recycle_env tunes two bundles) ---

@pytest.mark.slow
def test_an_examples_teacher_logits_do_not_depend_on_its_batch_mates(recycle_env):
    """The logits the cache holds (length-sorted batches) are those of the example on its own and
    in the batches training makes (right padding + attention mask), to float tolerance."""
    from transformers import AutoTokenizer

    from rtune_ds.artifacts.bundle import open_old_weights
    from rtune_ds.config.schema import TaskConfig
    from rtune_ds.data.examples import ExampleSource, load_task
    from rtune_ds.recycling.transplant import transplant
    from rtune_ds.train.inference import class_logits

    _, bases, bundles, _ = recycle_env
    tok = AutoTokenizer.from_pretrained(str(bases["v0"]))
    task = TaskConfig(type="classification", train=str(FIXTURES / "cls_train.jsonl"), max_len=32)
    train = load_task(task, tok, 3, "test").splits["train"]
    old = open_old_weights(str(bundles["full"]), None, "test")
    model = transplant(old, bases["v0"], labels=old.labels, pad_token_id=tok.pad_token_id,
                       where="test").model.eval()
    cached = class_logits(model, train, 8, len(old.labels))
    with torch.no_grad():
        alone = torch.cat([model(**{k: v for k, v in train.batch([i]).items() if k != "labels"})
                           .logits for i in range(len(train))])
        source, trained = ExampleSource(train, 3), torch.zeros_like(cached)
        for step in range(-(-len(train) // 32)):  # every example at least once
            rows = source.global_batch(step, 32)
            for start in range(0, 32, 8):
                batch = source.make_inputs(rows[start:start + 8], [])
                trained[batch["rows"]] = model(input_ids=batch["input_ids"],
                                               attention_mask=batch["attention_mask"]).logits
    assert train.lengths.min() < train.lengths.max()  # the batches do pad
    torch.testing.assert_close(cached, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached, trained, rtol=0, atol=1e-5)


def kd_steps(run) -> list[dict]:
    return [{k: m[k] for k in ("train/loss", "kd/ce", "kd/kl")}
            for m in read_jsonl(run / "metrics.jsonl") if "kd/kl" in m]


def teacher_json(run) -> dict:
    return json.loads((run / "teacher.json").read_text())


@pytest.fixture(scope="module")
def distilled(recycle_env, tmp_path_factory):
    """On 1 rank (in this process), the full bundle distilled onto v1: with the teacher live, then
    with an empty cache (built), then again (hit); name -> run dir."""
    root, bases, bundles, _ = recycle_env
    cache = tmp_path_factory.mktemp("teacher_cache")
    runs = {"live": ["distill.teacher_cache=false"], "cold": [], "warm": []}
    for name, extra in runs.items():
        check(recycle(recycle_env, f"tc_{name}", bundles["full"], bases["v1"], method="distill",
                      extra=[f"distill.teacher_cache_dir={cache}", *extra]))
    return {name: root / f"tc_{name}" for name in runs} | {"cache": cache}


@pytest.mark.slow
def test_a_warm_cache_trains_as_the_live_teacher_does(distilled):
    live, cold, warm = (teacher_json(distilled[n]) for n in ("live", "cold", "warm"))
    assert live["cache"] == {"status": "off", "why": "distill.teacher_cache is false"}
    assert cold["cache"]["status"] == "built" and warm["cache"]["status"] == "hit"
    assert cold["cache"]["key"] == warm["cache"]["key"]
    # the teacher ran (once, over the train split) in the cold run only, and stayed frozen
    assert cold["weights_digest_before"] == cold["weights_digest_after"] == \
        live["weights_digest_before"]
    assert "weights_digest_before" not in warm
    steps = {n: kd_steps(distilled[n]) for n in ("live", "cold", "warm")}
    assert len(steps["live"]) == 10
    assert steps["cold"] == steps["warm"]  # the same table
    for a, b in zip(steps["live"], steps["warm"]):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    lineage = json.loads((distilled["warm"] / "final" / "lineage.json").read_text())
    assert lineage["recycled"]["teacher_cache"] == warm["cache"]


@pytest.mark.slow
def test_another_bundle_or_train_set_builds_a_new_file(distilled, recycle_env, tmp_path):
    root, bases, bundles, _ = recycle_env
    key = teacher_json(distilled["warm"])["cache"]["key"]
    changed = tmp_path / "bundle"
    shutil.copytree(bundles["full"], changed)
    head = load_file(str(changed / "head.safetensors"))
    save_file({k: v + 1e-3 for k, v in head.items()}, str(changed / "head.safetensors"),
              metadata={"format": "pt"})
    rows = (FIXTURES / "cls_train.jsonl").read_text().splitlines()
    fewer = tmp_path / "train.jsonl"
    fewer.write_text("\n".join(rows[:-8]) + "\n")
    cache = f"distill.teacher_cache_dir={distilled['cache']}"
    keys = {key}
    for name, bundle, extra in (("tc_bundle", changed, []),
                                ("tc_inputs", bundles["full"], [f"task.train={fewer}"])):
        check(recycle(recycle_env, name, bundle, bases["v1"], method="distill",
                      extra=[cache, *SHORT, *extra]))
        record = teacher_json(root / name)["cache"]
        assert record["status"] == "built" and record["key"] not in keys
        keys.add(record["key"])
    assert {p.stem for p in distilled["cache"].iterdir()} == keys


@pytest.mark.slow
def test_the_hidden_state_term_keeps_the_teacher_live(recycle_env):
    root, bases, bundles, _ = recycle_env
    check(recycle(recycle_env, "tc_beta", bundles["full"], bases["v1"], method="distill",
                  extra=["distill.beta=0.5", *SHORT]))
    record = teacher_json(root / "tc_beta")
    assert record["cache"]["status"] == "off" and "distill.beta" in record["cache"]["why"]
    assert record["weights_digest_before"] == record["weights_digest_after"]
