"""rtune demo: the paper's whole story on real data with one command. Each step is an `rtune
<command>` job with its own run dir OUT/runs/<name>/ (TensorBoard, metrics.jsonl, summary); all
the jobs that are not done yet run one after another inside ONE deepspeed launch (the ranks start
once: at this scale a start-up costs more than a job), so running the demo again into the same
OUT continues where it stopped:

1. data: the prepared corpora and tasks from --data DIR, else OUT/data (prepared there with
   `rtune data prepare` when missing); each task's splits are sampled (seeded) into OUT/tasks so
   training and evaluation fit the budget;
2. pretrain: v0 on the general domain (WordNet glosses); v1 continually pretrained from v0 with
   the recipe (LR from v0's minimum, cosine to 1%, the blend switching to the computing domain,
   FOLDOC); rand, the random-init control: the same preset, seed and tokenizer, one step at an LR
   of 1e-12 (in fp32 the weights stay those v0 started from);
3. tune: v0 and rand on both tasks (supersense: general domain; foldoc_category: computing),
   full fine-tuning and LoRA, full data and few-shot, with the same settings; v1 on the
   computing task (vanilla);
4. recycle the v0 bundles of the computing task to v1: compat of the full-FT and LoRA bundles;
   init with full data; few-shot, one run per seed: vanilla (plain fine-tuning of v1), init,
   distill, init+distill;
5. analyze connectivity and similarity between the computing-task models tuned on v0 and on v1,
   with a control pair (the same v0 model against the one tuned on rand);
6. report: OUT/report.md, OUT/report.json and PNG plots; every number is read from the runs'
   files (summary.json, compat.json, metrics.jsonl, connectivity.json, similarity.json).

The budget (model preset, steps, lengths, sample sizes, seeds) of `--quick` and of the full demo
is data: rtune_ds/resources/demo.yaml.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rtune_ds.analysis.convergence import steps_to_target
from rtune_ds.errors import ConfigError, RunError
from rtune_ds.io import pyplot, save_figure, save_json, save_text
from rtune_ds.launch import launcher_command, run_launch
from rtune_ds.resources import DEMO_BUDGETS

CORPORA = ("general.jsonl", "computing.jsonl")
TASKS = {"supersense": "general", "foldoc_category": "computing"}  # task -> its domain
SPLITS = ("train", "dev", "test")
REQUIRED = CORPORA + tuple(f"{t}_{s}.jsonl" for t in TASKS for s in SPLITS)
OLD_TASK = "supersense"  # v0's own domain
NEW_TASK = "foldoc_category"  # the domain v1 is continually pretrained on; recycling happens here
FRACTION = 0.95  # steps-to-target: the first eval reaching 95% of vanilla's best dev accuracy
METRIC = "eval/accuracy"
FEW_METHODS = ("vanilla", "init", "distill", "init+distill")


# ---------------------------------------------------------------- the plan

@dataclass
class Job:
    """One launch: `rtune <args>` into OUT/runs/<name>, done when `done` exists there."""
    name: str
    args: list[str]
    done: str
    info: dict = field(default_factory=dict)  # what the report needs to know about the run


def load_budget(quick: bool, seeds: int | None, path: Path = DEMO_BUDGETS) -> dict:
    budgets = yaml.safe_load(path.read_text())
    b = dict(budgets["quick" if quick else "full"])
    b["profile"] = "quick" if quick else "full"
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds {seeds}: must be >= 1")
        b["seeds"] = seeds
    return b


def pretrain_configs(b: dict, data: Path, runs: Path) -> dict[str, dict]:
    """The RunConfigs of v0, v1 and rand (written to OUT/configs, launched as they are)."""
    p = b["pretrain"]
    common_train = {"micro_batch_size": p["micro_batch_size"], "grad_accum": 1,
                    "eval_every": p["eval_every"], "eval_max_blocks": p["eval_max_blocks"],
                    "save_every": 0, "log_every": 5, "precision": b["precision"]}
    v0 = {"run_dir": str(runs / "v0"), "seed": 0, "model": {"preset": b["preset"]},
          "data": {"train": [str(data / "general.jsonl")], "seq_len": p["seq_len"],
                   "eval_fraction": p["eval_fraction"]},
          "train": {**common_train, "max_steps": p["v0_steps"], "lr": p["lr"],
                    "schedule": "cosine", "warmup_steps": p["warmup_steps"],
                    "min_lr_ratio": p["min_lr_ratio"]}}
    mix = p["v1_mix"]
    v1 = {"run_dir": str(runs / "v1"), "seed": 0, "model": {"path": str(runs / "v0" / "final")},
          "data": {"train": [{"path": str(data / "general.jsonl"), "weight": mix[0][0]},
                             {"path": str(data / "computing.jsonl"), "weight": mix[0][1]}],
                   "switch": {"train": [{"path": str(data / "general.jsonl"), "weight": mix[1][0]},
                                        {"path": str(data / "computing.jsonl"),
                                         "weight": mix[1][1]}]},
                   "seq_len": p["seq_len"], "eval_fraction": p["eval_fraction"]},
          "train": {**common_train, "max_steps": p["v1_steps"], "lr": None, "schedule": "recipe"}}
    # rand: v0's preset, seed and data (so the same tokenizer), one step at a vanishing LR in fp32
    rand = {**v0, "run_dir": str(runs / "rand"),
            "train": {**common_train, "max_steps": 1, "lr": 1.0e-12, "schedule": "constant",
                      "warmup_steps": 0, "eval_every": 0, "precision": "fp32"}}
    return {"v0": v0, "v1": v1, "rand": rand}


def task_config(b: dict, task: str, tasks: Path, runs: Path) -> dict:
    t = b["tune"]
    return {"run_dir": str(runs / f"{task}-template"), "seed": 1,
            "model": {"path": str(runs / "v0" / "final")},
            "task": {"type": "classification", "train": str(tasks / f"{task}_train.jsonl"),
                     "dev": str(tasks / f"{task}_dev.jsonl"),
                     "test": str(tasks / f"{task}_test.jsonl"), "max_len": t["max_len"]},
            "tuning": {"method": "full", "lora": {"r": t["lora_r"], "alpha": t["lora_alpha"]}},
            "train": {"max_steps": t["steps"], "micro_batch_size": t["micro_batch_size"],
                      "global_batch_size": t["global_batch_size"], "lr": t["lr"],
                      "warmup_steps": t["warmup_steps"], "eval_every": t["eval_every"],
                      "save_every": 0, "log_every": 5, "precision": b["precision"]}}


def plan_jobs(b: dict, out: Path, configs: Path, ds: str) -> list[Job]:
    """Every launch of the demo, in order (later ones read earlier ones' outputs)."""
    runs, t, seeds = out / "runs", b["tune"], list(range(1, b["seeds"] + 1))
    base = {v: str(runs / v / "final") for v in ("v0", "v1", "rand")}
    dsc = ["--ds-config", ds]
    jobs = [Job(v, ["pretrain", "--config", str(configs / f"{v}.yaml"), *dsc], "final/config.json",
                {"kind": "pretrain"}) for v in ("v0", "v1", "rand")]
    few = [f"task.few_shot={t['few_shot']}", f"train.max_steps={t['few_shot_steps']}",
           f"train.eval_every={t['few_shot_eval_every']}"]
    lora = ["tuning.method=lora", f"train.lr={t['lora_lr']}"]

    def tune(task: str, on: str, method: str, regime: str, seed: int = 1,
             name: str | None = None) -> Job:
        name = name or f"{task}-{on}-{method}-{regime}" + (f"-s{seed}" if regime == "few" else "")
        extra = (lora if method == "lora" else []) + (few if regime == "few" else [])
        return Job(name, ["finetune", "--config", str(configs / f"{task}.yaml"), *dsc,
                          f"model.path={base[on]}", f"run_dir={runs / name}", f"seed={seed}",
                          *extra], "summary.json",
                   {"kind": "finetune", "task": task, "base": on, "tuning": method,
                    "regime": regime, "seed": seed, "method": "vanilla" if on == "v1" else None})

    groups = b["groups"]
    for task in TASKS:
        for on in ("v0", "rand"):
            jobs.append(tune(task, on, "full", "full"))
            if "lora" in groups:
                jobs.append(tune(task, on, "lora", "full"))
            if "few_shot_controls" in groups:
                jobs.append(tune(task, on, "full", "few"))
    old_full = runs / f"{NEW_TASK}-v0-full-full" / "final"
    old_lora = runs / f"{NEW_TASK}-v0-lora-full" / "final"
    jobs.append(tune(NEW_TASK, "v1", "full", "full"))  # vanilla, full data

    def recycle(method: str, bundle: Path, regime: str, name: str, seed: int = 1,
                tuning: str = "full") -> Job:
        extra = (few if regime == "few" else []) + (
            [f"train.lr={t['lora_lr']}"] if tuning == "lora" else [])
        return Job(name, ["recycle", "--config", str(configs / f"{NEW_TASK}.yaml"), *dsc,
                          "--method", method, "--bundle", str(bundle), "--base", base["v1"],
                          f"run_dir={runs / name}", f"seed={seed}", *extra],
                   "compat.json" if method == "compat" else "summary.json",
                   {"kind": "recycle", "task": NEW_TASK, "base": "v1", "tuning": tuning,
                    "regime": regime, "seed": seed, "method": method, "bundle": str(bundle)})

    jobs.append(recycle("compat", old_full, "full", "recycle-compat-full"))
    if "lora" in groups:
        jobs.append(recycle("compat", old_lora, "full", "recycle-compat-lora", tuning="lora"))
    jobs.append(recycle("init", old_full, "full", "recycle-init-full"))
    for seed in seeds:
        jobs.append(tune(NEW_TASK, "v1", "full", "few", seed, f"recycle-vanilla-few-s{seed}"))
        for method in FEW_METHODS[1:]:
            jobs.append(recycle(method, old_full, "few",
                                f"recycle-{method.replace('+', '_')}-few-s{seed}", seed))
    # analyses on the computing task: A tuned on v0, B on v1; control: A against the one on rand
    pair = ["--bundle-a", str(old_full), "--base-a", base["v0"],
            "--bundle-b", str(runs / f"{NEW_TASK}-v1-full-full" / "final"), "--base-b", base["v1"],
            "--control-a", str(old_full), "--control-base-a", base["v0"],
            "--control-b", str(runs / f"{NEW_TASK}-rand-full-full" / "final"),
            "--control-base-b", base["rand"], "--config", str(configs / f"{NEW_TASK}.yaml")]
    a = b["analysis"]
    jobs.append(Job("connectivity", ["analyze", "connectivity", *pair, *dsc,
                                     "--points", str(a["points"]),
                                     f"run_dir={runs / 'connectivity'}"],
                    "connectivity.json", {"kind": "analysis"}))
    jobs.append(Job("similarity", ["analyze", "similarity", *pair,
                                   "--max-examples", str(a["similarity_examples"]),
                                   f"run_dir={runs / 'similarity'}"],
                    "similarity.json", {"kind": "analysis"}))
    return jobs


# ---------------------------------------------------------------- data

def data_dir(out: Path, data: str | None) -> Path:
    """--data DIR as it is, else OUT/data, prepared there by `rtune data prepare` if missing."""
    if data is not None:
        d = Path(data)
        missing = [f for f in REQUIRED if not (d / f).is_file()]
        if missing:
            raise ConfigError(f"--data {data}: not a prepared data directory (missing "
                              f"{', '.join(missing)}); make one with `rtune data prepare --out "
                              f"{data}`")
        return d.resolve()
    d = out / "data"
    if all((d / f).is_file() for f in REQUIRED):
        print(f"rtune demo: reusing the prepared data in {d}", file=sys.stderr)
        return d
    from rtune_ds.recipes import prepare_data

    print(f"+ rtune data prepare --out {d}", file=sys.stderr, flush=True)
    prepare_data.run(argparse.Namespace(out=str(d), cache_dir=None, wordnet_dir=None,
                                        foldoc_dir=None))
    return d


def sample_tasks(data: Path, tasks: Path, sizes: dict) -> dict:
    """Each split of each task cut to at most sizes[split] records, a seeded sample kept in file
    order, written to OUT/tasks (rewritten only when it changes); returns the record counts."""
    tasks.mkdir(parents=True, exist_ok=True)
    counts = {}
    for task in TASKS:
        for split in SPLITS:
            lines = (data / f"{task}_{split}.jsonl").read_text().splitlines()
            keep = sorted(random.Random(f"{task}/{split}").sample(
                range(len(lines)), min(sizes[split], len(lines))))
            text = "".join(lines[i] + "\n" for i in keep)
            path = tasks / f"{task}_{split}.jsonl"
            if not path.is_file() or path.read_text() != text:
                save_text(text, path)
            counts[f"{task}_{split}"] = len(keep)
    return counts


# ---------------------------------------------------------------- reading the runs

def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_result(job: Job, run: Path) -> dict:
    """The scores of one tuning or recycling run, from its summary.json or compat.json."""
    info = {k: v for k, v in job.info.items() if k != "bundle"}
    if job.done == "compat.json":
        c = read_json(run / "compat.json")
        old = c["old_metrics"]
        return {**info, "source": "compat.json", "dev": c["dev"]["accuracy"],
                "test": c["test"]["accuracy"], "dev_f1": c["dev"]["f1"], "test_f1": c["test"]["f1"],
                "majority": c["dev_majority_baseline"], "old_dev": old["dev"][METRIC],
                "old_test": old["test"][METRIC]}
    s = read_json(run / "summary.json")
    m = s["metrics"]
    return {**info, "source": "summary.json", "dev": m["dev"][METRIC], "test": m["test"][METRIC],
            "dev_f1": m["dev"]["eval/f1"], "test_f1": m["test"]["eval/f1"],
            "majority": m["dev_majority_baseline"], "best_step": m["best_step"],
            "steps": s["step"], "sizes": s["sizes"]}


def dev_curve(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r[METRIC]) for r in read_metrics(run) if METRIC in r]


