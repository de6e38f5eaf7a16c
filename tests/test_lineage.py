"""Model fingerprints are memoised per process: asked again, the same files are not read again;
a changed file (content, size or mtime) gives a fresh hash."""
import builtins
import os

from rtune_ds import files
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

    monkeypatch.setattr(files, "open", open_, raising=False)  # where the hashing reads
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


def chain(tmp_path):
    """v0 (no lineage: made outside rtune) <- b0 (tuned on v0) <- b1 (b0 recycled onto v1, a base
    trained from v0), each recording its parents' fingerprints as rtune writes them."""
    import json

    v0 = model_dir(tmp_path)
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "config.json").write_text('{"model_type": "llama"}')
    (v1 / "model.safetensors").write_bytes(b"\x01" * 4096)
    (v1 / "lineage.json").write_text(json.dumps({
        "command": "rtune pretrain", "steps": 100,
        "parent": {"path": str(v0), "fingerprint": lineage.fingerprint(v0)}}))
    bundles = {}
    for name, base, recycled in (("b0", v0, None), ("b1", v1, "b0")):
        b = bundles[name] = tmp_path / name
        b.mkdir()
        (b / "bundle.json").write_text("{}")
        (b / "delta.safetensors").write_bytes(name.encode() * 100)
        record = {"command": f"rtune {'recycle' if recycled else 'finetune'}", "steps": 10,
                  "data": [{"split": "train", "path": "/d/train.jsonl", "sha256": "ab" * 32,
                            "examples": 5}],
                  "parent": {"path": str(base), "fingerprint": lineage.fingerprint(base)}}
        if recycled:
            record["recycled"] = {"method": "init", "bundle": {
                "path": str(bundles[recycled]),
                "fingerprint": lineage.bundle_fingerprint(bundles[recycled])}}
        (b / "lineage.json").write_text(json.dumps(record))
    return v0, v1, bundles


def test_the_tree_follows_bases_and_recycled_bundles_to_the_origin(tmp_path):
    v0, v1, bundles = chain(tmp_path)
    tree = lineage.lineage_tree(bundles["b1"])
    assert (tree["kind"], tree["method"]) == ("bundle", "init")
    base, source = tree["parents"]
    assert (base["role"], base["path"], base["changed"]) == ("base", str(v1), False)
    assert base["parents"][0]["path"] == str(v0) and base["parents"][0]["origin"] is True
    assert (source["role"], source["path"], source["changed"]) == ("recycled from",
                                                                   str(bundles["b0"]), False)
    assert source["parents"][0]["path"] == str(v0)
    text = "\n".join(lineage.render_tree(tree))
    assert text.count("fingerprint matches") == 4 and "CHANGED" not in text
    assert "data: train /d/train.jsonl" in text and "origin: no lineage.json" in text


def test_a_parent_changed_since_it_was_recorded_is_flagged(tmp_path):
    v0, v1, bundles = chain(tmp_path)
    (bundles["b0"] / "delta.safetensors").write_bytes(b"retuned" * 100)
    tree = lineage.lineage_tree(bundles["b1"])
    assert tree["parents"][1]["changed"] is True and tree["parents"][0]["changed"] is False
    assert "CHANGED since recorded" in "\n".join(lineage.render_tree(tree))
    (bundles["b0"] / "delta.safetensors").unlink()
    (bundles["b0"] / "bundle.json").unlink()
    (bundles["b0"] / "lineage.json").unlink()
    bundles["b0"].rmdir()
    assert lineage.lineage_tree(bundles["b1"])["parents"][1]["kind"] == "missing"
