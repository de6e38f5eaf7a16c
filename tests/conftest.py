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
        "train": {"max_steps": 16, "micro_batch_size": 4, "grad_accum": 2, "lr": 3e-3,
                  "warmup_steps": 2, "eval_every": 8, "eval_max_blocks": 32},
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
          launcher_args: list[str] = ()) -> subprocess.CompletedProcess:
    """Run `rtune ARGS` plainly (nproc=1) or under the deepspeed launcher with nproc CPU ranks."""
    if nproc == 1 and not launcher_args:
        cmd = [sys.executable, "-m", "rtune_ds", *args]
    else:
        cmd = [str(DEEPSPEED), *(launcher_args or ["--num_gpus", str(nproc),
                                                   "--master_port", str(free_port())]),
               "--module", "rtune_ds", *args]
    return subprocess.run(cmd, cwd=REPO, env=base_env(cache), capture_output=True, text=True,
                          timeout=timeout)


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
                  "eval_every": 15},
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


def recycle(env, name, bundle, base, method="compat", nproc=1, ds="zero0", extra=()):
    root, _, _, cache = env
    cfg = write_config(root / f"{name}.yaml", finetune_config(root / name, base, "full",
                                                              train={"max_steps": 10,
                                                                     "eval_every": 5}))
    return rtune(["recycle", "--config", str(cfg), "--ds-config", f"ds_configs/{ds}.json",
                  "--method", method, "--bundle", str(bundle), "--base", str(base), *extra],
                 cache, nproc)


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
