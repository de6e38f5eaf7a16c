"""The demo's plan: its budget, the RunConfigs it writes to OUT/configs, and every job in order.
A job is data: an `rtune` command line (the command and its options, a RunConfig file, dotted
overrides), so the plan can be written to a file, run inside a launch through the CLI's table of
commands, and shown as the command line that reruns any job on its own.

The jobs come in waves; the jobs of a wave depend only on earlier waves, so a wave's jobs can run
at once (demo.main spreads them over its workers):
1. v0, when it is pretrained here (--quick);
2. v1 (continual pretraining of v0), rand (v0's architecture drawn at random), and the bundles:
   v0 tuned on the new task with full data, one per seed (seed 0 is the calibration seed);
3. what needs v1 and the bundles: compat of every bundle on v1 (scored with labels, and without:
   agreement with the old model), compat of bundle 1 along v1's run (with and without labels),
   the LR grid (every arm on
   the calibration seed at every LR of the grid), and the models the
   analyses compare (v1 and rand tuned like the bundles);
4. planned once the grid has chosen each arm's LR: every arm of every reported seed, and the
   analyses.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rtune_ds.analysis.pairs import pair_args
from rtune_ds.config.schema import RecyclingMethod
from rtune_ds.errors import ConfigError
from rtune_ds.io import save_yaml
from rtune_ds.resources import DEMO_BUDGETS, DS_CONFIGS

TASKS = {"supersense": "general", "foldoc_category": "computing"}  # task -> its domain
NEW_TASK = "foldoc_category"  # the domain v1 is continually pretrained on; recycling happens here
# a regime: few-shot (K per class: the paper's main regime) or full data, tuned with full
# fine-tuning (the bundles: v0 fully fine-tuned) or, with "-lora", with LoRA (the bundles: LoRA
# adapters of v0)
REGIMES = ("few", "full", "few-lora", "full-lora")
RECYCLED = ("init", "distill", "init+distill")  # the recycling methods that tune
# init+distill with no label read: the task's train texts as unlabeled inputs (alpha 1, the last
# weights kept), as a team that kept its inputs but not its labels can run it
LABEL_FREE = "label-free"
# the tuned arms of a regime: v0 (plain tuning of v0, for v1 − v0), vanilla (plain tuning of v1)
# and the recycling methods on v1, labeled and label-free
ARMS = ("v0", "vanilla", *RECYCLED, LABEL_FREE)
CALIBRATION_SEED = 0  # chooses the LRs; never reported
METRIC = "eval/accuracy"
PLAN = "plan.json"  # in OUT: the jobs of a launch (plan-<worker>.json when several run at once)
SECONDS = "demo_seconds.json"  # in a job's run dir: the seconds the job took


# ---------------------------------------------------------------- the budget

def load_budget(profile: str, seeds: int | None, full: bool = False,
                path: Path = DEMO_BUDGETS) -> dict:
    """The budget `profile` (quick or main) of `path`, with --seeds applied; `full` (--full):
    its `full_regimes` instead of its `regimes`."""
    budgets = yaml.safe_load(path.read_text())
    if profile not in budgets:
        raise ConfigError(f"{path}: no budget '{profile}' (has {', '.join(budgets)})")
    b = {k: v for k, v in budgets[profile].items() if k != "full_regimes"}
    if full:
        b["regimes"] = budgets[profile]["full_regimes"]
    unknown = [r for r in b["regimes"] if r not in REGIMES]
    if unknown:
        key = f"{profile}.{'full_' if full else ''}regimes"
        raise ConfigError(f"{path}: key '{key}': unknown {unknown} (known: {', '.join(REGIMES)})")
    if has_analyses(b) and gate_method(b) != "full":
        raise ConfigError(f"{path}: key '{profile}.analysis': the analyses compare fully "
                          "fine-tuned models, and no regime of this budget tunes fully")
    if "lora" in tuning_methods(b) and "lora" not in b["tune"]:
        raise ConfigError(f"{path}: key '{profile}.tune.lora' (bundle_lr, lr_grid) is needed by "
                          "the LoRA regimes")
    b["profile"], b["full"] = profile, full
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


def reported_seeds(b: dict) -> range:
    return range(1, b["seeds"] + 1)


def regimes_of(b: dict) -> list[str]:
    """The budget's regimes in the order of REGIMES (the report's order)."""
    return [r for r in REGIMES if r in b["regimes"]]


def data_regime(regime: str) -> str:
    """few or full: the data a regime tunes on (its budget: demo.yaml tune.<few|full>)."""
    return regime.removesuffix("-lora")


def tuning_method(regime: str) -> str:
    """full or lora: how a regime's arms and bundles are tuned."""
    return "lora" if regime.endswith("-lora") else "full"


