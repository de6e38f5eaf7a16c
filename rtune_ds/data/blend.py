"""A weighted blend of packed corpora, with a scheduled switch to a second blend.

Every rank computes the same global batch for a step and takes its own slice, so sharding is
deterministic and the batch does not depend on how many ranks share it. The only state is one
cursor per corpus (it walks a seeded permutation, epoch by epoch); it goes into checkpoints.
"""
from __future__ import annotations

from typing import Callable

import torch


class Blend:
    def __init__(self, names: list[str], blocks: list[torch.Tensor], phases: list[list[float]],
                 switch_step: int | None, seed: int,
                 collate: Callable[[torch.Tensor, list[int]], dict[str, torch.Tensor]]):
        """`phases[p][i]` is corpus i's weight in phase p (0 = absent); phase 1 starts at switch_step."""
        self.names, self.blocks, self.phases = names, blocks, phases
        self.switch_step, self.seed, self.make_inputs = switch_step, seed, collate
        self.cursors = [0] * len(blocks)
        self._perms: dict[int, tuple[int, torch.Tensor]] = {}  # corpus -> (epoch, permutation)

    def phase(self, step: int) -> int:
        return 1 if self.switch_step is not None and step >= self.switch_step else 0

    def weights(self, step: int) -> dict[str, float]:
        w = self.phases[self.phase(step)]
        total = sum(w)
        return {name: wi / total for name, wi in zip(self.names, w)}

    def scalars(self, step: int) -> dict[str, float]:
        weights = {f"data/weight/{name}": w for name, w in self.weights(step).items()}
        return {"data/phase": float(self.phase(step)), **weights}

    def _permutation(self, corpus: int, epoch: int) -> torch.Tensor:
        cached = self._perms.get(corpus)
        if cached is None or cached[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + corpus * 10_007 + epoch)
            cached = (epoch, torch.randperm(len(self.blocks[corpus]), generator=g))
            self._perms[corpus] = cached
        return cached[1]

    def global_batch(self, step: int, size: int) -> torch.Tensor:
        """[size, seq_len] blocks for optimizer step `step`; advances the cursors."""
        weights = torch.tensor(self.phases[self.phase(step)], dtype=torch.float64)
        g = torch.Generator().manual_seed(self.seed * 7_919 + step)
        choice = torch.multinomial(weights, size, replacement=True, generator=g).tolist()
        rows = []
        for corpus in choice:
            n = len(self.blocks[corpus])
            epoch, offset = divmod(self.cursors[corpus], n)
            rows.append(self.blocks[corpus][self._permutation(corpus, epoch)[offset]])
            self.cursors[corpus] += 1
        return torch.stack(rows)

    def state_dict(self) -> dict:
        return {"cursors": list(self.cursors)}

    def load_state_dict(self, state: dict) -> None:
        self.cursors = list(state["cursors"])
