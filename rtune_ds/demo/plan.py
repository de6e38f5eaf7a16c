"""The demo's plan: its budget, the RunConfigs it writes to OUT/configs, and every job in order.
A job is data (a recipe, a RunConfig file, dotted overrides, the recipe's other inputs), so the
plan can be written to a file, run inside the one launch, and shown as the `rtune` command line
that reruns any job on its own."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rtune_ds.errors import ConfigError
from rtune_ds.io import save_yaml
from rtune_ds.resources import DEMO_BUDGETS, DS_CONFIGS

TASKS = {"supersense": "general", "foldoc_category": "computing"}  # task -> its domain
OLD_TASK = "supersense"  # v0's own domain
NEW_TASK = "foldoc_category"  # the domain v1 is continually pretrained on; recycling happens here
VERSIONS = ("v0", "v1", "rand")
FEW_METHODS = ("vanilla", "init", "distill", "init+distill")
METRIC = "eval/accuracy"
FRACTION = 0.95  # steps-to-target: the first eval reaching 95% of vanilla's best dev accuracy
CONTROLS = {  # (tuning, regime) of the v0 and rand tuning runs -> (label, budget group; None: all)
    ("full", "full"): ("full FT · full data", None),
    ("lora", "full"): ("LoRA · full data", "lora"),
    ("full", "few"): ("full FT · few-shot", "few_shot_controls")}
PLAN, SECONDS = "plan.json", "seconds.json"  # in OUT: the jobs of a launch, every job's seconds
PAIR_FLAGS = {"a": "--bundle-a", "base_a": "--base-a", "b": "--bundle-b", "base_b": "--base-b",
              "control_a": "--control-a", "control_base_a": "--control-base-a",
              "control_b": "--control-b", "control_base_b": "--control-base-b"}


# ---------------------------------------------------------------- the budget

def load_budget(quick: bool, seeds: int | None, path: Path = DEMO_BUDGETS) -> dict:
    """The `quick` or `full` budget of `path`, with its profile name and --seeds applied."""
    budgets = yaml.safe_load(path.read_text())
    b = dict(budgets["quick" if quick else "full"])
    b["profile"] = "quick" if quick else "full"
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds {seeds}: must be >= 1")
        b["seeds"] = seeds
    return b


def ds_config_path(given: str | None, budget: dict, path: Path = DEMO_BUDGETS) -> str:
    """The DeepSpeed JSON of every job: --ds-config as given, else the budget's `ds_config`, where
    a bare file name (zero0.json) is one of the stock configs shipped inside the package, so the
    demo needs no ds_configs/ directory where it is run."""
    if given is not None:
        found, what = Path(given), f"--ds-config {given}"
    else:
        name = budget["ds_config"]
        found = DS_CONFIGS / name if Path(name).name == name else Path(name)
        what = f"{path}: key '{budget['profile']}.ds_config' ({name})"
    if not found.is_file():
        raise ConfigError(f"{what}: DeepSpeed JSON not found")
    return given if given is not None else str(found)


# ---------------------------------------------------------------- the runs and their names

def tuned(task: str, base: str, tuning: str = "full", regime: str = "full", seed: int = 1) -> dict:
    """What the report knows of a plain tuning run (v1's is the vanilla of the recycling
    comparison). regime: full data, or few-shot."""
    return {"kind": "finetune", "task": task, "base": base, "tuning": tuning, "regime": regime,
            "seed": seed, "method": "vanilla" if base == "v1" else None}


def recycled(method: str, regime: str = "full", seed: int = 1, tuning: str = "full") -> dict:
    """A run of the recycling comparison on the new task and v1: vanilla (plain tuning of v1),
    compat (`tuning`: that of the bundle), init, distill or init+distill."""
    if method == "vanilla":
        return tuned(NEW_TASK, "v1", tuning, regime, seed)
    return {"kind": "recycle", "task": NEW_TASK, "base": "v1", "tuning": tuning, "regime": regime,
            "seed": seed, "method": method}


def setting(info: dict) -> dict:
    """A run's info without its seed: what the runs of one row of the results table share."""
    return {k: v for k, v in info.items() if k != "seed"}


def run_name(info: dict) -> str:
    """The run dir name (under OUT/runs) of a tuning or recycling run: the one place it is made.
    Plain tuning: <task>-<base>-<tuning>-<regime>; the recycling comparison (with v1's few-shot
    vanilla runs): recycle-<method>-<regime>, compat runs told apart by the bundle's tuning
    instead; few-shot runs end in -s<seed>."""
    few = f"-s{info['seed']}" if info["regime"] == "few" else ""
    if info["kind"] == "finetune" and not (info["method"] == "vanilla" and few):
        return f"{info['task']}-{info['base']}-{info['tuning']}-{info['regime']}{few}"
    tag = info["tuning"] if info["method"] == "compat" else info["regime"]
    return f"recycle-{info['method'].replace('+', '_')}-{tag}{few}"


