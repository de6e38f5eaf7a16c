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

from rtune_ds.cli import parser
from rtune_ds.data.tasks import build_task
from rtune_ds.demo.plan import Job, ds_config_path, load_budget, plan_jobs
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
    with pytest.raises(ConfigError, match=r"demo.yaml: key 'full.ds_config' \(zero9.json\)"):
        ds_config_path(None, {**budget, "ds_config": "zero9.json"})


@pytest.mark.parametrize("quick", [True, False])
def test_the_plan_names_each_run_once_and_reads_only_what_earlier_jobs_write(tmp_path, quick):
    jobs = plan_jobs(load_budget(quick, None), tmp_path, tmp_path / "configs")
    assert len({j.name for j in jobs}) == len(jobs)
    assert len({j.run_dir for j in jobs}) == len(jobs)
    for n, job in enumerate(jobs):
        reads = [o.split("=", 1)[1] for o in job.overrides if o.startswith("model.path=")]
        reads += [job.options[k] for k in ("bundle", "base") if k in job.options]
        reads += list(job.options.get("pairs", {}).values())
        assert {Path(r) for r in reads} <= {Path(j.run_dir) / "final" for j in jobs[:n]}, job.name
        assert Job(**json.loads(json.dumps(asdict(job)))) == job  # the plan file holds it whole
        # its command line is one `rtune` runs: the same command, run dir and config
        args = parser().parse_args(shlex.split(job.command())[1:])
        assert (args.analyze_command if args.command == "analyze" else args.command) == job.recipe
        assert (args.config, args.overrides[0]) == (job.config, f"run_dir={job.run_dir}")


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
    proc = subprocess.run([sys.executable, "-m", "rtune_ds", "demo", "--quick", "--out", str(out),
                           "--data", str(data), "--nproc", "2"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("report.md", "report.json", "results.png", "convergence.png", "pretraining.png",
                 "connectivity.png", "similarity.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    runs = out / "runs"
    assert not any(x["reused"] for x in report["jobs"])
    for job in report["jobs"]:  # every run dir has its own TensorBoard events
        if job["name"] not in ("similarity",):
            assert list((runs / job["name"] / "tensorboard").glob("**/events.*")), job

    # every tuned / recycled run: the report's numbers are its summary.json or compat.json values
    for name, r in report["runs"].items():
        if r["source"] == "compat.json":
            c = json.loads((runs / name / "compat.json").read_text())
            assert (r["dev"], r["test"]) == (c["dev"]["accuracy"], c["test"]["accuracy"])
            assert r["old_dev"] == c["old_metrics"]["dev"]["eval/accuracy"]
        else:
            m = json.loads((runs / name / "summary.json").read_text())["metrics"]
            assert (r["dev"], r["test"]) == (m["dev"]["eval/accuracy"],
                                             m["test"]["eval/accuracy"])
            assert r["majority"] == m["dev_majority_baseline"]
    # the table's rows are means of those runs; the findings quote the same numbers
    for row in report["table"]:
        tests = [report["runs"][n]["test"] for n in row["runs"]]
        assert row["test_per_seed"] == tests
        assert row["test_mean"] == pytest.approx(statistics.fmean(tests), abs=0)
    few = {row["run"]: row for row in report["table"] if "few-shot" in row["run"]
           and row["task"] == "foldoc_category" and row["run"].startswith("v1")}
    assert set(few) == {f"v1 · {m} · few-shot" for m in ("vanilla", "init", "distill",
                                                           "init+distill")}
    f = report["findings"]
    assert f["distill_beats_vanilla_few_shot"]["evidence"]["distill_mean"] == \
        few["v1 · distill · few-shot"]["test_mean"]
    conn = json.loads((runs / "connectivity" / "connectivity.json").read_text())
    assert f["mode_connectivity"]["evidence"]["barrier_main"] == \
        conn["pairs"]["main"]["barrier"]["accuracy"]
    assert f["mode_connectivity"]["evidence"]["barrier_control"] == \
        conn["pairs"]["control"]["barrier"]["accuracy"]
    sim = json.loads((runs / "similarity" / "similarity.json").read_text())
    assert f["similar_attention_heads"]["evidence"]["js_main"] == sim["pairs"]["main"]["mean"]
    compat = json.loads((runs / "recycle-compat-full" / "compat.json").read_text())
    assert f["compat_far_above_chance"]["evidence"][0]["compat_dev"] == compat["dev"]["accuracy"]
    for key in ("v0_beats_random_init", "v1_beats_v0_on_new_domain", "compat_far_above_chance",
                "init_converges_faster", "distill_beats_vanilla_few_shot", "init_distill_best",
                "mode_connectivity", "similar_attention_heads"):
        assert f[key]["reproduced"] in ("yes", "no", "partly"), key
    # steps to target come from the runs' metrics.jsonl
    vanilla = [json.loads(x) for x in (runs / "foldoc_category-v1-full-full" / "metrics.jsonl")
               .read_text().splitlines()]
    best = max(x["eval/accuracy"] for x in vanilla if "eval/accuracy" in x)
    assert report["convergence"]["pairs"][0]["vanilla_best"] == best
    md = (out / "report.md").read_text()
    for row in report["table"]:
        assert (f"| {row['task']} | {row['run']} | {row['dev_mean']:.3f} | "
                f"{row['test_mean']:.3f}") in md

    # a second run reuses every finished job and rewrites the same numbers
    again = subprocess.run([sys.executable, "-m", "rtune_ds", "demo", "--quick", "--out",
                            str(out), "--data", str(data)], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    second = json.loads((out / "report.json").read_text())
    assert all(x["reused"] for x in second["jobs"])
    assert second["table"] == report["table"]
    # another budget into the same OUT is refused before any launch
    other = subprocess.run([sys.executable, "-m", "rtune_ds", "demo", "--out", str(out), "--data",
                            str(data)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "another budget" in other.stderr
