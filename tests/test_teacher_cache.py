"""The teacher cache (rtune_ds/train/teacher_cache.py) in this process: a miss builds and stores the
teacher's logits, a hit reads them without computing, any changed part of the key misses, a failed
or foreign file never passes for the cache; an LM task's bounded table (top-k logits, ids,
logsumexp) is keyed by k, T and its target positions, is read back with what it left out, and the
loss on it is the live teacher's at k = V and below it otherwise; the tiny teacher's logits of an
example do not depend on its batch-mates; and `rtune recycle --method distill` with the cache warm
trains as the live teacher does (per-step losses), while a changed bundle or train set builds a
new file."""
import errno
import json
import shutil

import pytest
import torch
from conftest import FIXTURES, check, read_jsonl, recycle
from safetensors.torch import load_file, save_file

from rtune_ds.train import teacher_cache

SHAPE = (5, 3)
LAYOUT = teacher_cache.class_logits_layout(*SHAPE)
PARTS = {"teacher": {"base": "b0", "bundle": "u0"}, "inputs": "i0", "task_type": "classification",
         "labels": ["a", "b", "c"], "precision": "fp32"}
SHORT = ["train.max_steps=2", "train.warmup_steps=0", "train.eval_every=0"]  # a run that keys


def counting(table: torch.Tensor):
    calls = []

    def compute() -> tuple[dict[str, torch.Tensor], dict]:
        calls.append(1)
        return {"logits": table.clone()}, {}

    return compute, calls


def test_a_miss_builds_and_stores_then_a_hit_reads_without_computing(tmp_path):
    table = torch.randn(SHAPE)
    compute, calls = counting(table)
    built, first = teacher_cache.cached_outputs(tmp_path, PARTS, LAYOUT, compute)
    read, second = teacher_cache.cached_outputs(tmp_path, PARTS, LAYOUT, compute)
    assert (first["status"], first["stored"], second["status"]) == ("built", True, "hit")
    assert len(calls) == 1 and first["key"] == second["key"]
    assert second == {"status": "hit", "key": first["key"], "file": first["file"]}
    assert torch.equal(built["logits"], table) and torch.equal(read["logits"], table)
    assert [p.name for p in tmp_path.iterdir()] == [f"{first['key']}.safetensors"]


@pytest.mark.parametrize("change", [
    {"teacher": {"base": "b0", "bundle": "u1"}},  # other bundle weights
    {"inputs": "i1"},  # another train set, or the same texts tokenised otherwise
    {"labels": ["a", "c", "b"]},  # the same labels in another order are other logit columns
    {"precision": "bf16"},
])
def test_any_changed_part_is_a_new_key_and_a_miss(tmp_path, change):
    compute, calls = counting(torch.randn(SHAPE))
    _, before = teacher_cache.cached_outputs(tmp_path, PARTS, LAYOUT, compute)
    _, after = teacher_cache.cached_outputs(tmp_path, {**PARTS, **change}, LAYOUT, compute)
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
        table, record = teacher_cache.cached_outputs(tmp_path, PARTS, LAYOUT, compute)
    assert record["status"] == "built" and record["stored"] is False
    assert "No space left" in record["store_error"] and str(tmp_path) in record["store_error"]
    assert table["logits"].shape == SHAPE
    assert list(tmp_path.iterdir()) == []  # no file, no staging left
    monkeypatch.undo()
    _, again = teacher_cache.cached_outputs(tmp_path, PARTS, LAYOUT, compute)
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
    table, record = teacher_cache.cached_outputs(tmp_path, PARTS, LAYOUT, compute)
    assert record["status"] == "built" and len(calls) == 1
    assert torch.equal(table["logits"], want)
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


