"""rtune data prepare: real corpora from Debian's wordnet-base and dict-foldoc, and the two
classification tasks built from them (WordNet supersense, FOLDOC category)."""
from __future__ import annotations

import json
from pathlib import Path

from rtune_ds.data.prepare import default_cache_dir, prepare_corpora
from rtune_ds.data.tasks import build_tasks


def run(args) -> None:
    summary = prepare_corpora(
        Path(args.out), Path(args.cache_dir) if args.cache_dir else default_cache_dir(),
        wordnet_src=Path(args.wordnet_dir) if args.wordnet_dir else None,
        foldoc_src=Path(args.foldoc_dir) if args.foldoc_dir else None)
    tasks = build_tasks(Path(args.out), Path(args.out))
    print(json.dumps({"corpora": {k: v for k, v in summary.items() if k != "rules"},
                      "tasks": {name: {"classes": len(t["classes"]), "records": t["records"]}
                                for name, t in tasks.items() if name != "rules"}}, indent=2))
