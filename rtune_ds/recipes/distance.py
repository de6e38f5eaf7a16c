"""`rtune analyze distance`: how far apart two tuned models (and the control pair) are, as a
protocol, on CPU in rank 0's process (other ranks of a launch return):

1. open the pairs (jobs.pairs: bundles, their bases, one task, one architecture);
2. per pair, global and per-parameter L2 and cosine between the tuned models' parameters (all, or
   the backbone without the task head) -> distance.json in --out.
"""
from __future__ import annotations

from pathlib import Path

import torch

from rtune_ds import dist
from rtune_ds.analysis.distance import parameter_distances
from rtune_ds.io import save_json
from rtune_ds.jobs.pairs import Pair, open_pairs_of


def from_args(args, command: str) -> None:
    """The command from its parsed arguments."""
    run(open_pairs_of(args), args.backbone_only, args.out, command)


def run(pairs: list[Pair], backbone_only: bool, out: str, command: str) -> dict | None:
    if not dist.is_main():
        return None
    result = {"command": command, "backbone_only": backbone_only, "pairs": {}}
    for pair in pairs:
        a, b = (dict(side.tuned_model().named_parameters()) for side in (pair.a, pair.b))
        head = set(pair.a.meta["head"]) | set(pair.b.meta["head"]) if backbone_only else set()
        with torch.no_grad():
            result["pairs"][pair.name] = {"a": pair.a.describe(), "b": pair.b.describe(),
                                          "excluded": sorted(head),
                                          **parameter_distances(a, b, head)}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_json(result, out_dir / "distance.json")
    print(f"rtune: distance -> {out_dir / 'distance.json'}")
    return result
