"""The pretraining data of a RunConfig: packed blocks of every source, the held-out eval sets, and
the blend weights of each phase (before and after the switch)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rtune_ds.config.schema import DataConfig, Source
from rtune_ds.data.corpus import content_hash, packed_blocks, packing_rule, split_blocks
from rtune_ds.errors import ConfigError


@dataclass
class LMData:
    names: list[str]
    paths: list[str]
    train_blocks: list[torch.Tensor]
    eval_sets: dict[str, torch.Tensor]
    phases: list[list[float]]  # phases[p][i]: weight of source i in phase p

    def describe(self) -> list[dict]:
        """For lineage: every source with its content hash and weights."""
        return [{"name": n, "path": str(Path(p).resolve()), "sha256": content_hash(p),
                 "weights": [ph[i] for ph in self.phases], "train_blocks": len(b)}
                for i, (n, p, b) in enumerate(zip(self.names, self.paths, self.train_blocks))]


def _unique_names(paths: list[str]) -> list[str]:
    names = []
    for path in paths:
        name, k = Path(path).stem, 2
        while name in names:
            name, k = f"{Path(path).stem}_{k}", k + 1
        names.append(name)
    return names


def build_lm_data(data: DataConfig, tokenizer, tokenizer_hash: str, cache_root: Path,
                  eval_max_blocks: int, where: str) -> LMData:
    packing_rule(tokenizer, where)  # before any source is read or packed
    phase_sources: list[list[Source]] = [data.train] + ([data.switch.train] if data.switch else [])
    paths: list[str] = []
    for sources in phase_sources:
        for src in sources:
            if src.path not in paths:
                paths.append(src.path)
    phases = [[0.0] * len(paths) for _ in phase_sources]
    for p, sources in enumerate(phase_sources):
        for src in sources:
            phases[p][paths.index(src.path)] += src.weight
    names = _unique_names(paths)

    def blocks_of(path: str) -> torch.Tensor:
        blocks = packed_blocks(path, tokenizer, tokenizer_hash, data.seq_len, data.text_field,
                               cache_root)
        if len(blocks) < 2:
            raise ConfigError(f"{where}: data source {path} gives {len(blocks)} blocks of "
                              f"data.seq_len={data.seq_len} tokens: empty or too small a dataset")
        return blocks

    train_blocks, eval_sets = [], {}
    for name, path in zip(names, paths):
        blocks = blocks_of(path)
        if data.eval:
            train_blocks.append(blocks)
        else:
            train, held_out = split_blocks(blocks, data.eval_fraction)
            train_blocks.append(train)
            eval_sets[name] = held_out[:eval_max_blocks]
    for name, src in zip(_unique_names([s.path for s in data.eval]), data.eval):
        eval_sets[name] = blocks_of(src.path)[:eval_max_blocks]
    return LMData(names, paths, train_blocks, eval_sets, phases)
