"""The demo's plan: its budget, the RunConfigs it writes to OUT/configs, and every job in order.
A job is data: an `rtune` command line (the command and its options, a RunConfig file, dotted
overrides), so the plan can be written to a file, run inside a launch through the CLI's table of
commands, and shown as the command line that reruns any job on its own.

The jobs come in two stages: the first makes the bases (v0 when it is pretrained here, v1, rand)
and runs the vanilla LR grid; the second, planned once the grid has chosen an LR per data regime,
runs everything that uses that LR."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rtune_ds.analysis.pairs import pair_args
from rtune_ds.config.schema import RecyclingMethod, TuningMethod
from rtune_ds.errors import ConfigError
from rtune_ds.io import save_yaml
from rtune_ds.resources import DEMO_BUDGETS, DS_CONFIGS

TASKS = {"supersense": "general", "foldoc_category": "computing"}  # task -> its domain
OLD_TASK = "supersense"  # v0's own domain
NEW_TASK = "foldoc_category"  # the domain v1 is continually pretrained on; recycling happens here
REGIMES = ("full", "few")  # full data (a sampled train set) and few-shot (K per class)
# the arms: plain tuning of v1, and every recycling method that tunes
METHODS = ("vanilla", *(m for m in RecyclingMethod if m != RecyclingMethod.COMPAT))
COMPAT_TUNINGS = (TuningMethod.FULL, TuningMethod.LORA)  # the v0 bundles scored on v1 untrained
METRIC = "eval/accuracy"
PLAN, SECONDS = "plan.json", "seconds.json"  # in OUT: the jobs of a launch, every job's seconds


# ---------------------------------------------------------------- the budget

def load_budget(quick: bool, seeds: int | None, path: Path = DEMO_BUDGETS) -> dict:
    """The `quick` or `main` budget of `path`, with its profile name and --seeds applied."""
    budgets = yaml.safe_load(path.read_text())
    b = dict(budgets["quick" if quick else "main"])
    b["profile"] = "quick" if quick else "main"
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


def export_steps(b: dict) -> dict[float, int]:
    """{fraction: step} of v1's exports along its continual pretraining (0 and 1 excluded)."""
    c = b["cpt"]
    return {f: round(f * c["steps"]) for f in c["exports"]}


# ---------------------------------------------------------------- the runs and their names

def tuned(task: str, base: str, tuning: str = "full", regime: str = "full", seed: int = 1) -> dict:
    """What the report knows of a plain tuning run (v1's is the vanilla of the recycling
    comparison)."""
    return {"kind": "finetune", "task": task, "base": base, "tuning": tuning, "regime": regime,
            "seed": seed, "method": "vanilla" if base == "v1" else None}


def recycled(method: str, regime: str = "full", seed: int = 1, tuning: str = "full") -> dict:
    """A run of the recycling comparison on the new task and v1: vanilla (plain tuning of v1),
    init, distill or init+distill."""
    if method == "vanilla":
        return tuned(NEW_TASK, "v1", tuning, regime, seed)
    return {"kind": "recycle", "task": NEW_TASK, "base": "v1", "tuning": tuning, "regime": regime,
            "seed": seed, "method": method}


def compat(tuning: str, point: float) -> dict:
    """The v0 bundle of `tuning` scored with no training on v1 at `point` of its continual
    pretraining (0: v0 itself, 1: v1's final weights)."""
    return {"kind": "recycle", "task": NEW_TASK, "base": "v1", "tuning": tuning,
            "regime": "full", "seed": 1, "method": RecyclingMethod.COMPAT, "point": point}


def grid(regime: str, lr: float, chosen: bool) -> dict:
    """A vanilla run of the LR grid (seed 1); the chosen one is vanilla's seed-1 run."""
    info = recycled("vanilla", regime) if chosen else {**recycled("vanilla", regime),
                                                       "kind": "grid"}
    return {**info, "lr": lr}


def setting(info: dict) -> dict:
    """A run's info without its seed and LR: what the runs of one table row share."""
    return {k: v for k, v in info.items() if k not in ("seed", "lr")}