def tuning_methods(b: dict) -> list[str]:
    """The tuning methods of the bundles: those of the budget's regimes, full first."""
    return [m for m in ("full", "lora") if any(tuning_method(r) == m for r in b["regimes"])]


def gate_method(b: dict) -> str:
    """The bundles the gate, the compat curve and the analyses rest on: the fully fine-tuned ones
    when a regime tunes fully, else the LoRA ones (an LLM budget tunes LoRA only)."""
    return tuning_methods(b)[0]


def has_analyses(b: dict) -> bool:
    """The budget runs the analyses (its `analysis` key): then rand is made, and v1 and rand are
    tuned fully like the bundles."""
    return "analysis" in b


def lr_keys(b: dict, method: str) -> dict:
    """The bundle LR and the LR grid of a tuning method (LoRA's: demo.yaml tune.lora)."""
    t = b["tune"] if method == "full" else b["tune"][method]
    return {"bundle_lr": t["bundle_lr"], "lr_grid": t["lr_grid"]}


def grid_of(b: dict, regime: str) -> list[float]:
    """The LR grid of a regime's tuning method; a grid of one LR is run on no calibration seed:
    every arm takes that LR."""
    return lr_keys(b, tuning_method(regime))["lr_grid"]


# ---------------------------------------------------------------- the runs and their names

def bundle(seed: int, base: str = "v0", method: str = "full") -> dict:
    """`base` tuned on the new task with full data by `method` (v0's are the bundles
    recycled)."""
    return {"kind": "bundle", "base": base, "seed": seed, "method": method}


def compat(seed: int, point: float = 1.0, method: str = "full") -> dict:
    """Bundle `seed` (of `method`) scored with no training on v1 at `point` of its continual
    pretraining (0: v0 itself, 1: v1's final weights)."""
    return {"kind": "compat", "seed": seed, "point": point, "method": method}


def label_free_compat(seed: int, method: str = "full") -> dict:
    """Bundle `seed` (of `method`) on v1 with no training, scored without labels: its agreement
    and KL with the old model over the task's train texts."""
    return {"kind": "label-free compat", "seed": seed, "method": method}


def arm(name: str, regime: str, seed: int, lr: float | None = None) -> dict:
    """An arm of `regime` (ARMS) for seed `seed`; with `lr`, a run of the LR grid."""
    info = {"kind": "arm", "arm": name, "regime": regime, "seed": seed}
    return info if lr is None else {**info, "kind": "grid", "lr": lr}


def run_name(info: dict) -> str:
    """The run dir name (under OUT/runs) of a tuning or compat run: the one place it is made."""
    lora = "-lora" if info.get("method") == "lora" else ""
    if info["kind"] == "bundle":
        return f"{info['base']}{lora}-tuned-s{info['seed']}"
    if info["kind"] == "compat":
        return f"compat{lora}-s{info['seed']}-at{round(100 * info['point'])}"
    if info["kind"] == "label-free compat":
        return f"compat{lora}-label-free-s{info['seed']}"
    name = f"{info['regime']}-{info['arm'].replace('+', '_')}-s{info['seed']}"
    return name if info["kind"] == "arm" else f"grid-{name}-lr{info['lr']:g}"


# ---------------------------------------------------------------- the RunConfigs

def bases(b: dict, runs: Path, base_dir: str | None) -> dict[str, str]:
    """The HF directory of each base: v0 (--base-dir, the released model, or pretrained here
    from a preset), v1 and rand (made here)."""
    v0 = base_dir or str(runs / "v0" / "final")
    return {"v0": v0, "v1": str(runs / "v1" / "final"), "rand": str(runs / "rand" / "final")}