def to_target(run: Path, vanilla_best: float) -> dict | None:
    hit = steps_to_target(read_metrics(run), METRIC, vanilla_best, FRACTION)
    return None if hit is None else {"step": hit["step"], "value": hit["value"],
                                     "tokens": hit["tokens"]}


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs)


def std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


# ---------------------------------------------------------------- the report

GROUPS = [  # (label, task, selector over run results) in table order
    ("v0 · full FT · full data", OLD_TASK, dict(base="v0", tuning="full", regime="full")),
    ("rand · full FT · full data", OLD_TASK, dict(base="rand", tuning="full", regime="full")),
    ("v0 · LoRA · full data", OLD_TASK, dict(base="v0", tuning="lora", regime="full")),
    ("rand · LoRA · full data", OLD_TASK, dict(base="rand", tuning="lora", regime="full")),
    ("v0 · full FT · few-shot", OLD_TASK, dict(base="v0", tuning="full", regime="few")),
    ("rand · full FT · few-shot", OLD_TASK, dict(base="rand", tuning="full", regime="few")),
    ("v0 · full FT · full data", NEW_TASK, dict(base="v0", tuning="full", regime="full",
                                                kind="finetune")),
    ("rand · full FT · full data", NEW_TASK, dict(base="rand", tuning="full", regime="full")),
    ("v1 · full FT · full data (vanilla)", NEW_TASK, dict(base="v1", tuning="full",
                                                          regime="full", kind="finetune")),
    ("v0 · LoRA · full data", NEW_TASK, dict(base="v0", tuning="lora", regime="full",
                                             kind="finetune")),
    ("rand · LoRA · full data", NEW_TASK, dict(base="rand", tuning="lora", regime="full")),
    ("v0 · full FT · few-shot", NEW_TASK, dict(base="v0", tuning="full", regime="few")),
    ("rand · full FT · few-shot", NEW_TASK, dict(base="rand", tuning="full", regime="few")),
    ("v0 full-FT bundle on v1 · compat (no training)", NEW_TASK,
     dict(method="compat", tuning="full")),
    ("v0 LoRA bundle on v1 · compat (no training)", NEW_TASK, dict(method="compat",
                                                                   tuning="lora")),
    ("v1 · init from the v0 bundle · full data", NEW_TASK, dict(method="init", regime="full")),
    ("v1 · vanilla · few-shot", NEW_TASK, dict(method="vanilla", regime="few")),
    ("v1 · init · few-shot", NEW_TASK, dict(method="init", regime="few")),
    ("v1 · distill · few-shot", NEW_TASK, dict(method="distill", regime="few")),
    ("v1 · init+distill · few-shot", NEW_TASK, dict(method="init+distill", regime="few")),
]


