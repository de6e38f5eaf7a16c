"""Shared helpers: launching real `rtune` processes (1 rank, or N ranks under the deepspeed
launcher on CPU/gloo) into a temporary run dir, with one packed-data cache per test session."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rtune_ds.launch import free_port

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
DEEPSPEED = Path(sys.executable).parent / "deepspeed"


@pytest.fixture(scope="module")
def one_rank():
    """A process group of this process alone, as a plain `python` launch gets; the environment
    it sets is put back, and DeepSpeed's cached world group dropped with the group, so later
    launches and modules from this process start their own."""
    import torch
    from deepspeed.utils import groups

    from rtune_ds import dist

    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    saved = {k: os.environ.get(k) for k in keys}
    dist.init()
    yield
    torch.distributed.destroy_process_group()
    groups._WORLD_GROUP = None  # else the next group's engines broadcast over the destroyed one
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rtune_cache")


def base_env(cache: Path) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", RTUNE_CACHE=str(cache), RTUNE_NO_PROGRESS="1",
               PYTHONUNBUFFERED="1")
    return env


def tiny_config(run_dir: Path, **sections) -> dict:
    """A small pretraining job on the committed WordNet-gloss fixture."""
    cfg = {
        "run_dir": str(run_dir),
        "seed": 3,
        "model": {"preset": "llama-1m"},
        "data": {"train": [str(FIXTURES / "general.jsonl")], "seq_len": 32, "eval_fraction": 0.1},
        # fp32 pinned: the suite asserts the same numbers on every CPU (auto would take bf16
        # where it is native)
        "train": {"max_steps": 16, "micro_batch_size": 4, "grad_accum": 2, "lr": 3e-3,
                  "warmup_steps": 2, "eval_every": 8, "eval_max_blocks": 32, "precision": "fp32"},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def rtune(args: list[str], cache: Path, nproc: int = 1, timeout: int = 600,
          launcher_args: list[str] = (), fresh_process: bool = False
          ) -> subprocess.CompletedProcess:
    """Run `rtune ARGS` as 1 rank in this process (`fresh_process`: as a plain `python -m
    rtune_ds`), or under the deepspeed launcher with nproc CPU ranks."""
    if nproc == 1 and not launcher_args and not fresh_process:
        return rtune_in_process(args, cache)
    if nproc == 1 and not launcher_args:
        cmd = [sys.executable, "-m", "rtune_ds", *args]
    else:
        cmd = [str(DEEPSPEED), *(launcher_args or ["--num_gpus", str(nproc),
                                                   "--master_port", str(free_port())]),
               "--module", "rtune_ds", *args]
    return subprocess.run(cmd, cwd=REPO, env=base_env(cache), capture_output=True, text=True,
                          timeout=timeout)


def rtune_many(jobs: list[list[str]], cache: Path, nproc: int = 2,
               timeout: int = 1200) -> subprocess.CompletedProcess:
    """Several `rtune ARGS` in one launch of nproc ranks (tests/run_many.py), each job's exit
    code checked: the launch's start-up (the launcher, every rank's imports, the process group)
    is paid once, not once per job."""
    plan = Path(cache) / f"run_many_{os.getpid()}_{free_port()}.json"
    codes = plan.with_suffix(".codes.json")
    plan.write_text(json.dumps({"jobs": [[str(a) for a in job] for job in jobs],
                                "codes": str(codes)}))
    proc = subprocess.run([str(DEEPSPEED), "--num_gpus", str(nproc), "--master_port",
                           str(free_port()), str(REPO / "tests" / "run_many.py"), str(plan)],
                          cwd=REPO, env=base_env(cache), capture_output=True, text=True,
                          timeout=timeout)
    check(proc)
    ran = json.loads(codes.read_text()) if codes.is_file() else []
    assert ran == [0] * len(jobs), f"exit codes {ran}\n{proc.stderr[-4000:]}"
    return proc


def rtune_in_process(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    """`rtune ARGS` as `python -m rtune_ds ARGS` would run it (a 1-rank process group, one
    thread, the environment of `base_env`, the repo as working directory, stdout and stderr
    captured, the exit code it would end with), without paying a process start-up: torch,
    DeepSpeed and transformers are imported once per test session (as torchtune's recipe tests
    do). The environment, thread count and working directory are put back, and the run dirs the
    launch took are let go, as its exit would."""
    import contextlib
    import gc
    import io
    import traceback

    import torch

    from rtune_ds import cli
    from rtune_ds.artifacts.run_dir import release_run_dirs

    saved_env, saved_cwd, threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(base_env(cache))
    torch.set_num_threads(1)
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main([str(a) for a in args])
            except SystemExit as exit_:  # argparse's usage errors and --help
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
            except Exception:  # what the interpreter would print before exiting 1
                traceback.print_exc()
                code = 1
    finally:
        release_run_dirs()
        os.chdir(saved_cwd)
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(saved_env)
        gc.collect()
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["train/loss"] for m in read_jsonl(run_dir / "metrics.jsonl")
            if "train/loss" in m}


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


STAGES = ["zero0", "zero1", "zero2", "zero3", "zero3_offload"]


def pretrain_args(root: Path, name: str, ds: str, **train) -> list[str]:
    """`rtune pretrain` of the tiny job into root/name under ds_configs/<ds>.json."""
    cfg = write_config(root / f"{name}.yaml", tiny_config(root / name, train=train))
    return ["pretrain", "--config", str(cfg), "--ds-config", f"ds_configs/{ds}.json"]


@pytest.fixture(scope="session")
def stage_runs(tmp_path_factory, cache_dir) -> Path:
    """The tiny pretraining job on 2 ranks under every ZeRO stage (root/<stage>), and under
    ZeRO-2 and ZeRO-3 stopped after 7 steps and then resumed (root/<stage>_resumed): one launch
    for all, read by every module that compares against an uninterrupted run."""
    root = tmp_path_factory.mktemp("stage_runs")
    jobs = [pretrain_args(root, stage, stage) for stage in STAGES]
    for stage in ("zero2", "zero3"):
        resumed = pretrain_args(root, f"{stage}_resumed", stage)
        jobs += [[*resumed, "train.stop_after=7"], [*resumed, "--resume", "auto"]]
    rtune_many(jobs, cache_dir)
    return root


def tiny_base(cache_dir: Path, preset: str = "llama-1m") -> Path:
    """A tiny untrained base (preset + a BPE tokenizer trained on the fixtures), built once per
    test session: stands in for an `rtune pretrain` export."""
    from rtune_ds.data.tokenizer import train_tokenizer
    from rtune_ds.models.presets import build_preset

    out = cache_dir / "bases" / preset
    if not (out / "config.json").is_file():
        tok = train_tokenizer([str(FIXTURES / "general.jsonl"), str(FIXTURES / "cls_train.jsonl")],
                              "text", 600,
                              cache_dir / "bases" / "tokenizer")
        model = build_preset(preset, tok, 64, 0)
        model.save_pretrained(str(out))
        tok.save_pretrained(str(out))
    return out


FINETUNE_STEPS = 30


def finetune_config(run_dir: Path, base: Path, method: str = "full", **sections) -> dict:
    cfg = {
        "run_dir": str(run_dir), "seed": 3, "model": {"path": str(base)},
        "task": {"type": "classification", "train": str(FIXTURES / "cls_train.jsonl"),
                 "dev": str(FIXTURES / "cls_dev.jsonl"), "test": str(FIXTURES / "cls_test.jsonl"),
                 "max_len": 32},
        "tuning": {"method": method},
        # global batch 32 on any world size: the data order does not depend on it
        "train": {"max_steps": FINETUNE_STEPS, "micro_batch_size": 8, "global_batch_size": 32,
                  "lr": 3e-3 if method == "full" else 2e-2, "warmup_steps": 2,
                  "eval_every": 15, "precision": "fp32"},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def derived_base(cache_dir: Path, name: str, change) -> Path:
    """A new base version: v0 with its weights perturbed (seeded), then `change(model)`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = cache_dir / "bases" / name
    if not (out / "config.json").is_file():
        v0 = tiny_base(cache_dir)
        model = AutoModelForCausalLM.from_pretrained(str(v0), dtype=torch.float32)
        torch.manual_seed(11)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        model = change(model)
        model.save_pretrained(str(out))
        AutoTokenizer.from_pretrained(str(v0)).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def recycle_env(tmp_path_factory, cache_dir):
    """(root, bases v0/v1, bundles full/lora tuned on v0 at 1 rank, cache dir), made once."""
    root = tmp_path_factory.mktemp("recycle")
    bases = {"v0": tiny_base(cache_dir), "v1": derived_base(cache_dir, "v1", lambda m: m)}
    bundles = {}
    for method in ("full", "lora"):
        cfg = finetune_config(root / f"ft_{method}", bases["v0"], method,
                              train={"max_steps": 20, "eval_every": 10})
        check(rtune(["finetune", "--config", str(write_config(root / f"ft_{method}.yaml", cfg))],
                    cache_dir))
        bundles[method] = root / f"ft_{method}" / "final"
    return root, bases, bundles, cache_dir