def pretrains_v0(b: dict, base_dir: str | None) -> bool:
    return base_dir is None and "preset" in b["base"]


def pretrain_configs(b: dict, corpora: Path, runs: Path, ds: str,
                     base_dir: str | None) -> dict[str, dict]:
    """The RunConfigs of v0 (when pretrained here), v1 and rand; every corpus is a
    decontaminated one (OUT/corpora)."""
    c, base = b["cpt"], bases(b, runs, base_dir)
    common_train = {"micro_batch_size": c["micro_batch_size"], "grad_accum": 1,
                    "eval_every": c["eval_every"], "eval_max_blocks": c["eval_max_blocks"],
                    "save_every": 0, "log_every": 5, "precision": b["precision"]}
    general, computing = str(corpora / "general.jsonl"), str(corpora / "computing.jsonl")
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
    if not has_analyses(b):
        return configs
    # rand: v0's architecture and tokenizer with every weight drawn from the seed, one step at a
    # vanishing LR in fp32 (the weights stay as drawn)
    model = ({"preset": b["base"]["preset"]} if "v0" in configs
             else {"path": base["v0"], "init": "random"})
    configs["rand"] = {**common, "run_dir": str(runs / "rand"), "model": model,
                       "train": {**common_train, "max_steps": 1, "lr": 1.0e-12,
                                 "schedule": "constant", "warmup_steps": 0, "eval_every": 0,
                                 "precision": "fp32"}}
    return configs


def task_config(b: dict, tasks: Path, runs: Path, ds: str) -> dict:
    """The RunConfig every tuning job starts from (the jobs override base, seed, LR and the
    regime's keys); distillation's α and T are the budget's."""
    t = b["tune"]
    return {"run_dir": str(runs / "task-template"), "seed": 1, "deepspeed": ds,
            "model": {"path": str(runs / "v1" / "final")},
            "task": {"type": "classification", "train": str(tasks / f"{NEW_TASK}_train.jsonl"),
                     "dev": str(tasks / f"{NEW_TASK}_dev.jsonl"),
                     "test": str(tasks / f"{NEW_TASK}_test.jsonl"), "max_len": t["max_len"]},
            "tuning": {"method": "full"},
            "distill": dict(t["distill"]),
            "train": {"micro_batch_size": t["micro_batch_size"],
                      "global_batch_size": t["global_batch_size"], "save_every": 0,
                      "log_every": 5, "precision": b["precision"],
                      "min_lr_ratio": t["min_lr_ratio"]}}


def full_data(method: str) -> str:
    """The full-data regime of a tuning method: the bundles' regime."""
    return "full" if method == "full" else f"full-{method}"


def budget_keys(b: dict, regime: str) -> dict:
    """The train keys of a fixed budget: the steps, the eval interval, a warmup of the budget's
    fraction of the steps; the cosine decay spans the rest (demo.yaml: tune.<few|full>)."""
    r = b["tune"][data_regime(regime)]
    return {"max_steps": r["max_steps"], "eval_every": r["eval_every"],
            "warmup_steps": round(b["tune"]["warmup_fraction"] * r["max_steps"])}


def write_configs(b: dict, corpora: Path, out: Path, ds: str, base_dir: str | None) -> Path:
    """OUT/configs/{v0,v1,rand,task}.yaml (rewritten on every demo run); returns the dir."""
    configs, runs = out / "configs", out / "runs"
    configs.mkdir(parents=True, exist_ok=True)
    for name, cfg in {**pretrain_configs(b, corpora, runs, ds, base_dir),
                      "task": task_config(b, out / "tasks", runs, ds)}.items():
        save_yaml(cfg, configs / f"{name}.yaml")
    return configs


# ---------------------------------------------------------------- the jobs

