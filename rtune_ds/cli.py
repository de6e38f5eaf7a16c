"""rtune <command>: parse, then hand a RunConfig to a recipe. Errors in the user's input exit 2
with one line that names the file and key."""
from __future__ import annotations

import argparse
import os
import sys

from rtune_ds.config import ConfigError


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="RunConfig YAML or JSON")
    p.add_argument("--ds-config", help="DeepSpeed JSON (overrides the config's 'deepspeed')")
    p.add_argument("--resume", help="'auto': continue from the run dir's last complete checkpoint "
                   "if there is one; 'required': fail if there is none")
    p.add_argument("overrides", nargs="*", help="dotted overrides: train.lr=3e-4 data.seq_len=64")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rtune", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    _add_run_args(sub.add_parser("pretrain", help="(continual) pretraining of a base model"))
    _add_run_args(sub.add_parser("finetune", help="tune a base for a task -> adapted-weights bundle"))
    export = sub.add_parser("export", help="bundle + its base -> a plain merged HF model directory")
    export.add_argument("--bundle", required=True, help="an adapted-weights bundle directory")
    export.add_argument("--base", required=True, help="the base model directory it was tuned on")
    export.add_argument("--out", required=True, help="output directory (replaced)")
    export.add_argument("--allow-other-base", action="store_true",
                        help="apply even if the base's fingerprint is not the bundle's")
    data = sub.add_parser("data", help="data preparation").add_subparsers(dest="data_command",
                                                                          required=True)
    prep = data.add_parser("prepare", help="build corpora from Debian's wordnet-base and dict-foldoc")
    prep.add_argument("--out", default="data", help="output directory")
    prep.add_argument("--cache-dir", help="where .deb packages are fetched and unpacked")
    prep.add_argument("--wordnet-dir", help="local wordnet-base files (dir or .deb) instead of apt")
    prep.add_argument("--foldoc-dir", help="local dict-foldoc files (dir or .deb) instead of apt")
    sweep = sub.add_parser("sweep", help="the same job once per DeepSpeed config, then a table")
    sweep.add_argument("--job", required=True, help="RunConfig of a pretraining job")
    sweep.add_argument("--ds-configs", nargs="+", required=True, help="DeepSpeed JSON files")
    sweep.add_argument("--nproc", type=int, default=2, help="ranks per launch")
    sweep.add_argument("--out", default="runs/sweep", help="one run dir per config below this")
    sweep.add_argument("overrides", nargs="*", help="dotted overrides for every launch")
    bench = sub.add_parser("bench", help="benchmarks that print JSON").add_subparsers(
        dest="bench_command", required=True)
    tp = bench.add_parser("throughput", help="trainer vs a plain PyTorch loop, tokens/s (1 rank)")
    _add_run_args(tp)
    tp.add_argument("--steps", type=int, default=30)
    tp.add_argument("--warmup", type=int, default=5)
    tp.add_argument("--repeats", type=int, default=3)
    cmp = bench.add_parser("compare", help="trainer vs HF Trainer vs plain DDP (under the launcher)")
    _add_run_args(cmp)
    cmp.add_argument("--steps", type=int, default=30)
    cmp.add_argument("--warmup", type=int, default=5)
    return ap


def run_config(args, command: str = "pretrain"):
    from rtune_ds.config import load_run_config

    overrides = list(args.overrides)
    if args.ds_config:
        overrides.append(f"deepspeed={args.ds_config}")
    return load_run_config(args.config, overrides, command), args.config or "command line"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # the deepspeed launcher passes --local_rank=N first; LOCAL_RANK in the environment says the same
    argv = [a for a in argv if not a.startswith("--local_rank")]
    args = parser().parse_args(argv)
    if args.command in ("pretrain", "finetune", "bench") and args.resume not in (None, "auto", "required"):
        print(f"rtune: error: --resume must be 'auto' or 'required', got {args.resume!r}",
              file=sys.stderr)
        return 2
    try:
        if args.command == "pretrain":
            from rtune_ds.recipes import pretrain

            cfg, where = run_config(args)
            pretrain.run(cfg, where, args.resume, "rtune " + " ".join(argv))
        elif args.command == "finetune":
            from rtune_ds.recipes import finetune

            cfg, where = run_config(args, "finetune")
            finetune.run(cfg, where, args.resume, "rtune " + " ".join(argv))
        elif args.command == "export":
            from rtune_ds.recycle.bundle import export_merged

            export_merged(args.bundle, args.base, args.out, "rtune " + " ".join(argv),
                          check_fingerprint=not args.allow_other_base)
        elif args.command == "sweep":
            from rtune_ds.recipes import sweep

            sweep.run(args.job, args.ds_configs, args.nproc, args.out, args.overrides)
        elif args.command == "data":
            from rtune_ds.recipes import prepare_data

            prepare_data.run(args)
        elif args.command == "bench":
            from rtune_ds.recipes import bench

            cfg, where = run_config(args)
            if args.bench_command == "throughput":
                bench.throughput(cfg, where, args.steps, args.warmup, args.repeats)
            else:
                bench.compare(cfg, where, args.steps, args.warmup)
    except ConfigError as err:
        rank = os.environ.get("RANK", "0")
        print(f"rtune: error{'' if rank == '0' else f' (rank {rank})'}: {err}", file=sys.stderr)
        return 2
    return 0
