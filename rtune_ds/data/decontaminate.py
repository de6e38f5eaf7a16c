"""Keeping evaluation texts out of pretraining: every continual-pretraining corpus of the study
drops each record whose text, normalised, is the text of a dev or test record of any task.

Normalised text: Unicode NFKC, lower-cased, whitespace runs collapsed to one space, stripped; two
texts match when the sha256 of their normalised forms are equal."""
from __future__ import annotations

import hashlib
import json
import unicodedata
from pathlib import Path

from rtune_ds.io import save_text

HELD_OUT_SPLITS = ("dev", "test")


def normalised(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def text_key(text: str) -> str:
    return hashlib.sha256(normalised(text).encode()).hexdigest()


def held_out_keys(task_files: list[Path]) -> set[str]:
    """The keys of every text in the given task files (jsonl with a `text` field)."""
    return {text_key(json.loads(line)["text"]) for path in task_files
            for line in Path(path).read_text().splitlines() if line.strip()}


def decontaminate(corpus: Path, out: Path, held_out: set[str]) -> dict:
    """`corpus` (jsonl with a `text` field) without the records whose text is held out, written to
    `out` whole or not at all; returns {records, removed}."""
    kept, removed = [], 0
    lines = [line for line in Path(corpus).read_text().splitlines() if line.strip()]
    for line in lines:
        if text_key(json.loads(line).get("text") or "") in held_out:
            removed += 1
        else:
            kept.append(line + "\n")
    save_text("".join(kept), Path(out))
    return {"records": len(lines), "removed": removed}
