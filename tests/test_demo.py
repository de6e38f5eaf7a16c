"""`rtune demo --quick` end to end on 2 CPU ranks, on data made from the committed fixtures (no
network): every job runs, and the report's numbers are the ones in the runs' files. First, in
process: the plan (DeepSpeed JSON, run names, the jobs' inputs and command lines)."""
from __future__ import annotations

import json
import shlex
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from rtune_ds.analysis.pairs import FLAGS
from rtune_ds.cli import parse
from rtune_ds.data.decontaminate import normalised
from rtune_ds.demo import results
from rtune_ds.demo.data import study_data
from rtune_ds.demo.plan import (
    ARMS,
    CALIBRATION_SEED,
    LABEL_FREE,
    RECYCLED,
    REGIMES,
    SECONDS,
    Job,
    Planner,
    bundle,
    compat,
    data_regime,
    ds_config_path,
    export_steps,
    label_free_compat,
    load_budget,
    lr_keys,
    run_name,
    tuning_method,
    write_configs,
)
from rtune_ds.errors import ConfigError
from rtune_ds.resources import DS_CONFIGS

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
PROFILES = ("quick", "main", "quick --full", "main --full", "llm-quick", "llm", "llm --full")
# the tuning methods of each profile's bundles: an LLM budget tunes LoRA only
BUNDLE_METHODS = {"quick": ["full"], "main": ["full"], "quick --full": ["full", "lora"],
                  "main --full": ["full", "lora"], "llm-quick": ["lora"], "llm": ["lora"],
                  "llm --full": ["lora"]}


def budget_of(profile: str) -> dict:
    return load_budget(profile.split()[0], None, profile.endswith("--full"))


def test_the_budgets_ds_config_is_shipped_in_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a directory without ds_configs/, as after a wheel install
    for profile in PROFILES:
        budget = budget_of(profile)
        assert Path(budget["ds_config"]).name == budget["ds_config"]  # a bare name
        found = Path(ds_config_path(None, budget))
        assert found.is_file() and found.parent == DS_CONFIGS
    (tmp_path / "mine.json").write_text("{}")
    assert ds_config_path("mine.json", budget) == "mine.json"  # the user's path, as given
    with pytest.raises(ConfigError, match="--ds-config nope.json: DeepSpeed JSON not found"):
        ds_config_path("nope.json", budget)
    with pytest.raises(ConfigError, match=r"demo.yaml: key 'main.ds_config' \(zero9.json\)"):
        ds_config_path(None, {**load_budget("main", None), "ds_config": "zero9.json"})
    with pytest.raises(ConfigError, match="demo.yaml: no budget 'huge'"):
        load_budget("huge", None)


def test_full_is_the_budget_with_the_full_data_and_lora_regimes():
    main, full = load_budget("main", None), load_budget("main", None, full=True)
    assert main["regimes"] == ["few"] and full["full"] and not main["full"]
    assert full["regimes"] == ["few", "full", "few-lora", "full-lora"]
    assert {k: v for k, v in full.items() if k not in ("regimes", "full")} == \
        {k: v for k, v in main.items() if k not in ("regimes", "full")}


def test_a_regime_the_demo_does_not_know_is_refused_naming_the_key(tmp_path):
    budgets = yaml.safe_load((ROOT / "rtune_ds" / "resources" / "demo.yaml").read_text())
    budgets["quick"]["full_regimes"] = ["few", "few-ia3"]
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(budgets))
    with pytest.raises(ConfigError, match=r"key 'quick.full_regimes': unknown \['few-ia3'\]"):
        load_budget("quick", None, True, tmp_path / "demo.yaml")
    budgets["quick"]["full_regimes"] = ["few-lora"]  # no full fine-tuning to analyse
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(budgets))
    with pytest.raises(ConfigError, match=r"key 'quick.analysis': the analyses compare fully"):
        load_budget("quick", None, True, tmp_path / "demo.yaml")
    budgets["quick"]["full_regimes"] = ["few", "few-lora"]
    del budgets["quick"]["tune"]["lora"]
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(budgets))
    with pytest.raises(ConfigError, match=r"key 'quick.tune.lora'"):
        load_budget("quick", None, True, tmp_path / "demo.yaml")
    assert load_budget("quick", None, False, tmp_path / "demo.yaml")["regimes"] == ["few"]


