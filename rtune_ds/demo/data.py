"""The demo's data: the prepared corpora (--data DIR, else prepared into OUT/data); the tasks built
from them into OUT/tasks/all (`rtune data prepare`'s rules); each task's splits sampled to the
budget in OUT/tasks; and the pretraining corpora in OUT/corpora, which hold no text of any task's
dev or test split (data.decontaminate)."""
from __future__ import annotations

import random
import sys
from pathlib import Path

from rtune_ds.data.decontaminate import HELD_OUT_SPLITS, decontaminate, held_out_keys
from rtune_ds.data.prepare import default_cache_dir, prepare_corpora
from rtune_ds.data.tasks import build_tasks
from rtune_ds.demo.plan import TASKS
from rtune_ds.errors import ConfigError
from rtune_ds.io import save_text

CORPORA = ("general.jsonl", "computing.jsonl")
SPLITS = ("train", "dev", "test")
# the dev split is cut in two halves: `dev` selects the bundles tuned on v0 (full data), and the
# few-shot dev pools are drawn from `dev_pool` only, so they never hold a record that chose a bundle
SAMPLED = ("train", "dev", "dev_pool", "test")


def data_dir(out: Path, data: str | None) -> Path:
    """--data DIR as it is, else OUT/data, prepared there (as `rtune data prepare` does) if it is
    missing."""
    if data is not None:
        d = Path(data)
        missing = [f for f in CORPORA if not (d / f).is_file()]
        if missing:
            raise ConfigError(f"--data {data}: not a prepared data directory (missing "
                              f"{', '.join(missing)}); make one with `rtune data prepare --out "
                              f"{data}`")
        return d.resolve()
    d = out / "data"
    if all((d / f).is_file() for f in CORPORA):
        print(f"rtune demo: reusing the prepared data in {d}", file=sys.stderr)
        return d
    print(f"rtune demo: preparing the data in {d} (as `rtune data prepare --out {d}`)",
          file=sys.stderr, flush=True)
    prepare_corpora(d, default_cache_dir())
    return d


def study_data(corpora: Path, out: Path, sizes: dict, limits: dict | None = None) -> dict:
    """The tasks (OUT/tasks/all, with the budget's class `limits` if any, then sampled into
    OUT/tasks) and the decontaminated corpora (OUT/corpora); returns the record counts and what
    decontamination removed."""
    every = out / "tasks" / "all"
    build_tasks(corpora, every, limits)
    counts = sample_tasks(every, out / "tasks", sizes)
    held_out = held_out_keys([every / f"{t}_{s}.jsonl" for t in TASKS for s in HELD_OUT_SPLITS])
    removed = {name: decontaminate(corpora / name, out / "corpora" / name, held_out)
               for name in CORPORA}
    return {"task_records": counts,
            "decontamination": {"held_out_texts": len(held_out), "corpora": removed}}


def sample_tasks(every: Path, tasks: Path, sizes: dict) -> dict:
    """Each task's splits cut to the budget's sizes (a seeded sample kept in file order), written
    to `tasks` (rewritten only when it changes); returns the record counts. The dev split is
    shuffled (seeded) and halved first: `dev` is sampled from one half, `dev_pool` is the other."""
    tasks.mkdir(parents=True, exist_ok=True)
    counts = {}
    for task in TASKS:
        lines = {s: (every / f"{task}_{s}.jsonl").read_text().splitlines() for s in SPLITS}
        dev = lines.pop("dev")
        order = random.Random(f"{task}/dev halves").sample(range(len(dev)), len(dev))
        half = len(dev) // 2
        lines["dev"] = [dev[i] for i in sorted(order[:half])]
        lines["dev_pool"] = [dev[i] for i in sorted(order[half:])]
        for split in SAMPLED:
            rows = lines[split]
            cap = sizes.get(split, len(rows))
            keep = sorted(random.Random(f"{task}/{split}").sample(range(len(rows)),
                                                                  min(cap, len(rows))))
            text = "".join(rows[i] + "\n" for i in keep)
            path = tasks / f"{task}_{split}.jsonl"
            if not path.is_file() or path.read_text() != text:
                save_text(text, path)
            counts[f"{task}_{split}"] = len(keep)
    return counts