def recycle_args(env, name, bundle, base, method="compat", ds="zero0", extra=()) -> list[str]:
    """`rtune recycle` of `bundle` onto `base` into env's root/name (10 steps where it tunes)."""
    root = env[0]
    cfg = write_config(root / f"{name}.yaml", finetune_config(root / name, base, "full",
                                                              train={"max_steps": 10,
                                                                     "eval_every": 5}))
    return ["recycle", "--config", str(cfg), "--ds-config", f"ds_configs/{ds}.json",
            "--method", method, "--bundle", str(bundle), "--base", str(base), *extra]


def recycle(env, name, bundle, base, method="compat", nproc=1, ds="zero0", extra=()):
    return rtune(recycle_args(env, name, bundle, base, method, ds, extra), env[3], nproc)


WORDPIECE_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                      "sep_token": "[SEP]", "mask_token": "[MASK]"}


def wordpiece_tokenizer(out_dir: Path) -> Path:
    """A small uncased WordPiece tokenizer trained on the fixtures ([PAD]=0, no BOS/EOS), saved as
    real BERT checkpoints are, with the truncation and padding (Fixed 128) settings the released
    all-MiniLM-L6-v2 tokenizer.json carries. Built once: an existing `out_dir` is kept."""
    if (out_dir / "tokenizer.json").is_file():
        return out_dir
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer
    from transformers import BertTokenizerFast

    from rtune_ds.io import save_json, save_text, staged_dir

    texts = [json.loads(line)["text"] for name in ("general.jsonl", "cls_train.jsonl")
             for line in (FIXTURES / name).read_text().splitlines() if line.strip()]
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = WordPieceTrainer(vocab_size=1000, special_tokens=list(WORDPIECE_SPECIALS.values()))
    wp.train_from_iterator(texts, trainer)
    cls, sep = wp.token_to_id("[CLS]"), wp.token_to_id("[SEP]")
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    wp.decoder = decoders.WordPiece()
    wp.enable_truncation(max_length=128)
    wp.enable_padding(length=128, pad_id=0, pad_token="[PAD]")
    tok = BertTokenizerFast(tokenizer_object=wp, do_lower_case=True, model_max_length=512,
                            **WORDPIECE_SPECIALS)
    vocab = sorted(wp.get_vocab().items(), key=lambda kv: kv[1])
    with staged_dir(out_dir, first_wins=True) as tmp:
        tok.save_pretrained(str(tmp))
        # transformers 5 writes only tokenizer.json and tokenizer_config.json; released BERT
        # checkpoints also hold these two
        save_json(tok.special_tokens_map, tmp / "special_tokens_map.json")
        save_text("".join(f"{token}\n" for token, _ in vocab), tmp / "vocab.txt")
    return out_dir