def test_full_reuses_the_out_of_the_main_study_but_another_budget_is_refused(tmp_path):
    from rtune_ds.demo.main import check_budget_unchanged

    main = {**load_budget("main", None), "base_dir": None}
    check_budget_unchanged(tmp_path, main)
    check_budget_unchanged(tmp_path, {**load_budget("main", None, True), "base_dir": None})
    with pytest.raises(ConfigError, match="another budget"):
        check_budget_unchanged(tmp_path, {**load_budget("main", 5), "base_dir": None})
    with pytest.raises(ConfigError, match="another budget"):
        check_budget_unchanged(tmp_path, {**main, "base_dir": "/elsewhere"})


def test_a_failing_job_is_named_with_its_error_whatever_the_error_class(tmp_path):
    from rtune_ds.demo.runner import run_plan
    from rtune_ds.errors import RunError
    from rtune_ds.io import WriteFailed, save_json

    job = Job("few-init-s1", ["finetune"], str(tmp_path / "run"), "task.yaml", [], "summary.json")
    save_json({"jobs": [asdict(job)]}, tmp_path / "plan.json")

    def disk_full(argv):
        raise WriteFailed(tmp_path / "run" / "checkpoints", "No space left on device")

    with pytest.raises(RunError, match=r"demo job few-init-s1 \(run dir .*\): .*checkpoints: "
                                       r"writing it failed \(No space left on device\)"):
        run_plan(str(tmp_path / "plan.json"), disk_full)

    def bad_key(argv):
        raise ConfigError("task.yaml: key 'train.lr' must be > 0")

    with pytest.raises(ConfigError, match="demo job few-init-s1 .*key 'train.lr'"):
        run_plan(str(tmp_path / "plan.json"), bad_key)


def test_a_finished_job_keeps_its_export_but_not_its_checkpoints(tmp_path):
    from rtune_ds.demo.runner import run_plan
    from rtune_ds.errors import RunError
    from rtune_ds.io import save_json

    done, stopped = (Job(name, ["finetune"], str(tmp_path / name), "task.yaml", [], "summary.json")
                     for name in ("done", "stopped"))

    def train(argv):  # a job: its checkpoints, its export, then its summary if it finishes
        run = Path(argv[argv.index("--config") + 2].split("=", 1)[1])
        for d in ("checkpoints/step_00000004", "final"):
            (run / d).mkdir(parents=True)
        if run.name == "done":
            (run / "summary.json").write_text("{}")

    save_json({"jobs": [asdict(done), asdict(stopped)]}, tmp_path / "plan.json")
    with pytest.raises(RunError, match="demo job stopped: stopped before it finished"):
        run_plan(str(tmp_path / "plan.json"), train)
    assert (tmp_path / "done" / "final").is_dir() and (tmp_path / "done" / SECONDS).is_file()
    assert not (tmp_path / "done" / "checkpoints").exists()
    assert (tmp_path / "stopped" / "checkpoints" / "step_00000004").is_dir()  # it resumes


def chosen(b: dict) -> dict:
    """An LR per arm and regime, each a different LR of the regime's grid where it allows."""
    out = {}
    for r in REGIMES:
        grid = lr_keys(b, tuning_method(r))["lr_grid"] if r in b["regimes"] else [1.0]
        out[r] = {a: grid[i % len(grid)] for i, a in enumerate(ARMS)}
    return out


def planned(tmp_path: Path, profile: str) -> tuple[Planner, list, list]:
    """(the planner, the waves before the grid ran, every wave after it); the main budget's v0 is
    a directory that stands for the released model."""
    b = budget_of(profile)
    planner = Planner(b, tmp_path, tmp_path / "configs",
                      None if profile.startswith("quick") else str(tmp_path / "v0"))
    return planner, planner.waves(), planner.waves(chosen(b))


