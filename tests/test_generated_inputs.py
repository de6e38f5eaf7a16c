"""`rtune generate-inputs`, in-process on a tiny decoder saved as SmolLM2 is, with a GPT-2-style
tokenizer (no pad token): N new inputs come out (none empty, none an example, none twice), the
same seed gives the same file and another seed another, the examples' labels are never read, the
record names the base's fingerprint and the examples' sha256, fewer than N is said when the
attempts run out, and an encoder base or an existing --out is refused with nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, rtune_in_process, tiny_bert_base
from tiny_llm import smollm_like

from rtune_ds.artifacts.lineage import fingerprint
from rtune_ds.data.corpus import content_hash
from rtune_ds.data.tokenizer import load_tokenizer
from rtune_ds.errors import ConfigError
from rtune_ds.jobs.generated_inputs import Settings, encode_prompts, prompt, record_path
from rtune_ds.recipes.generate_inputs import run

FAST = {"max_new_tokens": 12, "batch_size": 4, "shots": 3}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A model this small runs fastest on one thread (and is not slowed by a busy CPU's other
    thread), as `rtune_in_process` runs it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> Path:
    return smollm_like(tmp_path_factory.mktemp("gen") / "nopad", pad=False)


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> tuple[Path, list[str]]:
    """Eight example texts whose label column is garbage (mixed types, nulls, blanks): a reader
    of labels would choke on it."""
    texts = [json.loads(line)["text"]
             for line in (FIXTURES / "cls_train.jsonl").read_text().splitlines()[:8]]
    labels = [3, None, {"x": [1]}, "", "??", [], 2.5, None]
    path = tmp_path_factory.mktemp("examples") / "few.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n"
                            for t, lab in zip(texts, labels)))
    return path, [" ".join(t.split()) for t in texts]


def rows(path: Path, field: str = "text") -> list[str]:
    return [json.loads(line)[field] for line in path.read_text().splitlines()]


def test_n_new_inputs_come_out_and_the_record_says_what_made_them(decoder, examples, tmp_path):
    file, texts = examples
    out = tmp_path / "inputs.jsonl"
    summary = run(str(decoder), str(file), str(out), Settings(n=10, **FAST), "rtune test")
    made = rows(out)
    assert len(made) == 10 == summary["made"] and summary["complete"]
    assert all(t.strip() and "\n" not in t for t in made)
    assert not set(made) & set(texts) and len(set(made)) == len(made)
    record = json.loads(record_path(out).read_text())
    assert record["data"][0]["sha256"] == content_hash(file) == summary["examples"]["sha256"]
    assert record["parent"] == {"path": str(decoder.resolve()), "fingerprint": fingerprint(decoder)}
    assert record["inputs"]["asked"] == 10 and record["inputs"]["attempts"] >= 10
    assert record["config"]["seed"] == 0 and record["config"]["top_p"] == 0.95
    assert record["pad"]["source"] == "eos: the tokenizer has no pad token"
    assert record["code_version"]


def test_a_prompt_is_a_list_with_an_open_item_and_a_batch_is_padded_on_the_left(decoder):
    assert prompt(["a compiler", "the kernel"]) == "- a compiler\n- the kernel\n-"
    tokenizer = load_tokenizer(decoder)
    tokenizer.padding_side = "left"
    batch = encode_prompts(tokenizer, [prompt(["a compiler for the kernel"]), prompt(["a"])])
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][:, -1].all()
    assert (batch["input_ids"][:, -1] == tokenizer.convert_tokens_to_ids("-")).all()


def test_the_same_seed_gives_the_same_file_and_another_seed_another(decoder, examples, tmp_path):
    made = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = tmp_path / f"{name}.jsonl"
        run(str(decoder), str(examples[0]), str(out), Settings(n=6, seed=seed, **FAST), "test")
        made[name] = out.read_bytes()
    assert made["a"] == made["b"] and made["a"] != made["c"]


def test_fewer_than_n_when_the_attempts_run_out_is_said(decoder, examples, tmp_path):
    """One near-greedy token per input: a handful of distinct ones at most, the rest dropped."""
    out = tmp_path / "short.jsonl"
    settings = Settings(n=12, max_new_tokens=1, temperature=1e-3, batch_size=16, shots=3)
    summary = run(str(decoder), str(examples[0]), str(out), settings, "test")
    inputs = json.loads(record_path(out).read_text())["inputs"]
    assert 0 < len(rows(out)) == inputs["made"] < 12 and not summary["complete"]
    assert inputs["attempts"] == inputs["max_attempts"] == 48
    assert sum(inputs["dropped"].values()) == 48 - inputs["made"]


def test_an_encoder_base_and_an_existing_out_are_refused_with_nothing_written(
        decoder, examples, tmp_path, cache_dir):
    out = tmp_path / "inputs.jsonl"
    with pytest.raises(ConfigError, match=r"key '--base': .*bert-tiny is a 'bert' encoder"):
        run(str(tiny_bert_base(cache_dir)), str(examples[0]), str(out), Settings(n=2), "test")
    assert list(tmp_path.iterdir()) == []
    out.write_text("kept\n")
    with pytest.raises(ConfigError, match=r"key '--out': .*inputs.jsonl exists"):
        run(str(decoder), str(examples[0]), str(out), Settings(n=2), "test")
    assert out.read_text() == "kept\n" and not record_path(out).exists()
    with pytest.raises(ConfigError, match=r"key '--top-p': 1.5 must be in \(0, 1\]"):
        run(str(decoder), str(examples[0]), str(tmp_path / "x.jsonl"), Settings(n=2, top_p=1.5),
            "test")
    with pytest.raises(ConfigError, match=r"key '--shots': \d+ tokens in the longest 3-shot "
                                          r"prompt .* takes at most 256"):
        run(str(decoder), str(examples[0]), str(tmp_path / "x.jsonl"),
            Settings(n=2, shots=3, max_new_tokens=250), "test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs.jsonl"]


def test_the_cli_prints_what_it_made(decoder, tmp_path, cache_dir):
    """A csv with its texts in `sentence`: the inputs are written in that column too, as the task
    that reads the examples reads them."""
    few = tmp_path / "few.csv"
    few.write_text("label,sentence\n1,a compiler for the old kernel\n,machine code in memory\n"
                   "x,the shell script\n")
    out = tmp_path / "cli.jsonl"
    proc = rtune_in_process(["generate-inputs", "--base", decoder, "--examples", few, "--n", 4,
                             "--out", out, "--max-new-tokens", 8, "--seed", 3, "--text-field",
                             "sentence"], cache_dir)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout[proc.stdout.index("{"):])
    made = rows(out, "sentence")
    assert printed["path"] == str(out) and printed["made"] == 4 == len(made)
    assert printed["record"] == str(record_path(out)) and printed["first"] == made[:3]
    proc = rtune_in_process(["generate-inputs", "--base", tiny_bert_base(cache_dir), "--examples",
                             few, "--n", 4, "--out", tmp_path / "no.jsonl"], cache_dir)
    assert proc.returncode == 2 and "key '--base'" in proc.stderr and "encoder" in proc.stderr
    assert not (tmp_path / "no.jsonl").exists()