def tiny_bert_base(cache_dir: Path) -> Path:
    """A tiny BERT saved as released encoders are (all-MiniLM-L6-v2): `BertModel` weights (seeded)
    with a pooler and no MLM head, architectures ['BertModel'], beside the WordPiece tokenizer's
    files as written (no EOS). Built once per test session."""
    import shutil

    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from rtune_ds.io import staged_dir

    out = cache_dir / "bases" / "bert-tiny"
    if (out / "config.json").is_file():
        return out
    tok_dir = wordpiece_tokenizer(cache_dir / "bases" / "wordpiece")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    config = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128, max_position_embeddings=128,
                        pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = BertModel(config)
    with staged_dir(out, first_wins=True) as tmp:
        model.save_pretrained(str(tmp))
        for file in tok_dir.iterdir():
            shutil.copy(file, tmp)
    return out


def rtune_under(args: list[str], cache: Path, preexec) -> subprocess.CompletedProcess:
    """`rtune ARGS` in a process set up by `preexec` (a umask, a file-size limit)."""
    return subprocess.run([sys.executable, "-m", "rtune_ds", *args], cwd=REPO,
                          env=base_env(cache), capture_output=True, text=True, timeout=900,
                          preexec_fn=preexec)


def finished_runs(cache: Path) -> dict[str, Path]:
    """A tiny pretraining run and a full fine-tuning run (on the tiny base), finished under umask
    022; made once per test session and shared by the test modules that read them."""
    root, base = cache / "finished_runs", tiny_base(cache)
    jobs = {"pretrain": tiny_config(root / "pretrain", train={"max_steps": 4, "eval_every": 0}),
            "finetune": finetune_config(root / "finetune", base, "full",
                                        train={"max_steps": 4, "eval_every": 2})}
    root.mkdir(exist_ok=True)
    for name, cfg in jobs.items():
        if not (root / name / "summary.json").is_file():
            config = write_config(root / f"{name}.yaml", cfg)
            check(rtune_under([name, "--config", str(config)], cache, lambda: os.umask(0o022)))
    return {"base": base, **{name: root / name for name in jobs}}