@pytest.mark.parametrize("profile", PROFILES)
def test_a_wave_reads_only_what_earlier_waves_write(tmp_path, profile):
    planner, _, waves = planned(tmp_path, profile)
    jobs = [j for _, wave in waves for j in wave]
    assert len({j.name for j in jobs}) == len(jobs)
    assert len({j.run_dir for j in jobs}) == len(jobs)
    written = set() if profile.startswith("quick") else {tmp_path / "v0"}
    for _, wave in waves:
        made = set()
        for job in wave:
            assert Job(**json.loads(json.dumps(asdict(job)))) == job  # the plan file holds it
            # its command line is one `rtune` runs (a demo launch runs it as parsed here), with
            # its run dir and config
            args = parse(shlex.split(job.command())[1:])
            assert args.handler is not None
            assert (args.config, args.overrides[0]) == (job.config, f"run_dir={job.run_dir}")
            reads = [o.split("=", 1)[1] for o in args.overrides if o.startswith("model.path=")]
            reads += [v for k, v in vars(args).items() if k in ("bundle", "base", *FLAGS) and v]
            assert {Path(r) for r in reads} <= written, job.name  # jobs of a wave run at once
            made.add(Path(job.run_dir) / "final")
            if job.name == "v1":  # and its exports along the way, which compat reads
                made |= {Path(job.run_dir) / "exports" / f"step-{s}"
                         for s in export_steps(planner.b).values()}
        written |= made


@pytest.mark.parametrize("profile", PROFILES)
def test_every_arm_runs_the_grid_on_the_calibration_seed_and_each_seed_at_its_lr(tmp_path,
                                                                                  profile):
    planner, before, waves = planned(tmp_path, profile)
    b, lrs = planner.b, chosen(planner.b)
    assert [name for name, _ in before] == [name for name, _ in waves[:len(before)]]
    assert not any(j.info["kind"] == "arm" for _, wave in before for j in wave)
    jobs = [j for _, wave in waves for j in wave]
    seeds = list(range(1, b["seeds"] + 1))
    for regime in b["regimes"]:
        t, method = b["tune"][data_regime(regime)], tuning_method(regime)
        budget = [f"train.max_steps={t['max_steps']}", f"train.eval_every={t['eval_every']}",
                  f"train.warmup_steps={round(b['tune']['warmup_fraction'] * t['max_steps'])}"]
        for name in ARMS:
            grid = [j for j in jobs if j.info["kind"] == "grid" and j.info["arm"] == name
                    and j.info["regime"] == regime]
            lr_grid = lr_keys(b, method)["lr_grid"]
            # a grid of one LR chooses nothing: it is not run
            assert sorted(j.info["lr"] for j in grid) == (sorted(lr_grid) if len(lr_grid) > 1
                                                          else [])
            assert {j.info["seed"] for j in grid} <= {CALIBRATION_SEED}
            runs = [j for j in jobs if j.info["kind"] == "arm" and j.info["arm"] == name
                    and j.info["regime"] == regime]
            assert [j.info["seed"] for j in runs] == seeds, name
            for j in grid + runs:
                lr = j.info.get("lr", lrs[regime][name])
                assert f"train.lr={lr}" in j.overrides, j.name
                assert set(budget) <= set(j.overrides), j.name
                assert not any("patience" in o for o in j.overrides), j.name
                seed = j.info["seed"]
                assert f"seed={seed}" in j.overrides, j.name  # the few-shot sample s
                if name in (*RECYCLED, LABEL_FREE):  # recycles its own seed's bundle
                    assert j.args[j.args.index("--bundle") + 1] == \
                        planner.final(bundle(seed, method=method)), j.name
                # label-free reads the train texts, never their labels; the others no such file
                unlabeled = j.args[j.args.index("--unlabeled") + 1] \
                    if "--unlabeled" in j.args else None
                assert unlabeled == (str(planner.tasks / "foldoc_category_train.jsonl")
                                     if name == LABEL_FREE else None), j.name
                # v0 and vanilla tune with the regime's method; recycling, with the bundle's
                assert (f"tuning.method={method}" in j.overrides) == (method != "full"), j.name
                few = [o for o in j.overrides if o.startswith("task.")]
                assert bool(few) == (data_regime(regime) == "few"), j.name
                if few:  # its dev pool is the half of the dev split no bundle was chosen on
                    assert any(o.startswith("task.dev=") and o.endswith("_dev_pool.jsonl")
                               for o in few), j.name
    methods = BUNDLE_METHODS[profile]
    # the compat curve (along v1's exports, from v0 itself) of bundle 1 of the first method:
    # the one the gate reads
    points = sorted(j.info["point"] for j in jobs if j.info["kind"] == "compat"
                    and j.info["seed"] == 1 and j.info["method"] == methods[0])
    exports = b["cpt"]["exports"]
    assert points == ([0.0, *exports, 1.0] if exports else [1.0])
    names = {j.name for j in jobs}
    analysed = {"rand", "v1-tuned-s1", "rand-tuned-s1", "connectivity", "connectivity-floor",
                "similarity", "similarity-floor"}  # run only by a budget with analyses
    assert names & analysed == (analysed if "analysis" in b else set())
    for method in methods:  # a bundle per seed and tuning method, each scored on v1 untrained
        for s in [CALIBRATION_SEED, *seeds]:
            assert run_name(bundle(s, method=method)) in names
            assert run_name(compat(s, method=method)) in names
            assert run_name(label_free_compat(s, method)) in names
    assert sorted(j.info["seed"] for j in jobs if j.info["kind"] == "compat"
                  and j.info["point"] == 1.0) == sorted([CALIBRATION_SEED, *seeds] * len(methods))