def table(results: dict[str, dict]) -> list[dict]:
    rows = []
    for label, task, sel in GROUPS:
        names = sorted((n for n, r in results.items()
                        if r.get("task") == task and all(r.get(k) == v for k, v in sel.items())),
                       key=lambda n: results[n].get("seed", 0))
        if not names:
            continue
        dev = [results[n]["dev"] for n in names]
        test = [results[n]["test"] for n in names]
        rows.append({"task": task, "run": label, "runs": names,
                     "seeds": [results[n].get("seed") for n in names],
                     "dev_mean": mean(dev), "test_mean": mean(test), "test_std": std(test),
                     "dev_per_seed": dev, "test_per_seed": test,
                     "majority": results[names[0]]["majority"]})
    return rows


def row_of(rows: list[dict], task: str, label: str) -> dict | None:
    return next((r for r in rows if r["task"] == task and r["run"] == label), None)


def verdict(flags: list[bool]) -> str:
    if not flags:
        return "not run"
    return "yes" if all(flags) else ("partly" if any(flags) else "no")


def findings(rows: list[dict], results: dict, conv: dict, conn: dict, sim: dict) -> dict:
    """The controls and each finding of the paper: the criterion, the numbers, and the verdict."""
    out = {}

    def test_of(task, label):
        r = row_of(rows, task, label)
        return None if r is None else r["test_mean"]

    # controls: does pretraining help at all here?
    comps = []
    for task in TASKS:
        for regime in ("full FT · full data", "LoRA · full data", "full FT · few-shot"):
            a, r = test_of(task, f"v0 · {regime}"), test_of(task, f"rand · {regime}")
            if a is not None and r is not None:
                comps.append({"task": task, "tuning": regime, "v0_test": a, "rand_test": r,
                              "v0_wins": a > r})
    own = [c["v0_wins"] for c in comps if c["task"] == OLD_TASK]
    out["v0_beats_random_init"] = {
        "claim": "pretraining helps: v0 beats the same preset from random init, tuned the same "
                 f"way, on its own domain's task ({OLD_TASK})",
        "criterion": "mean test accuracy of the v0-tuned runs > that of the rand-tuned runs, for "
                     "each tuning setting (the computing task is listed too)",
        "evidence": comps, "reproduced": verdict(own)}
    v1, v0 = (test_of(NEW_TASK, "v1 · full FT · full data (vanilla)"),
              test_of(NEW_TASK, "v0 · full FT · full data"))
    out["v1_beats_v0_on_new_domain"] = {
        "claim": f"continual pretraining helps: v1 beats v0 on the computing task ({NEW_TASK})",
        "criterion": "test accuracy of v1 tuned (full FT, full data) > that of v0 tuned the same way",
        "evidence": {"v1_test": v1, "v0_test": v0},
        "reproduced": verdict([] if v1 is None or v0 is None else [v1 > v0])}

    # 1. compat far above chance
    compat = [r for r in results.values() if r.get("method") == "compat"]
    ev, flags = [], []
    for r in compat:
        keeps = ((r["dev"] - r["majority"]) / (r["old_dev"] - r["majority"])
                 if r["old_dev"] > r["majority"] else None)
        ok = keeps is not None and keeps >= 0.5
        flags.append(ok)
        ev.append({"bundle": r["tuning"], "compat_dev": r["dev"], "compat_test": r["test"],
                   "old_dev_on_v0": r["old_dev"], "majority_baseline": r["majority"],
                   "gain_kept": keeps})
    out["compat_far_above_chance"] = {
        "claim": "a bundle tuned on v0 still works on v1 with no training, far above chance",
        "criterion": "on v1, the bundle keeps at least half of its dev-accuracy gain over the "
                     "majority-class baseline: (compat − majority) / (dev on v0 − majority) >= 0.5",
        "evidence": ev, "reproduced": verdict(flags)}

    # 2. init converges faster than vanilla
    ev, flags = [], []
    for c in conv["pairs"]:
        if c["methods"].get("init") is None and c["methods"].get("vanilla") is None:
            continue
        v, i = c["methods"].get("vanilla"), c["methods"].get("init")
        vs = v["step"] if v else None
        is_ = i["step"] if i else None
        ok = is_ is not None and (vs is None or is_ < vs)
        flags.append(ok)
        ev.append({"regime": c["regime"], "seed": c["seed"],
                   "target": c["vanilla_best"] * c["fraction"],
                   "vanilla_step": vs, "init_step": is_, "init_faster": ok})
    out["init_converges_faster"] = {
        "claim": "initialising from the recycled bundle converges faster than vanilla tuning of v1",
        "criterion": f"init reaches {FRACTION:.0%} of the vanilla run's best dev accuracy in fewer "
                     "steps than vanilla, in each comparison (full data, and every few-shot seed)",
        "evidence": ev, "reproduced": verdict(flags)}

    # 3. distill beats vanilla few-shot; 4. init+distill best
    few = {m: row_of(rows, NEW_TASK, f"v1 · {m} · few-shot") for m in FEW_METHODS}
    if few["vanilla"] and few["distill"]:
        d, v = few["distill"], few["vanilla"]
        wins = sum(x > y for x, y in zip(d["test_per_seed"], v["test_per_seed"]))
        out["distill_beats_vanilla_few_shot"] = {
            "claim": "few-shot, distilling from the old model beats vanilla tuning of v1",
            "criterion": "mean test accuracy over seeds: distill > vanilla",
            "evidence": {"distill_mean": d["test_mean"], "vanilla_mean": v["test_mean"],
                         "seeds_won": f"{wins}/{len(d['test_per_seed'])}"},
            "reproduced": verdict([d["test_mean"] > v["test_mean"]])}
    if all(few.values()):
        best = max(FEW_METHODS, key=lambda m: few[m]["test_mean"])
        out["init_distill_best"] = {
            "claim": "few-shot, init+distill is the best of the four",
            "criterion": "mean test accuracy over seeds: init+distill >= vanilla, init, distill",
            "evidence": {m: few[m]["test_mean"] for m in FEW_METHODS} | {"best": best},
            "reproduced": verdict([all(few["init+distill"]["test_mean"] >= few[m]["test_mean"]
                                       for m in FEW_METHODS)])}

    # 5. mode connectivity; 6. similar attention heads
    if conn:
        b = {name: p["barrier"]["accuracy"] for name, p in conn["pairs"].items()}
        low = {name: min(c["accuracy"] for c in p["curve"]) for name, p in conn["pairs"].items()}
        out["mode_connectivity"] = {
            "claim": "the models tuned on v0 and on v1 are linearly mode connected, more than a "
                     "control pair not related by continual pretraining",
            "criterion": "accuracy barrier along the straight line (max shortfall below the chord "
                         "between the endpoints): main pair < control pair",
            "evidence": {"barrier_main": b["main"], "barrier_control": b.get("control"),
                         "lowest_accuracy_main": low["main"],
                         "lowest_accuracy_control": low.get("control")},
            "reproduced": verdict([] if "control" not in b else [b["main"] < b["control"]])}
    if sim:
        js = {name: p["mean"] for name, p in sim["pairs"].items()}
        out["similar_attention_heads"] = {
            "claim": "the attention heads of the models tuned on v0 and on v1 behave alike, more "
                     "than those of the control pair",
            "criterion": "mean Jensen–Shannon divergence of the heads' attention on the same dev "
                         "inputs: main pair < control pair",
            "evidence": {"js_main": js["main"], "js_control": js.get("control"),
                         "js_max": sim["js_max"]},
            "reproduced": verdict([] if "control" not in js else [js["main"] < js["control"]])}
    return out


