"""Unlabeled inputs that the old decoder base generates from a handful of example texts, for
label-free recycling when a team kept neither labels nor inputs (Trans-LoRA's setting): the
mechanism of `rtune generate-inputs`.

Each input is the continuation of a few-shot list prompt: K example texts drawn (seeded) from the
examples file, one per line as "- text", then an open "-" item. The base samples (temperature,
top-p) until the first newline or EOS, and what comes before the newline, stripped, is the input.
An empty output, one equal to an example or to an input already made is dropped and another is
sampled, at most ATTEMPTS_PER_INPUT samples per input asked for; the record says how many came out.

The prompt is plain text even when the tokenizer has a chat template: the inputs should read like
the examples, i.e. a list the base continues, and a chat turn would make the model answer a request
(a reply to "write another one") instead.

Deterministic: the shots come from random.Random(seed) and the sampling from torch's generator
seeded with `seed` (the caller's random state is left as it was); the same seed, batch size and
thread count give the same file."""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from rtune_ds.artifacts.lineage import lineage_record
from rtune_ds.data.corpus import content_hash
from rtune_ds.data.examples import unlabeled_texts
from rtune_ds.data.tokenizer import load_tokenizer, pad_record
from rtune_ds.errors import ConfigError, RunError
from rtune_ds.io import save_json, save_text
from rtune_ds.models.hf_config import check_positions, is_encoder, read_hf_config
from rtune_ds.train.monitor import progress_bar

ITEM, OPEN_ITEM = "- ", "-"  # the prompt's list: "- text" per example, then "-" for the base
ATTEMPTS_PER_INPUT = 4  # samples allowed per input asked for (drops are resampled)
WHERE = "command line"


@dataclass(frozen=True)
class Settings:
    """What the command line asks for; recorded whole beside the inputs."""

    n: int
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 0.95
    seed: int = 0
    shots: int = 4
    batch_size: int = 16
    text_field: str = "text"

    def check(self) -> None:
        for name, ok, need in (("n", self.n >= 1, "at least 1"),
                               ("max_new_tokens", self.max_new_tokens >= 1, "at least 1"),
                               ("temperature", self.temperature > 0, "above 0"),
                               ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
                               ("shots", self.shots >= 1, "at least 1"),
                               ("batch_size", self.batch_size >= 1, "at least 1")):
            if not ok:
                raise ConfigError(f"{WHERE}: key '--{name.replace('_', '-')}': "
                                  f"{getattr(self, name)} must be {need}")


@dataclass
class Made:
    """The inputs that came out, and what it took."""

    texts: list[str] = field(default_factory=list)
    attempts: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("empty", "equal to an example", "duplicate"), 0))
    tokens: int = 0  # sampled tokens up to each cut


def record_path(out: Path) -> Path:
    """The record beside OUT.jsonl: OUT.jsonl.lineage.json (what a directory artifact keeps in its
    lineage.json; a name no reader of *.jsonl picks up as inputs)."""
    return out.with_name(out.name + ".lineage.json")


def one_line(text: str) -> str:
    return " ".join(text.split())


def prompt(shots: list[str]) -> str:
    return "".join(f"{ITEM}{text}\n" for text in shots) + OPEN_ITEM


