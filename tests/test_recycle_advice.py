"""The decision per bundle after its compat check (keep / init / init+distill) flips when its
inputs do; the library's grouping of bundles into loads; and, in this process on one rank, a
bundle on the loaded base changes the base's digest while it is on and not after it is off."""
import json

import pytest

from rtune_ds.recycling.advice import advise, kept_gain


def test_keep_at_ninety_percent_of_the_gain_over_the_majority_baseline():
    # old 0.8 over majority 0.3: gain 0.5; compat 0.75 keeps 0.45 / 0.5 = 0.9
    keep = advise("classification", 0.8, 0.75, 0.3, 400, 4)
    assert keep["decision"] == "keep" and keep["kept_gain"] == pytest.approx(0.9)
    assert "0.900" in keep["evidence"]
    below = advise("classification", 0.8, 0.74, 0.3, 400, 4)
    assert below["decision"] == "init" and below["kept_gain"] == pytest.approx(0.88)
    assert advise("classification", 0.8, 0.74, 0.3, 400, 4, keep_at=0.85)["decision"] == "keep"


def test_a_score_ratio_alone_would_keep_what_the_gain_says_to_retune():
    # 0.55 / 0.6 = 0.92 of the old score, but only 0.5 of its gain over a 0.5 majority
    advice = advise("classification", 0.6, 0.55, 0.5, 400, 4)
    assert advice["decision"] == "init" and advice["kept_gain"] == pytest.approx(0.5)


def test_few_shot_tasks_are_retuned_with_the_old_model_as_teacher():
    few = advise("classification", 0.8, 0.5, 0.3, 4 * 32, 4)
    many = advise("classification", 0.8, 0.5, 0.3, 4 * 32 + 1, 4)
    assert (few["decision"], few["few_shot"]) == ("init+distill", True)
    assert (many["decision"], many["few_shot"]) == ("init", False)
    assert "32 train examples per label" in few["evidence"]
    assert advise("classification", 0.8, 0.5, 0.3, 200, 4, few_shot_at=50)["decision"] \
        == "init+distill"
    assert advise("lm", 2.0, 4.0, None, 20, None)["decision"] == "init+distill"


def test_without_a_gain_to_keep_the_bundle_is_retuned_and_says_why():
    no_old = advise("classification", None, 0.7, 0.3, 400, 4)
    assert no_old["decision"] == "init" and "no old score" in no_old["evidence"]
    never_beat = advise("classification", 0.3, 0.7, 0.3, 400, 4)
    assert never_beat["kept_gain"] is None and "did not beat the majority" in never_beat["evidence"]


def test_lm_tasks_compare_losses():
    assert kept_gain("lm", 2.0, 2.1, None) == pytest.approx(2.0 / 2.1)
    assert advise("lm", 2.0, 2.1, None, 500, None)["decision"] == "keep"
    assert advise("lm", 2.0, 2.5, None, 500, None)["decision"] == "init"


def test_loads_group_one_task_class_and_one_adapter_type(tmp_path):
    from types import SimpleNamespace as NS

    from rtune_ds.recipes.recycle_all import load_groups

    def entry(name, task, kind, method):
        return NS(row={"bundle": name}, r=NS(old=NS(task_type=task, kind=kind, method=method)))

    entries = [entry("d", "classification", "delta", "full"),
               entry("i", "classification", "peft", "ia3"),
               entry("l", "classification", "peft", "lora"),
               entry("m", "lm", "delta", "full")]
    groups = [[e.row["bundle"] for e in g] for g in load_groups(entries)]
    assert groups == [["d", "i"], ["l"], ["m"]]


@pytest.mark.slow
def test_the_base_digest_sees_a_bundle_while_it_is_on_and_not_after(one_rank, tmp_path):
    from rtune_ds.artifacts.bundle import open_old_weights
    from rtune_ds.jobs.synthetic_library import make_bases, make_bundle, make_tasks
    from rtune_ds.recycling import transplant
    from rtune_ds.recycling.library import LoadedBase
    from rtune_ds.recycling.mapping import Policy

    v0, v1 = make_bases("llama-1m", tmp_path)
    task = make_tasks(tmp_path, 16)[0]
    stage0 = {"train_batch_size": 1, "train_micro_batch_size_per_gpu": 1,
              "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 0}}
    olds = [open_old_weights(make_bundle(v0, task, m, 7, tmp_path / m, 32), None, "test")
            for m in ("full", "lora")]
    library = LoadedBase(str(v1), "classification", ["a", "b", "c"], 0, stage0, 0, olds)
    before = library.digest()
    for old in olds:
        mapping = transplant.plan(old, v1, Policy(), "test")
        with library.applied(old, mapping):
            during = library.digest()
        assert during != before, old.method  # the delta's backbone or the adapter's head is on
        assert library.digest() == before, old.method
    meta = json.loads((tmp_path / "full" / "bundle.json").read_text())
    assert meta["task"]["labels"] == ["class_0", "class_1"]
