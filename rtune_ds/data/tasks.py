"""The real fine-tuning tasks, built from the corpora `rtune data prepare` writes:

- `supersense` (general domain): the WordNet supersense of a synset gloss. From
  `general.jsonl` (text, lexname): label = `lexname` (the lexicographer file, e.g. noun.artifact).
- `foldoc_category` (computing domain): the FOLDOC category of a definition. From
  `computing.jsonl` (text, category): label = the first name of `category` (before any comma),
  lower-cased; definitions without a category are left out.

Rules, the same for both (`RULES` below; written to tasks.json):
1. text: whitespace collapsed and stripped; empty texts dropped;
2. dedup: one record per distinct text; a text seen with two different labels is dropped;
3. classes: the `max_classes` most frequent labels with at least `min_count` records (ties broken
   by name); records of other labels are dropped;
4. split: by sha256 of the text: h = the first 8 hex digits / 16^8; supersense: h < 0.8 ->
   train, < 0.9 -> dev, else test; foldoc_category (4.5k records): h < 0.55 -> train, < 0.75 ->
   dev, else test, so that its test split holds over 1,000 records (the study's paired tests need
   them). Stable across runs, machines and corpus order; a text is never in two splits;
5. dev and test are cut to `max_eval` records (those with the smallest hash), to keep evaluation
   cheap; train is kept whole. Records keep corpus order within a split.

Output: `<out>/<task>_{train,dev,test}.jsonl` with `text`,`label`, and `<out>/tasks.json`.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

from rtune_ds.io import save_json, save_jsonl

TASKS = {
    # name: (corpus file, label field, max_classes, min_count, the splits' upper bounds of h)
    "supersense": ("general.jsonl", "lexname", 16, 200, (0.8, 0.9)),
    "foldoc_category": ("computing.jsonl", "category", 12, 100, (0.55, 0.75)),
}
SPLIT_NAMES = ("train", "dev", "test")
MAX_EVAL = 2000
RULES = __doc__.split("Rules, the same for both", 1)[1].split("Output:", 1)[0].strip()


def text_hash(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 16**8


def split_of(text: str, bounds: tuple[float, float] = (0.8, 0.9)) -> str:
    """train below bounds[0], dev below bounds[1], else test."""
    h = text_hash(text)
    return "train" if h < bounds[0] else "dev" if h < bounds[1] else "test"


def _label(value, field: str) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    if field == "category":
        value = value.split(",")[0].strip().lower()
    return value or None


def build_task(corpus: Path, field: str, max_classes: int, min_count: int,
               bounds: tuple[float, float] = (0.8, 0.9),
               max_eval: int = MAX_EVAL) -> tuple[dict[str, list[dict]], dict]:
    """(records per split, description) of one task from one corpus file."""
    labels_of: dict[str, set[str]] = {}
    order: list[str] = []
    with open(corpus) as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            text = re.sub(r"\s+", " ", str(row.get("text") or "")).strip()
            label = _label(row.get(field), field)
            if not text or label is None:
                continue
            if text not in labels_of:
                labels_of[text] = set()
                order.append(text)
            labels_of[text].add(label)
    unique = [(t, next(iter(labels_of[t]))) for t in order if len(labels_of[t]) == 1]
    counts = Counter(label for _, label in unique)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    classes = sorted(name for name, n in ranked[:max_classes] if n >= min_count)
    keep = set(classes)
    splits: dict[str, list[dict]] = {name: [] for name in SPLIT_NAMES}
    for text, label in unique:
        if label in keep:
            splits[split_of(text, bounds)].append({"text": text, "label": label})
    for name in ("dev", "test"):
        if len(splits[name]) > max_eval:
            chosen = {r["text"] for r in sorted(splits[name], key=lambda r: text_hash(r["text"]))[:max_eval]}
            splits[name] = [r for r in splits[name] if r["text"] in chosen]
    describe = {
        "source": corpus.name, "label_field": field, "classes": classes,
        "records": {s: len(rows) for s, rows in splits.items()},
        "dropped_conflicting_texts": sum(len(v) > 1 for v in labels_of.values()),
        "label_counts": {s: dict(sorted(Counter(r["label"] for r in rows).items()))
                         for s, rows in splits.items()},
        "majority_baseline": {s: (max(Counter(r["label"] for r in rows).values()) / len(rows)
                                  if rows else None) for s, rows in splits.items()},
        "max_classes": max_classes, "min_count": min_count, "split_bounds": list(bounds),
        "max_eval": max_eval,
    }
    return splits, describe


def build_tasks(corpora_dir: Path, out_dir: Path, limits: dict | None = None) -> dict:
    """Write every task whose corpus is in `corpora_dir`; return {task: description}. `limits`
    ({max_classes, min_count}) replaces every task's own (a toy-size study on small corpora)."""
    corpora_dir, out_dir = Path(corpora_dir), Path(out_dir)
    described = {}
    for name, (file, field, max_classes, min_count, bounds) in TASKS.items():
        corpus = corpora_dir / file
        if not corpus.is_file():
            continue
        if limits:
            max_classes, min_count = limits["max_classes"], limits["min_count"]
        splits, describe = build_task(corpus, field, max_classes, min_count, bounds)
        for split, rows in splits.items():
            save_jsonl(rows, out_dir / f"{name}_{split}.jsonl")
        described[name] = describe
    save_json({"rules": RULES, "tasks": described}, out_dir / "tasks.json")
    return described
