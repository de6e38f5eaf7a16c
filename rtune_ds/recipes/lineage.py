"""`rtune lineage PATH`: the tree of what made an artifact (a base, a bundle, or a run dir's final/),
back to its origin: for each artifact its command, data (with content hashes) and steps, then its
parents (the base it was trained from; for a recycled bundle also the bundle it was recycled
from), each with the fingerprint its child recorded checked against its files as they are now."""
from __future__ import annotations

import json
from pathlib import Path

from rtune_ds.artifacts.lineage import lineage_tree, render_tree
from rtune_ds.errors import ConfigError


def run(path: str, as_json: bool) -> dict:
    if not Path(path).is_dir():
        raise ConfigError(f"rtune lineage {path}: not a directory")
    tree = lineage_tree(path)
    print(json.dumps(tree, indent=2) if as_json else "\n".join(render_tree(tree)))
    return tree