def encode_prompts(tokenizer, prompts: list[str]) -> dict[str, torch.Tensor]:
    """The prompts as a batch padded on the tokenizer's padding side: BOS first when the tokenizer
    puts one before a text itself (Llama's does; SmolLM2's and GPT-2's do not), never an EOS."""
    bos = tokenizer.bos_token_id
    lead = [bos] if bos is not None and tokenizer("x")["input_ids"][:1] == [bos] else []
    rows = [lead + ids for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    return tokenizer.pad({"input_ids": rows}, return_tensors="pt")


def check_request(base: Path, examples: Path, out: Path, settings: Settings
                  ) -> tuple[list[str], object]:
    """Every refusal before any compute: the flags, --out and its record (new files only), --base
    (a decoder: a causal LM that continues a prompt), the examples (their texts; no other column
    is read) and the longest prompt against the base's positions. (The examples, one line each;
    the base's tokenizer.)"""
    settings.check()
    if out.suffix != ".jsonl":
        raise ConfigError(f"{WHERE}: key '--out': {out} must end in .jsonl (the inputs are "
                          "written as JSON lines, as `recycle --unlabeled` reads them)")
    for path in (out, record_path(out)):
        if path.exists():
            raise ConfigError(f"{WHERE}: key '--out': {path} exists; generate-inputs writes new "
                              "files")
    check_decoder(base)
    texts = [one_line(t) for t in unlabeled_texts(str(examples), settings.text_field,
                                                   "--examples", "--text-field", WHERE)]
    tokenizer = load_tokenizer(base)
    k = min(settings.shots, len(texts))
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    longest = [texts[i] for i in sorted(range(len(texts)), key=lengths.__getitem__)[-k:]]
    length = encode_prompts(tokenizer, [prompt(longest)])["input_ids"].shape[1]
    check_positions(str(base), length + settings.max_new_tokens, "--shots",
                    f"in the longest {k}-shot prompt and --max-new-tokens", WHERE)
    return texts, tokenizer


def check_decoder(base: Path) -> str:
    """The base's model_type, if transformers has a causal LM of it that continues text; an
    encoder (BERT-style, even with its LM-head class) or a directory without a config is refused."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not (base / "config.json").is_file():
        raise ConfigError(f"{WHERE}: key '--base': {base} has no config.json (a local HF decoder "
                          "directory is needed)")
    config = read_hf_config(base)
    model_type, archs = config.get("model_type"), config.get("architectures") or []
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(f"{WHERE}: key '--base': {base} is a '{model_type}' model, which "
                          "transformers has no causal LM for; inputs are generated by a decoder")
    if is_encoder(config) and not config.get("is_decoder"):
        raise ConfigError(f"{WHERE}: key '--base': {base} is a '{model_type}' encoder "
                          f"({', '.join(archs) or 'no architectures'}, not is_decoder): it "
                          "fills masks and does not continue a prompt; inputs are generated by "
                          "a decoder")
    return model_type


def load_decoder(base: Path, tokenizer):
    """The causal LM in eval mode; its tokenizer is set to pad on the left, as a decoder batch
    must."""
    from transformers import AutoModelForCausalLM

    from rtune_ds.models.loader import from_local

    if tokenizer.pad_token_id is None:
        raise ConfigError(f"{WHERE}: key '--base': the tokenizer at {base} has no pad token and "
                          "no EOS token to pad with")
    tokenizer.padding_side = "left"
    model, missing = from_local(AutoModelForCausalLM, base, "generation (a causal LM)")
    if missing:  # an LM head (or more) not in the checkpoint would sample from random weights
        raise ConfigError(f"{WHERE}: key '--base': the checkpoint at {base} lacks "
                          f"{len(missing)} tensors of its causal LM ({sorted(missing)[0]}, ...)")
    return model.eval()


class _AtNewline(StoppingCriteria):
    """A row is done once its last token holds a newline (the open item is complete)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        last = self.tokenizer.batch_decode(input_ids[:, -1:])
        return torch.tensor(["\n" in text for text in last], device=input_ids.device)


def generate(model, tokenizer, examples: list[str], settings: Settings) -> Made:
    """Up to `settings.n` new inputs (fewer only when the attempts ran out), in batches."""
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos if eos is not None
                                                 else tokenizer.eos_token_id]) - {None}
    stops = eos | {tokenizer.pad_token_id}  # a finished row is padded
    k, rng, made = min(settings.shots, len(examples)), random.Random(settings.seed), Made()
    known = set(examples)
    seen, budget = set(known), ATTEMPTS_PER_INPUT * settings.n
    bar = progress_bar(settings.n, "generate-inputs")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(settings.seed)
        while len(made.texts) < settings.n and made.attempts < budget:
            size = min(settings.batch_size, settings.n - len(made.texts), budget - made.attempts)
            batch = encode_prompts(tokenizer, [prompt(rng.sample(examples, k))
                                               for _ in range(size)])
            out = model.generate(**batch, do_sample=True, temperature=settings.temperature,
                                 top_p=settings.top_p, top_k=0,
                                 max_new_tokens=settings.max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(eos),
                                 stopping_criteria=StoppingCriteriaList([_AtNewline(tokenizer)]))
            for row in out[:, batch["input_ids"].shape[1]:].tolist():
                cut = next((i for i, t in enumerate(row) if t in stops), len(row))
                made.tokens += cut
                text = one_line(tokenizer.decode(row[:cut], skip_special_tokens=True)
                                .split("\n", 1)[0])
                made.attempts += 1
                why = ("empty" if not text else "equal to an example" if text in known
                       else "duplicate" if text in seen else None)
                if why:
                    made.dropped[why] += 1
                    continue
                seen.add(text)
                made.texts.append(text)
                bar.update(1)
    bar.close()
    return made


def write(out: Path, base: Path, examples: Path, n_examples: int, settings: Settings,
          made: Made, tokenizer, command: str, seconds: float) -> dict:
    """OUT.jsonl (one {--text-field: text} per input, the column the examples, and so the task,
    hold texts in) and its record, each whole or absent; no input made is a RunError with nothing
    written."""
    if not made.texts:
        raise RunError(f"{out}: none of {made.attempts} samples was a new input "
                       f"(dropped: {made.dropped}); nothing written")
    record = lineage_record(
        command, asdict(settings), str(base),
        [{"split": "examples", "path": str(examples.resolve()), "sha256": content_hash(examples),
          "examples": n_examples}], 0, made.tokens,
        {"kind": "generated inputs",
         "inputs": {"path": str(out.resolve()), "asked": settings.n, "made": len(made.texts),
                    "attempts": made.attempts, "max_attempts": ATTEMPTS_PER_INPUT * settings.n,
                    "dropped": made.dropped, "complete": len(made.texts) == settings.n},
         "prompt": {"item": ITEM, "open_item": OPEN_ITEM, "shots": min(settings.shots,
                                                                        n_examples),
                    "chat_template": "not used (a plain list the base continues)",
                    "cut": "the first newline or EOS"},
         "pad": pad_record(tokenizer), "threads": torch.get_num_threads(),
         "seconds": round(seconds, 1)})
    field = settings.text_field
    save_text("".join(json.dumps({field: t}, ensure_ascii=False) + "\n" for t in made.texts), out)
    try:
        save_json(record, record_path(out))
    except BaseException:
        out.unlink(missing_ok=True)  # the inputs go only with their record
        raise
    return record
