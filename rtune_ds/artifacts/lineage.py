"""The lineage record that makes an artifact explain itself, and content fingerprints of models."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from rtune_ds import __version__
from rtune_ds.files import sha256_files

_FINGERPRINTS: dict[tuple, str] = {}  # (resolved dir, (name, size, mtime_ns) per file) -> hash


def _hash_files(root: Path, files: list[Path]) -> str:
    """sha256 of the files' names (relative to root) and bytes, memoised per process: a file
    whose size or mtime changed is hashed again."""
    stats = [file.stat() for file in files]
    key = (str(root.resolve()), tuple((str(file.relative_to(root)), st.st_size, st.st_mtime_ns)
                                      for file, st in zip(files, stats)))
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = sha256_files(root, files)[:32]
    return _FINGERPRINTS[key]


def fingerprint(model_dir: str | Path) -> str:
    """Content fingerprint of a model directory: its config and weight files. Memoised per
    process (one recycle run asks for the new base's several times)."""
    model_dir = Path(model_dir)
    return _hash_files(model_dir, [file for file in sorted(model_dir.iterdir())
                                   if file.name == "config.json"
                                   or file.suffix in (".safetensors", ".bin")])


def bundle_fingerprint(bundle_dir: str | Path) -> str:
    """Content fingerprint of a bundle (rtune's or a plain PEFT adapter directory): its metadata
    and tensor files, adapter/ included."""
    bundle_dir = Path(bundle_dir)
    return _hash_files(bundle_dir, [file for file in sorted(bundle_dir.rglob("*"))
                                    if file.name in ("bundle.json", "adapter_config.json")
                                    or file.suffix == ".safetensors"])


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



def _artifact(path: Path) -> tuple[str, str | None]:
    """(kind, current fingerprint) of an artifact directory."""
    if (path / "bundle.json").is_file() or (path / "adapter_config.json").is_file():
        return "bundle", bundle_fingerprint(path)
    if (path / "config.json").is_file():
        return "base", fingerprint(path)
    return "directory", None


def lineage_tree(path: str | Path, recorded: str | None = None, role: str = "artifact",
                 seen: frozenset = frozenset()) -> dict:
    """What made the artifact at `path`, back to its origin: its lineage.json's command, data and
    steps, and the same for its parents (the base it was trained from; for a recycled bundle also
    the bundle it was recycled from). `recorded`: the fingerprint the child recorded for it, checked
    against the files as they are now. A run dir stands for its final/ artifact."""
    path = Path(path)
    if (path / "final" / "lineage.json").is_file():
        path = path / "final"
    path = path.resolve()
    node = {"role": role, "path": str(path), "recorded_fingerprint": recorded, "parents": []}
    if not path.is_dir():
        return {**node, "kind": "missing", "fingerprint": None}
    node["kind"], node["fingerprint"] = _artifact(path)
    node["changed"] = recorded is not None and node["fingerprint"] != recorded
    record = path / "lineage.json"
    if not record.is_file() or str(path) in seen:
        return {**node, "origin": not record.is_file()}
    lineage = json.loads(record.read_text())
    recycled = lineage.get("recycled") or {}
    node.update(command=lineage.get("command"), created=lineage.get("created"),
                steps=lineage.get("steps"), code_version=lineage.get("code_version"),
                method=recycled.get("method") or lineage.get("method"),
                data=[{k: d.get(k) for k in ("split", "path", "sha256", "examples")}
                      for d in lineage.get("data") or []])
    seen = seen | {str(path)}
    parents = [("base" if node["kind"] == "bundle" else "parent", lineage.get("parent"))]
    if recycled:
        parents.append(("recycled from", recycled.get("bundle")))
    for parent_role, ref in parents:
        if ref and ref.get("path"):
            node["parents"].append(lineage_tree(ref["path"], ref.get("fingerprint"), parent_role,
                                                seen))
    return node


def render_tree(node: dict, prefix: str = "", last: bool = True, top: bool = True) -> list[str]:
    """The tree as text lines, one artifact per line and its data and command below it."""
    def short(fp):
        return fp[:12] if fp else "-"

    state = ("missing" if node["kind"] == "missing" else
             "CHANGED since recorded" if node.get("changed") else
             "fingerprint matches" if node.get("recorded_fingerprint") else "")
    what = node["kind"] + (f" ({node['method']})" if node.get("method") else "")
    line = f"{node['role']}: {what} {node['path']}  [{short(node.get('fingerprint'))}]" \
           + (f"  {state}" if state else "")
    lines = [line] if top else [f"{prefix}{'└─ ' if last else '├─ '}{line}"]
    inner = prefix if top else prefix + ("   " if last else "│  ")
    details = []
    if node.get("command"):
        details.append(f"command: {node['command']}  ({node.get('steps')} steps, "
                       f"{node.get('created')})")
    for d in node.get("data", []):
        details.append(f"data: {d['split']} {d['path']}  [{short(d['sha256'])}] "
                       f"{d['examples']} examples")
    if node.get("origin"):
        details.append("origin: no lineage.json (made outside rtune)")
    for d in details:
        lines.append(f"{inner}{'│  ' if node['parents'] else '   '}· {d}")
    for i, parent in enumerate(node["parents"]):
        lines += render_tree(parent, inner, i == len(node["parents"]) - 1, top=False)
    return lines