def run_name(info: dict) -> str:
    """The run dir name (under OUT/runs) of a tuning or recycling run: the one place it is made.
    Plain tuning: <task>-<base>-<tuning>-<regime>-s<seed>; the LR grid: grid-<regime>-lr<lr>;
    compat: compat-<tuning>-<percent of v1's run>; the other recycling runs:
    recycle-<method>-<regime>-s<seed>."""
    if "lr" in info:
        return f"grid-{info['regime']}-lr{info['lr']:g}"
    if info["method"] == RecyclingMethod.COMPAT:
        return f"compat-{info['tuning']}-{round(100 * info['point'])}"
    seed = f"-s{info['seed']}"
    if info["kind"] == "finetune" and info["method"] != "vanilla":
        return f"{info['task']}-{info['base']}-{info['tuning']}-{info['regime']}{seed}"
    return f"recycle-{info['method'].replace('+', '_')}-{info['regime']}{seed}"


# ---------------------------------------------------------------- the RunConfigs

def bases(b: dict, runs: Path, base_dir: str | None) -> dict[str, str]:
    """The HF directory of each base: v0 (--base-dir, the released model, or pretrained here
    from a preset), v1 and rand (made here)."""
    v0 = base_dir or b["base"].get("path") or str(runs / "v0" / "final")
    return {"v0": v0, "v1": str(runs / "v1" / "final"), "rand": str(runs / "rand" / "final")}


def pretrains_v0(b: dict, base_dir: str | None) -> bool:
    return base_dir is None and "preset" in b["base"]


def pretrain_configs(b: dict, data: Path, runs: Path, ds: str,
                     base_dir: str | None) -> dict[str, dict]:
    """The RunConfigs of v0 (when pretrained here), v1 and rand."""
    c, base = b["cpt"], bases(b, runs, base_dir)
    common_train = {"micro_batch_size": c["micro_batch_size"], "grad_accum": 1,
                    "eval_every": c["eval_every"], "eval_max_blocks": c["eval_max_blocks"],
                    "save_every": 0, "log_every": 5, "precision": b["precision"]}
    general, computing = str(data / "general.jsonl"), str(data / "computing.jsonl")
    common = {"seed": 0, "deepspeed": ds,
              "data": {"train": [general], "seq_len": c["seq_len"],
                       "eval_fraction": c["eval_fraction"]}}
    configs = {}
    if pretrains_v0(b, base_dir):
        p = b["base"]
        configs["v0"] = {**common, "run_dir": str(runs / "v0"), "model": {"preset": p["preset"]},
                         "train": {**common_train, "max_steps": p["steps"], "lr": p["lr"],
                                   "schedule": "cosine", "warmup_steps": p["warmup_steps"],
                                   "min_lr_ratio": p["min_lr_ratio"]}}
    (g0, c0), (g1, c1) = c["mix"]
    head = {k: c[k] for k in ("head_warmup_steps", "head_warmup_lr") if k in c}
    configs["v1"] = {
        **common, "run_dir": str(runs / "v1"), "model": {"path": base["v0"], **head},
        "data": {"train": [{"path": general, "weight": g0}, {"path": computing, "weight": c0}],
                 "switch": {"train": [{"path": general, "weight": g1},
                                      {"path": computing, "weight": c1}]},
                 "seq_len": c["seq_len"], "eval_fraction": c["eval_fraction"]},
        "train": {**common_train, "max_steps": c["steps"], "lr": c.get("lr"),
                  "schedule": "recipe", "export_fractions": c["exports"]}}
    # rand: v0's architecture and tokenizer with every weight drawn from the seed, one step at a
    # vanishing LR in fp32 (the weights stay as drawn)
    model = ({"preset": b["base"]["preset"]} if "v0" in configs
             else {"path": base["v0"], "init": "random"})
    configs["rand"] = {**common, "run_dir": str(runs / "rand"), "model": model,
                       "train": {**common_train, "max_steps": 1, "lr": 1.0e-12,
                                 "schedule": "constant", "warmup_steps": 0, "eval_every": 0,
                                 "precision": "fp32"}}
    return configs


