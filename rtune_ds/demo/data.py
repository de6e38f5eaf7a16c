"""The demo's data: the prepared corpora and tasks (--data DIR, else prepared into OUT/data), and
each task's splits sampled to the budget's sizes in OUT/tasks."""
from __future__ import annotations

import random
import sys
from pathlib import Path

from rtune_ds.data.prepare import default_cache_dir, prepare_corpora
from rtune_ds.data.tasks import build_tasks
from rtune_ds.demo.plan import TASKS
from rtune_ds.errors import ConfigError
from rtune_ds.io import save_text

CORPORA = ("general.jsonl", "computing.jsonl")
SPLITS = ("train", "dev", "test")
REQUIRED = CORPORA + tuple(f"{t}_{s}.jsonl" for t in TASKS for s in SPLITS)


def data_dir(out: Path, data: str | None) -> Path:
    """--data DIR as it is, else OUT/data, prepared there (as `rtune data prepare` does) if it is
    missing."""
    if data is not None:
        d = Path(data)
        missing = [f for f in REQUIRED if not (d / f).is_file()]
        if missing:
            raise ConfigError(f"--data {data}: not a prepared data directory (missing "
                              f"{', '.join(missing)}); make one with `rtune data prepare --out "
                              f"{data}`")
        return d.resolve()
    d = out / "data"
    if all((d / f).is_file() for f in REQUIRED):
        print(f"rtune demo: reusing the prepared data in {d}", file=sys.stderr)
        return d
    print(f"rtune demo: preparing the data in {d} (as `rtune data prepare --out {d}`)",
          file=sys.stderr, flush=True)
    prepare_corpora(d, default_cache_dir())
    build_tasks(d, d)
    return d


def sample_tasks(data: Path, tasks: Path, sizes: dict) -> dict:
    """Each split of each task cut to at most sizes[split] records, a seeded sample kept in file
    order, written to `tasks` (rewritten only when it changes); returns the record counts."""
    tasks.mkdir(parents=True, exist_ok=True)
    counts = {}
    for task in TASKS:
        for split in SPLITS:
            lines = (data / f"{task}_{split}.jsonl").read_text().splitlines()
            keep = sorted(random.Random(f"{task}/{split}").sample(
                range(len(lines)), min(sizes[split], len(lines))))
            text = "".join(lines[i] + "\n" for i in keep)
            path = tasks / f"{task}_{split}.jsonl"
            if not path.is_file() or path.read_text() != text:
                save_text(text, path)
            counts[f"{task}_{split}"] = len(keep)
    return counts