def test_no_dev_or_test_text_reaches_any_pretraining_corpus(tmp_path):
    out = tmp_path / "demo"
    b = load_budget("quick", None)
    prepared = study_data(fixture_data(tmp_path / "data"), out, b["tasks"], b["task_limits"])
    held = set()
    for path in (out / "tasks").rglob("*.jsonl"):
        if any(s in path.name for s in ("_dev", "_test")):  # dev, dev_pool, test; all splits
            held |= {normalised(json.loads(x)["text"]) for x in path.read_text().splitlines()}
    assert held and prepared["decontamination"]["held_out_texts"] == len(held)
    removed = prepared["decontamination"]["corpora"]
    assert all(c["removed"] > 0 for c in removed.values())  # the fixtures' tasks come from them
    configs = write_configs(b, out / "corpora", out, str(DS_CONFIGS / "zero0.json"), None)
    sources = set()
    for name in ("v0", "v1", "rand"):
        data = yaml.safe_load((configs / f"{name}.yaml").read_text())["data"]
        blends = [data["train"]] + ([data["switch"]["train"]] if "switch" in data else [])
        sources |= {Path(s["path"] if isinstance(s, dict) else s) for blend in blends
                    for s in blend}
    assert sources == {out / "corpora" / "general.jsonl", out / "corpora" / "computing.jsonl"}
    for source in sources:
        texts = [normalised(json.loads(x)["text"]) for x in source.read_text().splitlines()]
        assert texts and not held & set(texts), source
        original = (tmp_path / "data" / source.name).read_text().splitlines()
        assert len(original) - len(texts) == removed[source.name]["removed"]