def engine_of(model, zero: dict | None = None):
    """A DeepSpeed engine around a small model: AdamW at 0.05, micro batch 2, a decaying LR."""
    import deepspeed
    from torch.optim.lr_scheduler import LambdaLR

    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
              "optimizer": {"type": "AdamW", "params": {"lr": 0.05}},
              "zero_optimization": zero or {"stage": 0}, "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=config, lr_scheduler=lambda opt: LambdaLR(opt, lambda s: 1 / (1 + s)))
    return engine


def bert_config(run_dir: Path, base: Path, **model) -> dict:
    """The tiny pretraining job with MLM on the BERT checkpoint `base`."""
    cfg = tiny_config(run_dir, model={"path": str(base), "objective": "mlm", **model})
    cfg["model"].pop("preset")
    return cfg


@pytest.fixture(scope="session")
def bert_v1(tmp_path_factory, cache_dir) -> tuple[Path, str]:
    """v0 as released (tiny_bert_base) -> v1 by `rtune pretrain` (MLM, 2 ranks, ZeRO-3, the
    missing MLM head warmed up 20 steps at 3e-2, then 6 steps), stopped after 3 steps and
    resumed: (its run dir, the head warm-up's metrics.jsonl as the first launch left it)."""
    root = tmp_path_factory.mktemp("bert_v1")
    cfg = bert_config(root / "v1", tiny_bert_base(cache_dir), head_warmup_steps=20,
                      head_warmup_lr=3e-2)
    cfg["train"].update(max_steps=6, eval_every=3)
    args = ["pretrain", "--config", str(write_config(root / "v1.yaml", cfg)), "--ds-config",
            "ds_configs/zero3.json"]
    check(rtune([*args, "train.stop_after=3"], cache_dir, nproc=2))
    warmup_log = (root / "v1" / "head_warmup" / "metrics.jsonl").read_text()
    check(rtune([*args, "--resume", "auto"], cache_dir, nproc=2))
    return root / "v1", warmup_log
