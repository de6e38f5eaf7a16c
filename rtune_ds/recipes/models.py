"""rtune models fetch NAME | import-gguf FILE --out DIR: a released model as a local HF directory
rtune trains, then a JSON line saying where it is and what it holds."""
from __future__ import annotations

import json
import time
from pathlib import Path


def fetch(name: str, cache_dir: str | None) -> None:
    from rtune_ds.jobs.released import check_manifest, fetch_released

    start = time.time()
    root = fetch_released(name, Path(cache_dir) if cache_dir else None)
    print(json.dumps({"name": name, "path": str(root), "seconds": round(time.time() - start, 1),
                      "sha256": check_manifest(root)}, indent=2))


def import_gguf(file: str, out: str) -> None:
    from rtune_ds.jobs.gguf_import import import_gguf

    root = import_gguf(file, out)
    lineage = json.loads((root / "lineage.json").read_text())
    print(json.dumps({"path": str(root), "gguf": lineage["gguf"], "pad": lineage["pad"]},
                     indent=2))