# ---------------------------------------------------------------- the RunConfigs

def pretrain_configs(b: dict, data: Path, runs: Path, ds: str) -> dict[str, dict]:
    """The RunConfigs of v0, v1 and rand (written to OUT/configs, run as they are)."""
    p = b["pretrain"]
    common_train = {"micro_batch_size": p["micro_batch_size"], "grad_accum": 1,
                    "eval_every": p["eval_every"], "eval_max_blocks": p["eval_max_blocks"],
                    "save_every": 0, "log_every": 5, "precision": b["precision"]}
    general, computing = str(data / "general.jsonl"), str(data / "computing.jsonl")
    v0 = {"run_dir": str(runs / "v0"), "seed": 0, "deepspeed": ds, "model": {"preset": b["preset"]},
          "data": {"train": [general], "seq_len": p["seq_len"],
                   "eval_fraction": p["eval_fraction"]},
          "train": {**common_train, "max_steps": p["v0_steps"], "lr": p["lr"],
                    "schedule": "cosine", "warmup_steps": p["warmup_steps"],
                    "min_lr_ratio": p["min_lr_ratio"]}}
    (g0, c0), (g1, c1) = p["v1_mix"]
    v1 = {"run_dir": str(runs / "v1"), "seed": 0, "deepspeed": ds,
          "model": {"path": str(runs / "v0" / "final")},
          "data": {"train": [{"path": general, "weight": g0}, {"path": computing, "weight": c0}],
                   "switch": {"train": [{"path": general, "weight": g1},
                                        {"path": computing, "weight": c1}]},
                   "seq_len": p["seq_len"], "eval_fraction": p["eval_fraction"]},
          "train": {**common_train, "max_steps": p["v1_steps"], "lr": None, "schedule": "recipe"}}
    # rand: v0's preset, seed and data (so the same tokenizer), one step at a vanishing LR in fp32
    rand = {**v0, "run_dir": str(runs / "rand"),
            "train": {**common_train, "max_steps": 1, "lr": 1.0e-12, "schedule": "constant",
                      "warmup_steps": 0, "eval_every": 0, "precision": "fp32"}}
    return {"v0": v0, "v1": v1, "rand": rand}


def task_config(b: dict, task: str, tasks: Path, runs: Path, ds: str) -> dict:
    """The RunConfig every tuning job of `task` starts from (the jobs override base, seed, ...)."""
    t = b["tune"]
    return {"run_dir": str(runs / f"{task}-template"), "seed": 1, "deepspeed": ds,
            "model": {"path": str(runs / "v0" / "final")},
            "task": {"type": "classification", "train": str(tasks / f"{task}_train.jsonl"),
                     "dev": str(tasks / f"{task}_dev.jsonl"),
                     "test": str(tasks / f"{task}_test.jsonl"), "max_len": t["max_len"]},
            "tuning": {"method": "full", "lora": {"r": t["lora_r"], "alpha": t["lora_alpha"]}},
            "train": {"max_steps": t["steps"], "micro_batch_size": t["micro_batch_size"],
                      "global_batch_size": t["global_batch_size"], "lr": t["lr"],
                      "warmup_steps": t["warmup_steps"], "eval_every": t["eval_every"],
                      "save_every": 0, "log_every": 5, "precision": b["precision"]}}


def write_configs(b: dict, data: Path, out: Path, ds: str) -> Path:
    """OUT/configs/{v0,v1,rand,<task>}.yaml (rewritten on every demo run); returns the dir."""
    configs, runs = out / "configs", out / "runs"
    configs.mkdir(parents=True, exist_ok=True)
    for name, cfg in {**pretrain_configs(b, data, runs, ds),
                      **{t: task_config(b, t, out / "tasks", runs, ds) for t in TASKS}}.items():
        save_yaml(cfg, configs / f"{name}.yaml")
    return configs


# ---------------------------------------------------------------- the jobs

