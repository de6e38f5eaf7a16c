"""sha256 of files (the keys of caches, manifests and lineage fingerprints) and the cache root."""
import hashlib

from rtune_ds.files import cache_root, sha256_file, sha256_files


def test_sha256_of_one_file_and_of_named_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.bin").write_bytes(b"abc" * 500_000)  # over one read chunk
    (tmp_path / "y.txt").write_bytes(b"y")
    files = [tmp_path / "d" / "x.bin", tmp_path / "y.txt"]
    assert sha256_file(files[0]) == hashlib.sha256(b"abc" * 500_000).hexdigest()
    assert sha256_files(tmp_path, files) == hashlib.sha256(
        b"d/x.bin" + b"abc" * 500_000 + b"y.txt" + b"y").hexdigest()
    assert sha256_files(tmp_path, files[::-1]) != sha256_files(tmp_path, files)


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("RTUNE_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.setenv("RTUNE_CACHE", "")
    assert cache_root().parts[-2:] == (".cache", "rtune_ds")
