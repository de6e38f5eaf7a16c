"""The command-line names of what a pairwise analysis compares: tuned models A and B (say, tuned on
v0 and on v1), each a bundle and the base it was tuned on, and an optional control pair. The CLI
declares these flags, the analysis recipe names them in its messages, the demo's plan writes them.

Each entry: the argparse dest -> its flags, the first the one messages name, the last the one a
command line for the deepspeed launcher spells (its own parser takes --b for a prefix of its
--bind_* options)."""
from __future__ import annotations

PAIR_FLAGS = {"a": ("--a", "--bundle-a"), "base_a": ("--base-a",),
              "b": ("--b", "--bundle-b"), "base_b": ("--base-b",)}
CONTROL_FLAGS = {"control_a": ("--control-a",), "control_base_a": ("--control-base-a",),
                 "control_b": ("--control-b",), "control_base_b": ("--control-base-b",)}
FLAGS = {**PAIR_FLAGS, **CONTROL_FLAGS}


def flag(dest: str) -> str:
    """The flag messages name for `dest`."""
    return FLAGS[dest][0]


def pair_args(values: dict[str, str]) -> list[str]:
    """The command-line arguments giving `values` ({dest: path}) under the launcher."""
    return [arg for dest, value in values.items() for arg in (FLAGS[dest][-1], value)]
