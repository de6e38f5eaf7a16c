"""Files read from disk: the sha256 that caches, manifests and lineage key them by, and the cache
root that fetched models, Debian packages and packed corpora live under."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    """$RTUNE_CACHE, else ~/.cache/rtune_ds."""
    root = os.environ.get("RTUNE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "rtune_ds"


def _feed(digest, path: Path):
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest


def sha256_file(path: Path) -> str:
    return _feed(hashlib.sha256(), path).hexdigest()


def sha256_files(root: Path, files: list[Path]) -> str:
    """One sha256 of the files' names (relative to root) and bytes, in the order given."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(root)).encode())
        _feed(digest, file)
    return digest.hexdigest()