@dataclass
class Job:
    """One step: `recipe` run into `run_dir` (OUT/runs/<name>), done when `done` exists there.
    `config`, `overrides` and the run dir make its RunConfig; `options` are the recipe's other
    inputs (recycle: method, bundle, base; the analyses: the pairs and their size); `info` is
    what the report groups by."""
    name: str
    recipe: str  # pretrain | finetune | recycle | connectivity | similarity
    run_dir: str
    config: str
    overrides: list[str]
    done: str
    options: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def is_done(self) -> bool:
        return (Path(self.run_dir) / self.done).is_file()

    def run_overrides(self) -> list[str]:
        """The dotted overrides on top of `config`: the job's own and its run dir."""
        return [f"run_dir={self.run_dir}", *self.overrides]

    def command(self) -> str:
        """The `rtune` command line that runs this job on its own (its lineage records it)."""
        o = self.options
        if self.recipe == "recycle":
            head = ["recycle", "--method", o["method"], "--bundle", o["bundle"], "--base",
                    o["base"], "--resume", "auto"]
        elif self.recipe == "connectivity":
            head = ["analyze", "connectivity", *pair_args(o["pairs"]), "--points", str(o["points"])]
        elif self.recipe == "similarity":
            head = ["analyze", "similarity", *pair_args(o["pairs"]),
                    "--max-examples", str(o["max_examples"])]
        else:
            head = [self.recipe, "--resume", "auto"]
        return shlex.join(["rtune", *head, "--config", self.config, *self.run_overrides()])


def pair_args(pairs: dict) -> list[str]:
    return [arg for key, flag in PAIR_FLAGS.items() for arg in (flag, pairs[key])]


def plan_jobs(b: dict, out: Path, configs: Path) -> list[Job]:
    """Every job of the demo, in order (later ones read earlier ones' outputs)."""
    runs, t = out / "runs", b["tune"]

    def final(name: str) -> str:
        return str(runs / name / "final")

    def config(task: str) -> str:
        return str(configs / f"{task}.yaml")

    few = [f"task.few_shot={t['few_shot']}", f"train.max_steps={t['few_shot_steps']}",
           f"train.eval_every={t['few_shot_eval_every']}"]
    lora_lr = [f"train.lr={t['lora_lr']}"]

    def extra(info: dict) -> list[str]:
        return (few if info["regime"] == "few" else []) + (lora_lr if info["tuning"] == "lora"
                                                           else [])

    def tune(info: dict) -> Job:
        name = run_name(info)
        lora = ["tuning.method=lora"] if info["tuning"] == "lora" else []
        return Job(name, "finetune", str(runs / name), config(info["task"]),
                   [f"model.path={final(info['base'])}", f"seed={info['seed']}", *lora,
                    *extra(info)], "summary.json", info=info)

    def recycle(info: dict, bundle: str) -> Job:
        name = run_name(info)
        return Job(name, "recycle", str(runs / name), config(NEW_TASK),
                   [f"seed={info['seed']}", *extra(info)],
                   "compat.json" if info["method"] == "compat" else "summary.json",
                   {"method": info["method"], "bundle": bundle, "base": final("v1")}, info)

    jobs = [Job(v, "pretrain", str(runs / v), config(v), [], "final/config.json",
                info={"kind": "pretrain"}) for v in VERSIONS]
    groups = b["groups"]
    settings = [s for s, (_, group) in CONTROLS.items() if group in (None, *groups)]
    for task in TASKS:
        for base in ("v0", "rand"):
            jobs += [tune(tuned(task, base, tuning, regime)) for tuning, regime in settings]
    old_full = final(run_name(tuned(NEW_TASK, "v0")))
    jobs.append(tune(recycled("vanilla")))
    jobs.append(recycle(recycled("compat"), old_full))
    if "lora" in groups:
        jobs.append(recycle(recycled("compat", tuning="lora"),
                            final(run_name(tuned(NEW_TASK, "v0", "lora")))))
    jobs.append(recycle(recycled("init"), old_full))
    for seed in range(1, b["seeds"] + 1):
        jobs.append(tune(recycled("vanilla", "few", seed)))
        jobs += [recycle(recycled(m, "few", seed), old_full) for m in FEW_METHODS[1:]]
    # the analyses on the new task: A tuned on v0, B on v1; control: A against the one on rand
    pairs = {"a": old_full, "base_a": final("v0"),
             "b": final(run_name(recycled("vanilla"))), "base_b": final("v1"),
             "control_a": old_full, "control_base_a": final("v0"),
             "control_b": final(run_name(tuned(NEW_TASK, "rand"))), "control_base_b": final("rand")}
    a = b["analysis"]
    for recipe, size in (("connectivity", {"points": a["points"]}),
                         ("similarity", {"max_examples": a["similarity_examples"]})):
        jobs.append(Job(recipe, recipe, str(runs / recipe), config(NEW_TASK), [],
                        f"{recipe}.json", {"pairs": pairs, **size}, {"kind": "analysis"}))
    return jobs
