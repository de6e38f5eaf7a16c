"""Model fingerprints are memoised per process: asked again, the same files are not read again;
a changed file (content, size or mtime) gives a fresh hash."""
import builtins
import os

from rtune_ds.artifacts import lineage


def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama"}')
    (d / "model.safetensors").write_bytes(b"\x00" * 4096)
    (d / "tokenizer.json").write_text("{}")  # not part of the fingerprint
    return d


def counting_open(monkeypatch) -> list[str]:
    opened = []

    def open_(file, *args, **kwargs):
        opened.append(os.path.basename(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(lineage, "open", open_, raising=False)
    return opened


def test_a_second_fingerprint_reads_nothing(tmp_path, monkeypatch):
    d = model_dir(tmp_path)
    opened = counting_open(monkeypatch)
    first = lineage.fingerprint(d)
    assert sorted(opened) == ["config.json", "model.safetensors"]
    opened.clear()
    assert lineage.fingerprint(d) == first
    assert lineage.fingerprint(tmp_path / "." / "model") == first  # keyed by the resolved path
    assert opened == []


def test_a_changed_file_is_hashed_again(tmp_path, monkeypatch):
    d = model_dir(tmp_path)
    first = lineage.fingerprint(d)
    weights = d / "model.safetensors"
    stat = weights.stat()
    weights.write_bytes(b"\x01" * 4096)  # same size: only the mtime tells
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    opened = counting_open(monkeypatch)
    second = lineage.fingerprint(d)
    assert second != first and "model.safetensors" in opened
    (d / "config.json").write_text('{"model_type": "llama", "x": 1}')
    assert lineage.fingerprint(d) not in (first, second)
    (d / "tokenizer.json").write_text('{"changed": true}')  # outside the fingerprint
    opened.clear()
    lineage.fingerprint(d)
    assert opened == []