def convergence(jobs: list[Job], runs: Path, results: dict) -> dict:
    """Steps to FRACTION of the vanilla run's best dev accuracy: full data (vanilla v1 vs init)
    and, per seed, few-shot (vanilla, init, distill, init+distill)."""
    pairs = []
    vanilla_full = f"{NEW_TASK}-v1-full-full"
    if vanilla_full in results:
        best = max(v for _, v in dev_curve(runs / vanilla_full))
        methods = {"vanilla": to_target(runs / vanilla_full, best)}
        if "recycle-init-full" in results:
            methods["init"] = to_target(runs / "recycle-init-full", best)
        pairs.append({"regime": "full", "seed": 1, "vanilla_best": best, "fraction": FRACTION,
                      "runs": {"vanilla": vanilla_full, "init": "recycle-init-full"},
                      "methods": methods})
    for job in jobs:
        if job.info.get("regime") == "few" and job.info.get("method") == "vanilla":
            seed = job.info["seed"]
            best = max(v for _, v in dev_curve(runs / job.name))
            names = {m: f"recycle-{m.replace('+', '_')}-few-s{seed}" for m in FEW_METHODS}
            methods = {m: to_target(runs / n, best) for m, n in names.items() if n in results}
            pairs.append({"regime": "few", "seed": seed, "vanilla_best": best, "fraction": FRACTION,
                          "runs": names, "methods": methods})
    return {"metric": METRIC, "fraction": FRACTION, "pairs": pairs}


