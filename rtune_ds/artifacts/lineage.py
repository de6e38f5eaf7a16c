"""The lineage record that makes an artifact explain itself, and content fingerprints of models."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

from rtune_ds import __version__

_FINGERPRINTS: dict[tuple, str] = {}  # (resolved dir, (name, size, mtime_ns) per file) -> hash


def fingerprint(model_dir: str | Path) -> str:
    """Content fingerprint of a model directory: its config and weight files. Memoised per
    process (one recycle run asks for the new base's several times); a file whose size or mtime
    changed is hashed again."""
    model_dir = Path(model_dir)
    files = [file for file in sorted(model_dir.iterdir())
             if file.name == "config.json" or file.suffix in (".safetensors", ".bin")]
    stats = [file.stat() for file in files]
    key = (str(model_dir.resolve()),
           tuple((file.name, st.st_size, st.st_mtime_ns) for file, st in zip(files, stats)))
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.name.encode())
            with open(file, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        _FINGERPRINTS[key] = digest.hexdigest()[:32]
    return _FINGERPRINTS[key]


def code_version() -> str:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def lineage_record(command: str, config: dict, parent: str | None, data: list[dict],
                   steps: int, tokens: int, extra: dict) -> dict:
    return {
        "command": command,
        "argv": sys.argv,
        "config": config,
        "parent": {"path": str(Path(parent).resolve()), "fingerprint": fingerprint(parent)}
        if parent else None,
        "data": data,
        "steps": steps,
        "tokens": tokens,
        "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }

