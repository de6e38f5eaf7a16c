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

from rtune_ds.analysis.pairs import FLAGS
from rtune_ds.cli import parse
from rtune_ds.data.tasks import build_task
from rtune_ds.demo import findings as F
from rtune_ds.demo import results
from rtune_ds.demo.plan import (
    METHODS,
    REGIMES,
    Job,
    Planner,
    ds_config_path,
    export_steps,
    load_budget,
)
from rtune_ds.errors import ConfigError
from rtune_ds.resources import DS_CONFIGS

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def test_the_budgets_ds_config_is_shipped_in_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a directory without ds_configs/, as after a wheel install
    for quick in (True, False):
        budget = load_budget(quick, None)
        assert Path(budget["ds_config"]).name == budget["ds_config"]  # a bare name
        found = Path(ds_config_path(None, budget))
        assert found.is_file() and found.parent == DS_CONFIGS
    (tmp_path / "mine.json").write_text("{}")
    assert ds_config_path("mine.json", budget) == "mine.json"  # the user's path, as given
    with pytest.raises(ConfigError, match="--ds-config nope.json: DeepSpeed JSON not found"):
        ds_config_path("nope.json", budget)
    with pytest.raises(ConfigError, match=r"demo.yaml: key 'main.ds_config' \(zero9.json\)"):
        ds_config_path(None, {**budget, "ds_config": "zero9.json"})


def planned(tmp_path: Path, quick: bool) -> tuple[Planner, list[Job], list[Job], dict]:
    """(the planner, stage one before the grid ran, every job after it, the chosen LRs); the main
    budget's v0 is a directory that stands for the released model."""
    b = load_budget(quick, None)
    planner = Planner(b, tmp_path, tmp_path / "configs", None if quick else str(tmp_path / "v0"))
    lrs = {"full": b["tune"]["lr_grid"][1], "few": b["tune"]["lr_grid"][0]}
    return planner, planner.stage_one(), planner.stage_one(lrs) + planner.stage_two(lrs), lrs


@pytest.mark.parametrize("quick", [True, False])
def test_the_plan_names_each_run_once_and_reads_only_what_earlier_jobs_write(tmp_path, quick):
    planner, _, jobs, _ = planned(tmp_path, quick)
    assert len({j.name for j in jobs}) == len(jobs)
    assert len({j.run_dir for j in jobs}) == len(jobs)
    written = set() if quick else {tmp_path / "v0"}
    for job in jobs:
        assert Job(**json.loads(json.dumps(asdict(job)))) == job  # the plan file holds it whole
        # its command line is one `rtune` runs (the demo's launch runs it as parsed here), with
        # its run dir and config
        args = parse(shlex.split(job.command())[1:])
        assert args.handler is not None
        assert (args.config, args.overrides[0]) == (job.config, f"run_dir={job.run_dir}")
        reads = [o.split("=", 1)[1] for o in args.overrides if o.startswith("model.path=")]
        reads += [v for k, v in vars(args).items() if k in ("bundle", "base", *FLAGS) and v]
        assert {Path(r) for r in reads} <= written, job.name
        written.add(Path(job.run_dir) / "final")
        if job.name == "v1":  # and its exports along the way, which compat reads
            written |= {Path(job.run_dir) / "exports" / f"step-{s}"
                        for s in export_steps(planner.b).values()}