def task_config(b: dict, task: str, tasks: Path, runs: Path, ds: str) -> dict:
    """The RunConfig every tuning job of `task` starts from (the jobs override base, seed, LR and
    the regime's keys)."""
    t = b["tune"]
    return {"run_dir": str(runs / f"{task}-template"), "seed": 1, "deepspeed": ds,
            "model": {"path": str(runs / "v1" / "final")},
            "task": {"type": "classification", "train": str(tasks / f"{task}_train.jsonl"),
                     "dev": str(tasks / f"{task}_dev.jsonl"),
                     "test": str(tasks / f"{task}_test.jsonl"), "max_len": t["max_len"]},
            "tuning": {"method": "full", "lora": {"r": t["lora_r"], "alpha": t["lora_alpha"]}},
            "train": {"micro_batch_size": t["micro_batch_size"],
                      "global_batch_size": t["global_batch_size"],
                      "warmup_steps": t["warmup_steps"], "save_every": 0, "log_every": 5,
                      "precision": b["precision"], **regime_keys(b, "full")}}


def regime_keys(b: dict, regime: str) -> dict:
    """The train keys of a data regime: the step cap, the eval interval and the patience."""
    r = b["tune"][regime]
    return {"max_steps": r["max_steps"], "eval_every": r["eval_every"], "patience": r["patience"]}


def write_configs(b: dict, data: Path, out: Path, ds: str, base_dir: str | None) -> Path:
    """OUT/configs/{v0,v1,rand,<task>}.yaml (rewritten on every demo run); returns the dir."""
    configs, runs = out / "configs", out / "runs"
    configs.mkdir(parents=True, exist_ok=True)
    for name, cfg in {**pretrain_configs(b, data, runs, ds, base_dir),
                      **{t: task_config(b, t, out / "tasks", runs, ds) for t in TASKS}}.items():
        save_yaml(cfg, configs / f"{name}.yaml")
    return configs


# ---------------------------------------------------------------- the jobs

@dataclass
class Job:
    """One step: the `rtune` command `args` (its options) run into `run_dir` (OUT/runs/<name>)
    with the RunConfig `config` and the dotted `overrides`; done when `done` exists there. `info`
    is what the report groups by."""
    name: str
    args: list[str]  # e.g. ["recycle", "--method", "init", "--bundle", ...]
    run_dir: str
    config: str
    overrides: list[str]
    done: str
    info: dict = field(default_factory=dict)

    def is_done(self) -> bool:
        return (Path(self.run_dir) / self.done).is_file()

    def argv(self) -> list[str]:
        return [*self.args, "--config", self.config, f"run_dir={self.run_dir}", *self.overrides]

    def command(self) -> str:
        """The `rtune` command line that runs this job on its own (its lineage records it)."""
        return shlex.join(["rtune", *self.argv()])