def test_the_report_lists_the_tensors_v1_carried_from_v0(tmp_path):
    """results.pretraining reads v1's lineage as hf_export writes it: the carried tensors are the
    keys of carried_from_parent.tensors (the pooler of a BertModel parent), not the record's keys."""
    v1 = tmp_path / "v1"
    (v1 / "final").mkdir(parents=True)
    evals = [{"step": 0, "eval/loss": 3.0}, {"step": 4, "eval/loss": 2.5}]
    (v1 / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    (v1 / "summary.json").write_text(json.dumps({"step": 4, "tokens": 64,
                                                 "final_eval": evals[-1]}))
    carried = {"bert.pooler.dense.weight": {"from": "pooler.dense.weight"},
               "bert.pooler.dense.bias": {"from": "pooler.dense.bias"}}
    (v1 / "final" / "lineage.json").write_text(json.dumps(
        {"carried_from_parent": {"tensors": carried, "recomputed_buffers": [],
                                 "copied_unchanged": True}}))
    pre = results.pretraining(tmp_path)["v1"]
    assert pre["carried_from_parent"] == sorted(carried)
    assert (pre["first_eval"], pre["final_eval"]) == (evals[0], evals[-1])


def fixture_data(out: Path) -> Path:
    """A prepared-data directory made of the fixture corpora (the quick budget's class limits
    make tasks of a few hundred records)."""
    out.mkdir(parents=True)
    for corpus in ("general.jsonl", "computing.jsonl"):
        shutil.copy(FIXTURES / corpus, out / corpus)
    return out


@pytest.mark.slow
def test_demo_quick_report_matches_the_runs(tmp_path):
    data = fixture_data(tmp_path / "data")
    out = tmp_path / "demo"
    # one seed: the protocol end to end with the fewest jobs (what 2+ seeds decide is the
    # findings tests' and the plan tests'); two 1-rank launches at once, as the budget says
    proc = subprocess.run([sys.executable, "-m", "rtune_ds", "demo", "--quick", "--seeds", "1",
                           "--out", str(out), "--data", str(data)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("report.md", "report.json", "contrasts.png", "convergence.png",
                 "pretraining.png", "compat.png", "connectivity.png", "similarity.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    runs = out / "runs"
    assert not any(x["reused"] for x in report["jobs"])
    assert report["workers"] == 2 and [w["ran"] for w in report["waves"]] == \
        [w["jobs"] for w in report["waves"]]
    v1 = json.loads((runs / "v1" / "summary.json").read_text())
    assert report["precision"] == {"chosen": v1["precision"], "why": v1["precision_why"]}
    assert v1["precision_why"].startswith("auto: ")  # the budget leaves it to the hardware
    for job in report["jobs"]:  # every run dir has its own TensorBoard events
        if not job["name"].startswith(("similarity", "compat-")):
            assert list((runs / job["name"] / "tensorboard").glob("**/events.*")), job

    # the grid chose, per arm, the LR of its best dev accuracy, and the arm's seed-1 run used it
    for row in report["grid"]:
        best = max((r for r in report["grid"] if r["arm"] == row["arm"]),
                   key=lambda r: (r["dev"], -r["lr"]))
        assert report["chosen_lr"][row["regime"]][row["arm"]] == best["lr"]
    for name in ARMS:
        lineage = json.loads((runs / f"few-{name.replace('+', '_')}-s1" / "final" /
                              "lineage.json").read_text())
        assert lineage["config"]["train"]["lr"] == report["chosen_lr"]["few"][name], name
    # every run's numbers are its files', and its predictions give its test accuracy
    correct, test_files = {}, set()
    for name, r in report["runs"].items():
        preds = json.loads((runs / name / "test_predictions.json").read_text())
        correct[name] = [int(g == p) for g, p in zip(preds["gold"], preds["predicted"])]
        test_files.add((preds["file"], preds["sha256"]))
        if r["source"] == "compat.json":
            c = json.loads((runs / name / "compat.json").read_text())
            assert (r["dev"], r["test"]) == (c["dev"]["accuracy"], c["test"]["accuracy"])
        else:
            s = json.loads((runs / name / "summary.json").read_text())
            assert (r["dev"], r["test"]) == (s["metrics"]["dev"]["eval/accuracy"],
                                             s["metrics"]["test"]["eval/accuracy"])
        assert r["test"] == pytest.approx(statistics.fmean(correct[name])), name
    assert len(test_files) == 1  # one test set: every contrast is paired item by item
    # each contrast is the paired difference of its runs' predictions
    c = report["contrasts"]
    pairs = {"init − vanilla (few)": ("few-init-s1", "few-vanilla-s1"),
             "v1 − v0 (few)": ("few-vanilla-s1", "few-v0-s1"),
             "init − compat (few)": ("few-init-s1", "compat-s1-at100")}
    for key, (a, b) in pairs.items():
        want = statistics.fmean(x - y for x, y in zip(correct[a], correct[b]))
        assert c[key]["difference"] == pytest.approx(want), key
        assert c[key]["ci_low"] <= c[key]["difference"] <= c[key]["ci_high"]
        assert c[key]["verdict"] in ("reproduced", "contradicted", "inconclusive",
                                     "blocked (no upgrade)")
    # the gate's numbers are v1's evals and the bundles' compat runs
    gate = report["gate"]["evidence"]
    evals = [json.loads(x) for x in (runs / "v1" / "metrics.jsonl").read_text().splitlines()
             if "eval/loss/computing" in x]
    assert gate["loss_first"]["computing"] == evals[0]["eval/loss/computing"]
    assert gate["loss_last"]["computing"] == v1["final_eval"]["eval/loss/computing"]
    blocked = [t for k, t in c.items() if t["verdict"] == "blocked (no upgrade)"]
    assert bool(blocked) == (not report["gate"]["passed"])
    # convergence comes from the runs' metrics.jsonl
    vanilla = [json.loads(x) for x in (runs / "few-vanilla-s1" / "metrics.jsonl")
               .read_text().splitlines()]
    for e in report["convergence"]["few"]["init"]["per_seed"]:
        assert e["target"] == max(x["eval/accuracy"] for x in vanilla if "eval/accuracy" in x)
    conn = json.loads((runs / "connectivity" / "connectivity.json").read_text())
    assert report["analyses"]["connectivity"]["main"] == conn["pairs"]["main"]["barrier"]["accuracy"]
    floor = json.loads((runs / "connectivity-floor" / "connectivity.json").read_text())
    assert report["analyses"]["connectivity"]["floor"] == \
        floor["pairs"]["main"]["barrier"]["accuracy"]
    points = [p["point"] for p in report["compat_curve"]]
    assert points == [0.0, 0.25, 0.5, 0.75, 1.0]
    start = json.loads((runs / "compat-s1-at0" / "compat.json").read_text())
    assert start["dev"]["accuracy"] == start["old_metrics"]["dev"]["eval/accuracy"]  # v0 = itself
    # the label-free arm read no label and kept its last weights; each bundle's label-free score
    # is its compat run's, beside the labeled decision
    free = json.loads((runs / "few-label-free-s1" / "final" / "lineage.json").read_text())
    assert free["recycled"]["label_free"]["alpha"] == 1.0 and free["metrics"]["best_step"] is None
    decisions = report["label_free_decisions"]
    # the bundles of seeds 0 and 1 on v1, then bundle 1 on v1's exports (not on v0 itself)
    assert [(r["seed"], r["point"]) for r in decisions["bundles"]] == \
        [(0, 1.0), (1, 1.0), (1, 0.25), (1, 0.5), (1, 0.75)]
    for row in decisions["bundles"]:
        run = (f"compat-label-free-s{row['seed']}" if row["point"] == 1
               else f"compat-s1-at{round(100 * row['point'])}")
        compat_json = json.loads((runs / run / "compat.json").read_text())
        score = compat_json["label_free"]
        assert row["agreement"] == score["agreement"] and 0 < row["agreement"] <= 1
        if row["point"] < 1:  # scored with labels in the same run
            assert row["compat_dev"] == compat_json["dev"]["accuracy"]
    md = (out / "report.md").read_text()
    for heading in ("## In short", "## Protocol", "## The upgrade gate", "## Contrasts",
                    "## Deciding without labels", "## Convergence", "## Analyses",
                    "## Wall time per phase"):
        assert heading in md, heading
    for key, t in c.items():
        assert f"| {key} |" in md and f"{t['difference']:+.3f}" in md

    # a second run reuses every finished job and rewrites the same numbers
    again = subprocess.run([sys.executable, "-m", "rtune_ds", "demo", "--quick", "--seeds", "1",
                            "--out", str(out), "--data", str(data)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    second = json.loads((out / "report.json").read_text())
    assert all(x["reused"] for x in second["jobs"])
    assert second["table"] == report["table"] and second["contrasts"] == report["contrasts"]
    # another budget into the same OUT is refused before any launch or download
    other = subprocess.run([sys.executable, "-m", "rtune_ds", "demo", "--out", str(out), "--data",
                            str(data)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "another budget" in other.stderr