def test_bench_distill_reports_a_bounded_tables_kl_error_instead_of_equality():
    from rtune_ds.recipes.bench_distill import bounded_table, compare_losses

    live = [{"train/loss": 2.0, "kd/ce": 3.0, "kd/kl": 1.0},
            {"train/loss": 1.5, "kd/ce": 2.5, "kd/kl": 0.5}]
    warm = [{"train/loss": 1.8, "kd/ce": 3.0, "kd/kl": 0.6},
            {"train/loss": 1.4, "kd/ce": 2.6, "kd/kl": 0.45}]
    found = compare_losses(live, warm, "bf16", bounded=True)
    assert "equal" not in found and found["steps_compared"] == 2
    error = found["kl_bound_error"]
    assert error["step_1"] == pytest.approx({"full": 1.0, "bounded": 0.6, "abs": 0.4, "rel": 0.4})
    assert error["max_abs"] == pytest.approx(0.4) and error["max_rel"] == pytest.approx(0.4)
    assert compare_losses(live, warm, "bf16")["equal"] is False  # exact outputs: judged equal
    assert bounded_table({"top_k": 64, "vocab_size": 49152})
    assert not bounded_table({"top_k": 11, "vocab_size": 11})  # k = V: the outputs whole
    assert not bounded_table({"status": "hit", "key": "k", "file": "f"})  # class logits


# --- the bounded LM table: top-k logits, their ids and logsumexp(z/T) per target position -------

VOCAB = 11  # test_guards.ToyLM's


def lm_examples(seed: int = 0, n: int = 10):
    """`n` right-padded LM examples of 3-7 tokens, a 1-3 token prompt each (labels IGNORE)."""
    from rtune_ds.data.examples import Examples
    from rtune_ds.train.objectives import IGNORE

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 8, (n,), generator=g)
    prompts = torch.randint(1, 4, (n,), generator=g)
    ids = torch.randint(VOCAB, (n, 7), generator=g)
    mask = (torch.arange(7) < lengths[:, None]).long()
    labels = torch.where(mask.bool() & (torch.arange(7) >= prompts[:, None]), ids,
                         torch.full_like(ids, IGNORE))
    return Examples(ids * mask, mask, labels, prompts)


def lm_job(tmp_path, top_k: int, temperature: float):
    """(run config, teacher base dir) of an lm distillation whose teacher predicts VOCAB tokens."""
    from rtune_ds.config.schema import RunConfig

    base = tmp_path / "teacher_base"
    base.mkdir(exist_ok=True)
    (base / "config.json").write_text(json.dumps({"vocab_size": VOCAB}))
    cfg = RunConfig()
    cfg.task.type, cfg.distill.top_k, cfg.distill.temperature = "lm", top_k, temperature
    return cfg, base


def test_an_lm_teacher_is_cached_only_when_top_k_asks_for_the_bound(tmp_path):
    from rtune_ds.jobs.recycling import live_teacher_why

    exact, _ = lm_job(tmp_path, None, 2.0)  # the default: the exact KL, the teacher live
    assert "distill.top_k" in live_teacher_why(exact)
    bounded, _ = lm_job(tmp_path, 256, 1.0)
    assert live_teacher_why(bounded) is None


def test_the_lm_tables_key_follows_k_t_and_which_positions_are_targets(tmp_path):
    from rtune_ds.data.examples import TaskData
    from rtune_ds.jobs.recycling import outputs_kept
    from rtune_ds.train.objectives import IGNORE

    def key(top_k, temperature, train) -> str:
        cfg, base = lm_job(tmp_path, top_k, temperature)
        data = TaskData("lm", None, {"train": train}, {}, {})
        parts = {**PARTS, "task_type": "lm", **outputs_kept(cfg, data, str(base))}
        return teacher_cache.cache_key(parts)

    train = lm_examples()
    shifted = lm_examples()
    shifted.labels[0, 3] = IGNORE  # the same tokens, one more of them read as prompt
    keys = {key(8, 2.0, train), key(4, 2.0, train), key(8, 1.0, train), key(8, 2.0, shifted),
            key(VOCAB, 2.0, train)}
    assert len(keys) == 5
    assert key(1000, 2.0, train) == key(VOCAB, 2.0, train)  # k is at most the vocabulary