class Planner:
    """Makes the jobs of one demo: its budget, OUT and the bases' directories."""

    def __init__(self, b: dict, out: Path, configs: Path, base_dir: str | None = None):
        self.b, self.runs, self.configs, self.base_dir = b, out / "runs", configs, base_dir
        self.base = bases(b, self.runs, base_dir)

    def final(self, info: dict) -> str:
        return str(self.runs / run_name(info) / "final")

    def config(self, name: str) -> str:
        return str(self.configs / f"{name}.yaml")

    def regime(self, regime: str) -> list[str]:
        keys = regime_keys(self.b, regime)
        few = [f"task.few_shot={self.b['tune']['few_shot']}"] if regime == "few" else []
        return few + [f"train.{k}={v}" for k, v in keys.items()]

    def tune(self, info: dict, lr: float) -> Job:
        name, lora = run_name(info), info["tuning"] == TuningMethod.LORA
        return Job(name, ["finetune", "--resume", "auto"], str(self.runs / name),
                   self.config(info["task"]),
                   [f"model.path={self.base[info['base']]}", f"seed={info['seed']}",
                    *(["tuning.method=lora"] if lora else []), *self.regime(info["regime"]),
                    f"train.lr={lr}"], "summary.json", info=info)

    def recycle(self, info: dict, bundle: str, base: str, lr: float | None = None) -> Job:
        name = run_name(info)
        overrides = [f"seed={info['seed']}", *self.regime(info["regime"])]
        if lr is not None:
            overrides.append(f"train.lr={lr}")
        # compat at 0% of v1's run scores the v0 bundle on v0 itself: the curve's starting point
        same_base = info["method"] == RecyclingMethod.COMPAT and info["point"] == 0.0
        args = ["recycle", "--method", info["method"], "--bundle", bundle, "--base", base,
                "--resume", "auto", *(["--force-same-base"] if same_base else [])]
        return Job(name, args, str(self.runs / name), self.config(NEW_TASK), overrides,
                   "compat.json" if info["method"] == RecyclingMethod.COMPAT else "summary.json",
                   info)

    def stage_one(self, lrs: dict[str, float] | None = None) -> list[Job]:
        """The bases, then the vanilla LR grid on v1 (seed 1, both regimes); with `lrs` (the
        grid's choice per regime), the chosen grid runs are vanilla's seed-1 runs."""
        names = (["v0"] if pretrains_v0(self.b, self.base_dir) else []) + ["v1", "rand"]
        jobs = [Job(v, ["pretrain", "--resume", "auto"], str(self.runs / v), self.config(v), [],
                    "final/config.json", {"kind": "pretrain"}) for v in names]
        for regime in REGIMES:
            for lr in self.b["tune"]["lr_grid"]:
                info = grid(regime, lr, lrs is not None and lrs[regime] == lr)
                jobs.append(self.tune(info, lr))
        return jobs

    def stage_two(self, lrs: dict[str, float]) -> list[Job]:
        """Everything that uses the chosen LRs, in order (later jobs read earlier ones' files)."""
        b, seeds = self.b, range(1, self.b["seeds"] + 1)
        jobs = []
        # the bundles tuned on v0 for the new task (seed 1 of full data is the one recycled), and
        # v0 against v1 in both regimes
        for regime in REGIMES:
            jobs += [self.tune(tuned(NEW_TASK, "v0", "full", regime, s), lrs[regime])
                     for s in seeds]
        jobs.append(self.tune(tuned(NEW_TASK, "v0", "lora"), b["tune"]["lora_lr"]))
        # the controls: does pretraining help here? (full FT, full data, seed 1, both tasks)
        jobs.append(self.tune(tuned(OLD_TASK, "v0"), lrs["full"]))
        jobs += [self.tune(tuned(task, "rand"), lrs["full"]) for task in TASKS]
        old = {"full": self.final(tuned(NEW_TASK, "v0")),
               "lora": self.final(tuned(NEW_TASK, "v0", "lora"))}
        # compat along v1's continual pretraining: v0 itself, its exports, its final weights
        points = {0.0: self.base["v0"],
                  **{f: str(self.runs / "v1" / "exports" / f"step-{s}")
                     for f, s in export_steps(b).items()}, 1.0: self.base["v1"]}
        for tuning in COMPAT_TUNINGS:
            jobs += [self.recycle(compat(tuning, point), old[tuning], base)
                     for point, base in points.items()]
        for regime in REGIMES:
            jobs += [self.tune(recycled("vanilla", regime, s), lrs[regime]) for s in seeds
                     if s > 1]  # seed 1: the chosen grid run
            jobs += [self.recycle(recycled(m, regime, s), old["full"], self.base["v1"],
                                  lrs[regime]) for m in METHODS[1:] for s in seeds]
        # the analyses on the new task: A tuned on v0, B on v1; control: A against the one on rand
        pairs = {"a": old["full"], "base_a": self.base["v0"],
                 "b": self.final(grid("full", lrs["full"], True)), "base_b": self.base["v1"],
                 "control_a": old["full"], "control_base_a": self.base["v0"],
                 "control_b": self.final(tuned(NEW_TASK, "rand")),
                 "control_base_b": self.base["rand"]}
        a = b["analysis"]
        for analysis, size in (("connectivity", ["--points", str(a["points"])]),
                               ("similarity", ["--max-examples", str(a["similarity_examples"])])):
            jobs.append(Job(analysis, ["analyze", analysis, *pair_args(pairs), *size],
                            str(self.runs / analysis), self.config(NEW_TASK), [],
                            f"{analysis}.json", {"kind": "analysis"}))
        return jobs