def pretraining(runs: Path) -> dict:
    """LM eval losses: v0 at its first and last eval; v1 at step 0 (= v0's weights) and at the
    end, per domain."""
    out = {}
    for v in ("v0", "v1"):
        evals = [r for r in read_metrics(runs / v) if "eval/loss" in r]
        s = read_json(runs / v / "summary.json")
        out[v] = {"steps": s["step"], "tokens": s["tokens"], "first_eval": evals[0] if evals else None,
                  "final_eval": s["final_eval"],
                  "median_step_time_s": s.get("median_step_time_s")}
    return out


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def markdown(report: dict) -> str:
    b = report["budget"]
    L = [f"# rtune demo ({report['profile']})", "",
         f"Model preset `{b['preset']}`, {b['precision']}, {report['nproc']} ranks, DeepSpeed "
         f"`{report['ds_config']}`; {report['seeds']} few-shot seed(s); wall time "
         f"{report['wall_time_s']:.0f} s ({len(report['jobs'])} jobs in one deepspeed launch, "
         f"{sum(1 for x in report['jobs'] if x['reused'])} reused). Every number below is read "
         "from the run directories under `runs/` (TensorBoard: `tensorboard --logdir runs`).", ""]
    p = report["pretraining"]
    v0, v1 = p["v0"], p["v1"]
    f0, f1 = v1["first_eval"] or {}, v1["final_eval"]
    L += ["## Pretraining", "",
          "| model | steps | tokens | eval loss general | eval loss computing |", "|---|---|---|---|---|",
          f"| untrained (v0 at step 0) | 0 | 0 | {fmt((v0['first_eval'] or {}).get('eval/loss/general'))} | – |",
          f"| v0 | {v0['steps']} | {v0['tokens']} | {fmt(v0['final_eval'].get('eval/loss/general'))} "
          f"| {fmt(f0.get('eval/loss/computing'))} |",
          f"| v1 | +{v1['steps']} | +{v1['tokens']} | {fmt(f1.get('eval/loss/general'))} "
          f"| {fmt(f1.get('eval/loss/computing'))} |", "",
          "v0's computing loss is v1's evaluation at step 0 (v0's weights).", "",
          "## Results", "",
          "Accuracy (dev: the kept state's; test: scored once with it). Few-shot rows: mean over "
          "seeds, per seed in order of seed.", "",
          "| task | run | dev acc | test acc (mean ± sd) | test per seed | majority |",
          "|---|---|---|---|---|---|"]
    for r in report["table"]:
        per = " / ".join(fmt(x) for x in r["test_per_seed"])
        L.append(f"| {r['task']} | {r['run']} | {fmt(r['dev_mean'])} | {fmt(r['test_mean'])}"
                 f"{' ± ' + fmt(r['test_std']) if len(r['test_per_seed']) > 1 else ''} | {per} "
                 f"| {fmt(r['majority'])} |")
    c = report["convergence"]
    L += ["", "## Steps to target", "",
          f"First dev evaluation at which a run reaches {c['fraction']:.0%} of the best dev "
          "accuracy of the vanilla run (plain tuning of v1) of the same data and seed "
          "(– = never).", "",
          "| data | seed | target | " + " | ".join(FEW_METHODS) + " |",
          "|---|---|---|" + "---|" * len(FEW_METHODS)]
    for pr in c["pairs"]:
        cells = [fmt((pr["methods"].get(m) or {}).get("step")) if m in pr["methods"] else "n/a"
                 for m in FEW_METHODS]
        L.append(f"| {pr['regime']} | {pr['seed']} | {fmt(pr['vanilla_best'] * c['fraction'])} | "
                 + " | ".join(cells) + " |")
    L += ["", "## The paper's findings at this scale", ""]
    for key, f in report["findings"].items():
        L += [f"### {key.replace('_', ' ')}: **{f['reproduced']}**", "", f"- claim: {f['claim']}",
              f"- criterion: {f['criterion']}", f"- numbers: `{json.dumps(f['evidence'], default=str)}`", ""]
    missing = [k for k, f in report["findings"].items() if f["reproduced"] != "yes"]
    L += ["**Did not reproduce here (fully):** " + (", ".join(missing) if missing else "none") + ".",
          "", "## Plots", ""]
    for name in report["plots"]:
        L.append(f"![{name}]({name})")
    L.append("")
    return "\n".join(L)