@dataclass
class Job:
    """One step: the `rtune` command `args` (its options) run into `run_dir` (OUT/runs/<name>)
    with the RunConfig `config` and the dotted `overrides`; done when `done` exists there. `info`
    is what the report groups by; `cost` the work it does (training steps × tokens), by which
    the jobs of a wave are spread over the workers."""
    name: str
    args: list[str]  # e.g. ["recycle", "--method", "init", "--bundle", ...]
    run_dir: str
    config: str
    overrides: list[str]
    done: str
    info: dict = field(default_factory=dict)
    cost: float = 1.0

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
        self.tasks = out / "tasks"
        self.base = bases(b, self.runs, base_dir)

    def final(self, info: dict) -> str:
        return str(self.runs / run_name(info) / "final")

    def regime(self, regime: str) -> list[str]:
        """Overrides of a regime: few-shot draws K per class from the train split and from the
        dev pool (never the dev records that chose the bundles); LoRA tunes adapters."""
        few = ([f"task.few_shot={self.b['tune']['few_shot']}",
                f"task.dev={self.tasks / f'{NEW_TASK}_dev_pool.jsonl'}"]
               if data_regime(regime) == "few" else [])
        method = tuning_method(regime)
        return (few + ([f"tuning.method={method}"] if method != "full" else [])
                + [f"train.{k}={v}" for k, v in budget_keys(self.b, regime).items()])

    def cost(self, regime: str) -> float:
        t = self.b["tune"]
        return t[data_regime(regime)]["max_steps"] * t["global_batch_size"] * t["max_len"]

    def tune(self, info: dict, base: str, regime: str, lr: float) -> Job:
        name = run_name(info)
        return Job(name, ["finetune", "--resume", "auto"], str(self.runs / name),
                   str(self.configs / "task.yaml"),
                   [f"model.path={self.base[base]}", f"seed={info['seed']}",
                    *self.regime(regime), f"train.lr={lr}"], "summary.json", info,
                   self.cost(regime))

    def recycle(self, info: dict, method: str, seed: int, base: str, regime: str = "full",
                lr: float | None = None, label_free: bool = False) -> Job:
        name, is_compat = run_name(info), method == RecyclingMethod.COMPAT
        old = self.final(bundle(seed, method=tuning_method(regime)))
        # compat at 0% of v1's run scores the bundle on v0 itself: the curve's starting point
        same_base = is_compat and info.get("point") == 0.0
        args = ["recycle", "--method", method, "--bundle", old, "--base", base,
                "--resume", "auto", *(["--force-same-base"] if same_base else []),
                *(["--unlabeled", str(self.tasks / f"{NEW_TASK}_train.jsonl")]
                  if label_free else [])]
        overrides = [f"seed={seed}", *self.regime(regime),
                     *([f"train.lr={lr}"] if lr is not None else [])]
        return Job(name, args, str(self.runs / name), str(self.configs / "task.yaml"),
                   overrides, "compat.json" if is_compat else "summary.json", info,
                   0.05 * self.cost("full") if is_compat else self.cost(regime))

    def arm_job(self, info: dict, lr: float) -> Job:
        name, regime, seed = info["arm"], info["regime"], info["seed"]
        if name in ("v0", "vanilla"):
            return self.tune(info, "v0" if name == "v0" else "v1", regime, lr)
        if name == LABEL_FREE:
            return self.recycle(info, RecyclingMethod.INIT_DISTILL, seed, self.base["v1"],
                                regime, lr, label_free=True)
        return self.recycle(info, name, seed, self.base["v1"], regime, lr)

    def regimes(self) -> list[str]:
        return regimes_of(self.b)

    def waves(self, lrs: dict[str, dict[str, float]] | None = None
              ) -> list[tuple[str, list[Job]]]:
        """(name, jobs) of the waves before the grid has chosen (`lrs` None), or of every wave
        with the chosen LRs ({regime: {arm: lr}})."""
        b, seeds = self.b, [CALIBRATION_SEED, *reported_seeds(self.b)]
        c = b["cpt"]
        v0 = ([Job("v0", ["pretrain", "--resume", "auto"], str(self.runs / "v0"),
                   str(self.configs / "v0.yaml"), [], "final/config.json",
                   {"kind": "pretrain"}, b["base"]["steps"] * c["micro_batch_size"]
                   * c["seq_len"])] if pretrains_v0(b, self.base_dir) else [])
        second = [Job(v, ["pretrain", "--resume", "auto"], str(self.runs / v),
                      str(self.configs / f"{v}.yaml"), [], "final/config.json",
                      {"kind": "pretrain"}, steps * c["micro_batch_size"] * c["seq_len"] * 2)
                  for v, steps in (("v1", c["steps"] + c.get("head_warmup_steps", 0)),
                                   *([("rand", 1)] if has_analyses(b) else []))]
        methods, gated = tuning_methods(b), gate_method(b)
        second += [self.tune(bundle(s, method=m), "v0", full_data(m), lr_keys(b, m)["bundle_lr"])
                   for m in methods for s in seeds]
        points = {0.0: self.base["v0"],
                  **{f: str(self.runs / "v1" / "exports" / f"step-{s}")
                     for f, s in export_steps(b).items()}}
        third = [self.recycle(compat(s, method=m), RecyclingMethod.COMPAT, s, self.base["v1"],
                              full_data(m)) for m in methods for s in seeds]
        third += [self.recycle(label_free_compat(s, m), RecyclingMethod.COMPAT, s,
                               self.base["v1"], full_data(m), label_free=True)
                  for m in methods for s in seeds]
        if export_steps(b):  # scored without labels too: bundles nearer v0 may be worth keeping
            third += [self.recycle(compat(1, p, gated), RecyclingMethod.COMPAT, 1, base,
                                   full_data(gated), label_free=p > 0)
                      for p, base in points.items()]
        if has_analyses(b):
            third += [self.tune(bundle(1, base), base, "full", lr_keys(b, "full")["bundle_lr"])
                      for base in ("v1", "rand")]
        third += [self.arm_job(arm(a, regime, CALIBRATION_SEED, lr), lr)
                  for regime in self.regimes() for a in ARMS
                  for lr in grid_of(b, regime) if len(grid_of(b, regime)) > 1]
        analysed = has_analyses(b)
        waves = [(name, jobs) for name, jobs in (
            ("v0 pretrained here", v0),
            ("v1, rand and the v0 bundles" if analysed else "v1 and the v0 bundles", second),
            ("compat, the LR grid, the analysed models" if analysed else "compat, the LR grid",
             third)) if jobs]
        if lrs is None:
            return waves
        fourth = [self.arm_job(arm(a, regime, s), lrs[regime][a])
                  for regime in self.regimes() for a in ARMS for s in reported_seeds(b)]
        if not analysed:
            return waves + [("the arms of every seed", fourth)]
        return waves + [("the arms of every seed, the analyses", fourth + self.analyses())]

    def analyses(self) -> list[Job]:
        """Connectivity and head similarity of the models tuned on v0 and on v1 (bundle 1 and v1
        tuned alike), against the ceiling (bundle 1 against rand tuned alike) as the control
        pair; the floor is two seeds on one base (bundles 1 and 0), analysed on its own."""
        v0_tuned, base = self.final(bundle(1)), self.base
        pairs = {"": {"a": v0_tuned, "base_a": base["v0"], "b": self.final(bundle(1, "v1")),
                      "base_b": base["v1"], "control_a": v0_tuned, "control_base_a": base["v0"],
                      "control_b": self.final(bundle(1, "rand")),
                      "control_base_b": base["rand"]},
                 "-floor": {"a": v0_tuned, "base_a": base["v0"],
                            "b": self.final(bundle(CALIBRATION_SEED)), "base_b": base["v0"]}}
        a, jobs = self.b["analysis"], []
        for analysis, size in (("connectivity", ["--points", str(a["points"])]),
                               ("similarity", ["--max-examples", str(a["similarity_examples"])])):
            for suffix, pair in pairs.items():
                name = analysis + suffix
                jobs.append(Job(name, ["analyze", analysis, *pair_args(pair), *size],
                                str(self.runs / name), str(self.configs / "task.yaml"), [],
                                f"{analysis}.json", {"kind": "analysis"},
                                0.2 * self.cost("full")))
        return jobs