@pytest.mark.parametrize("quick", [True, False])
def test_every_arm_runs_each_seed_and_regime_at_the_lr_the_grid_chose(tmp_path, quick):
    planner, first, jobs, lrs = planned(tmp_path, quick)
    b = planner.b
    # before the grid has run, no job is a vanilla run; after it, the chosen grid run of each
    # regime is vanilla's seed 1 under the same name (so a rerun finds it done)
    assert not any(j.info["kind"] == "finetune" and j.info["method"] == "vanilla" for j in first)
    assert [j.name for j in first] == [j.name for j in jobs[:len(first)]]
    for regime in REGIMES:
        grid = [j for j in jobs if j.info.get("lr") is not None and j.info["regime"] == regime]
        assert sorted(j.info["lr"] for j in grid) == sorted(b["tune"]["lr_grid"])
        assert [j.info["lr"] for j in grid if j.info["kind"] == "finetune"] == [lrs[regime]]
        for method in METHODS:
            arm = [j for j in jobs if j.info.get("method") == method and j.info["base"] == "v1"
                   and j.info["regime"] == regime and j.info["kind"] != "grid"]
            assert sorted(j.info["seed"] for j in arm) == list(range(1, b["seeds"] + 1)), method
            for j in arm:
                assert f"train.lr={lrs[regime]}" in j.overrides, j.name
                assert f"train.patience={b['tune'][regime]['patience']}" in j.overrides, j.name
                assert ("task.few_shot" in " ".join(j.overrides)) == (regime == "few"), j.name
    points = sorted(j.info["point"] for j in jobs if j.info.get("method") == "compat"
                    and j.info["tuning"] == "full")
    assert points == [0.0, *b["cpt"]["exports"], 1.0]


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
    """A prepared-data directory from the fixture corpora: both corpora as they are, and the two
    tasks built by the real rules with thresholds small enough for a few hundred records."""
    out.mkdir(parents=True)
    for corpus, field, task in (("general.jsonl", "lexname", "supersense"),
                                ("computing.jsonl", "category", "foldoc_category")):
        shutil.copy(FIXTURES / corpus, out / corpus)
        splits, _ = build_task(FIXTURES / corpus, field, max_classes=5, min_count=8)
        for split, rows in splits.items():
            (out / f"{task}_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@pytest.mark.slow
def test_demo_quick_report_matches_the_runs(tmp_path):
    data = fixture_data(tmp_path / "data")
    out = tmp_path / "demo"
    # one seed: the protocol end to end at half the jobs (what 2+ seeds decide is the findings
    # tests' and the plan tests')
    proc = subprocess.run([sys.executable, "-m", "rtune_ds", "demo", "--quick", "--seeds", "1",
                           "--out", str(out), "--data", str(data), "--nproc", "2"], cwd=ROOT, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("report.md", "report.json", "results.png", "convergence.png", "pretraining.png",
                 "compat.png", "connectivity.png", "similarity.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    runs = out / "runs"
    assert not any(x["reused"] for x in report["jobs"])
    v1 = json.loads((out / "runs" / "v1" / "summary.json").read_text())
    assert report["precision"] == {"chosen": v1["precision"], "why": v1["precision_why"]}
    assert v1["precision_why"].startswith("auto: ")  # the budget leaves it to the hardware
    for job in report["jobs"]:  # every run dir has its own TensorBoard events
        if job["name"] not in ("similarity",) and not job["name"].startswith("compat-"):
            assert list((runs / job["name"] / "tensorboard").glob("**/events.*")), job

    # the grid chose, per regime, the LR of its best dev accuracy, and every arm used it
    for regime, rows in report["grid"].items():
        best = max(rows, key=lambda r: r["dev"])
        assert report["chosen_lr"][regime] == best["lr"]
        for name, r in report["runs"].items():
            if r["base"] == "v1" and r["regime"] == regime and r["method"] != "compat":
                lineage = json.loads((runs / name / "final" / "lineage.json").read_text())
                if "lr" not in r:
                    assert lineage["config"]["train"]["lr"] == best["lr"], name
    # every tuned / recycled run: the report's numbers are its summary.json or compat.json values
    for name, r in report["runs"].items():
        if r["source"] == "compat.json":
            c = json.loads((runs / name / "compat.json").read_text())
            assert (r["dev"], r["test"]) == (c["dev"]["accuracy"], c["test"]["accuracy"])
            assert r["old_dev"] == c["old_metrics"]["dev"]["eval/accuracy"]
        else:
            s = json.loads((runs / name / "summary.json").read_text())
            assert (r["dev"], r["test"]) == (s["metrics"]["dev"]["eval/accuracy"],
                                             s["metrics"]["test"]["eval/accuracy"])
            assert r["majority"] == s["metrics"]["dev_majority_baseline"]
            cap = json.loads((runs / name / "final" / "lineage.json").read_text())[
                "config"]["train"]["max_steps"]
            assert r["early_stopped"] == s["early_stopped"] == (s["step"] < cap), name
    # the table's rows are means of those runs; each arm has every seed in both regimes
    for row in report["table"]:
        tests = [report["runs"][n]["test"] for n in row["runs"]]
        assert row["test_per_seed"] == tests
        assert row["test_mean"] == pytest.approx(statistics.fmean(tests), abs=0)
    arms = {row["run"]: row for row in report["table"] if row["run"].startswith("v1 · ")}
    assert len(arms) == 8 and all(r["seeds"] == [1] for r in arms.values())
    f = report["findings"]
    assert f["distill_beats_vanilla_few_shot"]["evidence"]["distill_test"] == \
        arms["v1 · distill · few-shot"]["test_mean"]
    conn = json.loads((runs / "connectivity" / "connectivity.json").read_text())
    assert f["mode_connectivity"]["evidence"]["barrier_main"] == \
        conn["pairs"]["main"]["barrier"]["accuracy"]
    sim = json.loads((runs / "similarity" / "similarity.json").read_text())
    assert f["similar_attention_heads"]["evidence"]["js_main"] == sim["pairs"]["main"]["mean"]
    # compat along v1's run: v0 itself, the exports, the final weights
    points = [p["point"] for p in report["compat_curve"]["full"]]
    assert points == [0.0, 0.25, 0.5, 0.75, 1.0]
    final = json.loads((runs / "compat-full-100" / "compat.json").read_text())
    assert f["compat_far_above_chance"]["evidence"]["full"]["compat_dev"] == \
        final["dev"]["accuracy"]
    start = json.loads((runs / "compat-full-0" / "compat.json").read_text())
    assert start["dev"]["accuracy"] == start["old_metrics"]["dev"]["eval/accuracy"]  # v0 = itself
    for key in F.CLAIMS:
        assert f[key]["reproduced"] in ("yes", "no", "partly"), key
    # convergence comes from the runs' metrics.jsonl
    pair = report["convergence"]["pairs"][0]
    vanilla = [json.loads(x) for x in (runs / pair["runs"]["vanilla"] / "metrics.jsonl")
               .read_text().splitlines()]
    assert pair["vanilla_best"] == max(x["eval/accuracy"] for x in vanilla if "eval/accuracy" in x)
    md = (out / "report.md").read_text()
    for row in report["table"]:
        assert (f"| {row['task']} | {row['run']} | {row['dev_mean']:.3f} | "
                f"{row['test_mean']:.3f}") in md
    assert "## Protocol" in md and "## Wall time per phase" in md

    # a second run reuses every finished job and rewrites the same numbers
    again = subprocess.run([sys.executable, "-m", "rtune_ds", "demo", "--quick", "--seeds", "1",
                            "--out", str(out), "--data", str(data)], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    second = json.loads((out / "report.json").read_text())
    assert all(x["reused"] for x in second["jobs"])
    assert second["table"] == report["table"]
    # another budget into the same OUT is refused before any launch or download
    other = subprocess.run([sys.executable, "-m", "rtune_ds", "demo", "--out", str(out), "--data",
                            str(data)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "another budget" in other.stderr