def plots(report: dict, runs: Path, out: Path) -> list[str]:
    plt = pyplot()
    made = []

    def save(fig, name):
        save_figure(fig, out / name)
        made.append(name)

    rows = report["table"]
    fig, axes = plt.subplots(1, len(TASKS), figsize=(13, 5.5), squeeze=False)
    for ax, task in zip(axes[0], TASKS):
        rs = [r for r in rows if r["task"] == task]
        ax.barh(range(len(rs)), [r["test_mean"] for r in rs], color="#8fb3d9")
        for i, r in enumerate(rs):
            ax.plot(r["test_per_seed"], [i] * len(r["test_per_seed"]), "k.", ms=5)
        ax.axvline(rs[0]["majority"] if rs else 0, color="r", ls=":", label="majority class (dev)")
        ax.set_yticks(range(len(rs)))
        ax.set_yticklabels([r["run"] for r in rs], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("test accuracy")
        ax.set_title(task)
        ax.legend(fontsize=7)
    save(fig, "results.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    full = [(f"{NEW_TASK}-v1-full-full", "vanilla"), ("recycle-init-full", "init")]
    for name, label in full:
        if (runs / name / "metrics.jsonl").is_file():
            xs = dev_curve(runs / name)
            axes[0].plot([x for x, _ in xs], [y for _, y in xs], marker="o", ms=3, label=label)
    axes[0].set_title(f"{NEW_TASK} on v1, full data")
    for m, color in zip(FEW_METHODS, ("C0", "C1", "C2", "C3")):
        for seed in range(1, report["seeds"] + 1):
            name = (f"recycle-{m.replace('+', '_')}-few-s{seed}")
            if (runs / name / "metrics.jsonl").is_file():
                xs = dev_curve(runs / name)
                axes[1].plot([x for x, _ in xs], [y for _, y in xs], color=color, alpha=0.7,
                             label=m if seed == 1 else None)
    axes[1].set_title(f"{NEW_TASK} on v1, few-shot (one line per seed)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("dev accuracy")
        ax.legend(fontsize=8)
    save(fig, "convergence.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    offset = 0
    for v in ("v0", "v1"):
        rec = [r for r in read_metrics(runs / v) if "eval/loss" in r]
        for key, style in (("eval/loss/general", "-"), ("eval/loss/computing", "--")):
            pts = [(r["step"] + offset, r[key]) for r in rec if key in r]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], style, marker="o", ms=3,
                        label=f"{v} {key.rsplit('/', 1)[1]}")
        offset += read_json(runs / v / "summary.json")["step"]
    ax.set_xlabel("pretraining step (v1 continues v0)")
    ax.set_ylabel("eval loss")
    ax.legend(fontsize=8)
    save(fig, "pretraining.png")

    for name in ("connectivity", "similarity"):
        src = runs / name / f"{name}.png"
        if src.is_file():
            (out / f"{name}.png").write_bytes(src.read_bytes())
            made.append(f"{name}.png")
    return made


def build_report(out: Path, jobs: list[Job], budget: dict, meta: dict) -> dict:
    runs = out / "runs"
    results = {j.name: run_result(j, runs / j.name) for j in jobs
               if j.info.get("kind") in ("finetune", "recycle")}
    rows = table(results)
    conv = convergence(jobs, runs, results)
    conn_path, sim_path = runs / "connectivity/connectivity.json", runs / "similarity/similarity.json"
    conn = read_json(conn_path) if conn_path.is_file() else {}
    sim = read_json(sim_path) if sim_path.is_file() else {}
    report = {**meta, "budget": budget, "pretraining": pretraining(runs), "runs": results,
              "table": rows, "convergence": conv,
              "connectivity": {n: {"barrier": p["barrier"], "curve": p["curve"]}
                               for n, p in conn.get("pairs", {}).items()},
              "similarity": {n: {"mean": p["mean"], "per_layer": p["per_layer"]}
                             for n, p in sim.get("pairs", {}).items()},
              "findings": findings(rows, results, conv, conn, sim)}
    report["plots"] = plots(report, runs, out)
    save_json(report, out / "report.json")
    save_text(markdown(report), out / "report.md")
    return report


# ---------------------------------------------------------------- the protocol

def check_budget_unchanged(out: Path, budget: dict) -> None:
    """A rerun into the same OUT reuses finished runs, so they must come from the same budget."""
    path = out / "demo.json"
    if path.is_file():
        before = read_json(path)["budget"]
        if before != budget:
            raise ConfigError(f"--out {out}: holds a demo run with another budget "
                              f"({before.get('profile')}, seeds {before.get('seeds')}); "
                              "choose a new --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        save_json({"budget": budget}, path)


def run_plan(plan: str) -> None:
    """Inside the one launch: every planned job in turn, in this process (`rtune ARGS` as the CLI
    would run it), so the ranks start up once; rank 0 records each job's seconds."""
    from rtune_ds import cli, dist

    path = Path(plan)
    jobs = read_json(path)["jobs"]
    seconds = {}
    for n, job in enumerate(jobs, 1):
        if dist.is_main():
            print(f"rtune demo: [{n}/{len(jobs)}] {job['name']}", file=sys.stderr, flush=True)
        t0 = time.time()
        code = cli.main(job["args"])
        if code != 0:
            raise RunError(f"demo: {job['name']} failed with exit code {code} (its run dir: "
                           f"{job['run_dir']})")
        seconds[job["name"]] = round(time.time() - t0, 1)
    if dist.is_main():
        save_json(seconds, path.with_name(f"{path.stem}.seconds.json"))


def run(quick: bool, out: str, nproc: int, seeds: int | None, data: str | None,
        ds_config: str | None, command: str) -> dict:
    start = time.time()
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: must be >= 1")
    budget = load_budget(quick, seeds)
    ds = ds_config or budget["ds_config"]
    if not Path(ds).is_file():
        raise ConfigError(f"--ds-config {ds}: DeepSpeed JSON not found")
    out_dir = Path(out).resolve()
    check_budget_unchanged(out_dir, budget)
    data_path = data_dir(out_dir, data)
    counts = sample_tasks(data_path, out_dir / "tasks", budget["tasks"])
    configs = out_dir / "configs"
    configs.mkdir(exist_ok=True)
    runs = out_dir / "runs"
    for name, cfg in {**pretrain_configs(budget, data_path, runs),
                      **{t: task_config(budget, t, out_dir / "tasks", runs) for t in TASKS}}.items():
        (configs / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    jobs = plan_jobs(budget, out_dir, configs, ds)
    todo = [j for j in jobs if not (runs / j.name / j.done).is_file()]
    seconds = {}
    if todo:
        plan = out_dir / "plan.json"
        save_json({"jobs": [{"name": j.name, "args": j.args, "run_dir": str(runs / j.name)}
                            for j in todo]}, plan)
        (out_dir / "plan.seconds.json").unlink(missing_ok=True)
        run_launch(launcher_command(nproc, ["demo", "--run-plan", str(plan)]),
                   f"demo (plan {plan})")
        seconds = read_json(out_dir / "plan.seconds.json")
    job_records = [{"name": j.name, "command": "rtune " + " ".join(j.args),
                    "reused": j.name not in seconds, "seconds": seconds.get(j.name, 0.0)}
                   for j in jobs]
    meta = {"command": command, "profile": budget["profile"], "nproc": nproc,
            "seeds": budget["seeds"], "ds_config": ds, "data": str(data_path),
            "task_records": counts, "jobs": job_records, "wall_time_s": time.time() - start}
    report = build_report(out_dir, jobs, budget, meta)
    print(markdown(report))
    print(f"rtune demo: report -> {out_dir / 'report.md'} ({report['wall_time_s']:.0f} s)",
          file=sys.stderr)
    return report