def test_a_bounded_table_is_read_back_with_what_it_left_out(tmp_path):
    layout = teacher_cache.top_k_layout(6, 4)
    table = {"top_logits": torch.randn(6, 4), "top_ids": torch.randint(VOCAB, (6, 4)).int(),
             "lse": torch.randn(6)}
    summary = {"top_k": 4, "temperature": 2.0, "target_positions": 6,
               "mean_mass_outside_top_k": 0.125}
    calls = []

    def compute():
        calls.append(1)
        return table, summary

    parts = {**PARTS, "task_type": "lm", "top_k": 4}
    _, built = teacher_cache.cached_outputs(tmp_path, parts, layout, compute)
    read, hit = teacher_cache.cached_outputs(tmp_path, parts, layout, compute)
    assert built["status"] == "built" and hit["status"] == "hit" and len(calls) == 1
    assert {k: hit[k] for k in summary} == summary == {k: built[k] for k in summary}
    assert all(torch.equal(read[name], table[name]) for name in table)
    _, other_k = teacher_cache.cached_outputs(tmp_path, parts, teacher_cache.top_k_layout(6, 5),
                                              lambda: ({"top_logits": torch.zeros(6, 5),
                                                        "top_ids": torch.zeros(6, 5).int(),
                                                        "lse": torch.zeros(6)}, summary))
    assert other_k["status"] == "built"  # a file of another shape is not this table


@pytest.mark.parametrize("k", [VOCAB, 4])
def test_the_distiller_on_a_bounded_table_is_the_live_teacher_up_to_the_bound(tmp_path, k):
    """The table a run's cache plan builds from a teacher, looked up by the rows of the batches
    training makes (each cut to its longest row): at k = V the loss is the live teacher's; at
    k < V the CE is the same and the KL a lower bound of the live one."""
    from test_guards import ToyLM

    from rtune_ds.data.examples import ExampleSource, TaskData
    from rtune_ds.jobs.recycling import cache_plan
    from rtune_ds.train.distill import Distiller
    from rtune_ds.train.objectives import next_token_targets

    student, teacher, train = ToyLM(1), ToyLM(2), lm_examples()
    cfg, base = lm_job(tmp_path, k, 2.0)
    cfg.train.micro_batch_size, cfg.distill.alpha = 3, 0.4
    layout, outputs, lookup = cache_plan(cfg, TaskData("lm", None, {"train": train}, {}, {}),
                                         str(base))
    table, summary = outputs(teacher)
    assert {name: (tuple(t.shape), t.dtype) for name, t in table.items()} == layout
    with torch.no_grad():
        logits = teacher(train.input_ids, train.attention_mask).logits
    z = logits[:, :-1][next_token_targets(train.labels)]
    p = torch.softmax(z / 2.0, -1)
    outside = 1 - p.gather(-1, z.topk(k, -1).indices).sum(-1)
    assert summary == pytest.approx({"top_k": k, "vocab_size": VOCAB, "temperature": 2.0,
                                     "target_positions": len(z),
                                     "mean_mass_outside_top_k": outside.mean().item()}, abs=1e-6)
    assert (k == VOCAB) == (summary["mean_mass_outside_top_k"] < 1e-6)
    cached = Distiller(None, cfg.distill, "lm", [], cached=lookup(table))
    live = Distiller(teacher, cfg.distill, "lm", [])
    source, widths = ExampleSource(train, 0), set()
    for step in range(3):
        batch = source.make_inputs(source.global_batch(step, 4), [])
        widths.add(batch["input_ids"].shape[1])
        a, b = cached(student, batch), live(student, batch)
        terms = cached.scalars(), live.scalars()
        assert terms[0]["kd/ce"] == pytest.approx(terms[1]["kd/ce"], rel=1e-6)
        if k == VOCAB:
            assert a.item() == pytest.approx(b.item(), rel=1e-5)
        else:
            assert 0 < terms[0]["kd/kl"] < terms[1]["kd/kl"] and a.item() < b.item()
    assert len(widths) > 1  # batches of other widths than the split's


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
