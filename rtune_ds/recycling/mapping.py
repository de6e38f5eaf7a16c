"""Map the tensors of a bundle tuned on one base version onto another version's task model.

The plan is made from names and shapes alone (safetensors headers against a model built on the
meta device), so every refusal happens before any compute and before anything is written:

- a bundle name is first rewritten by the name map (regex -> replacement, in order), for modules
  renamed between versions;
- same shape: a delta is added to the new base's tensor; adapter and head tensors are set;
- a delta whose first dimension grew (a grown vocabulary): the rows that exist in both get it,
  the new rows get none;
- target tensors the bundle has nothing for (an added layer, new adapter slots) keep the new
  model's values and are reported;
- bundle tensors with no place in the target (a removed layer, a changed shape, an unknown name)
  are a partial mapping: refused by default (strict), dropped and reported with allow_partial.

Applying the plan works on ZeRO-3-sharded models: each parameter is gathered on its own, rank 0
modifies it, and it is re-partitioned on exit, so no rank ever holds more than one full tensor.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import deepspeed
import torch

from rtune_ds import dist
from rtune_ds.errors import ConfigError

ADD, ADD_ROWS, SET = "add", "add_rows", "set"


@dataclass
class Policy:
    name_map: list[tuple[str, str]] = field(default_factory=list)  # (regex, replacement)
    allow_partial: bool = False


@dataclass
class Move:
    source: str
    target: str
    how: str  # add | add_rows | set


@dataclass
class Mapping:
    moves: list[Move]
    kept: list[str]  # target tensors the bundle has nothing for: the new model's values stay
    dropped: dict[str, str]  # bundle tensor -> why it has no place in the target
    renamed: dict[str, str]
    grown: dict[str, list[int]]  # target -> [rows in the bundle, rows in the target]
    tied: dict[str, str]  # bundle tensor -> the tensor it is tied to in the target (applied once)

    def report(self) -> dict:
        return {"mapped": len(self.moves), "renamed": self.renamed, "rows_grown": self.grown,
                "kept_new_values": self.kept, "dropped": self.dropped, "tied": self.tied}


def parse_name_map(items: list[str], where: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{where}: --name-map '{item}' is not of the form REGEX=REPLACEMENT")
        pattern, replacement = item.split("=", 1)
        try:
            re.compile(pattern)
        except re.error as err:
            raise ConfigError(f"{where}: --name-map '{item}': bad regex: {err}") from None
        out.append((pattern, replacement))
    return out


def plan_mapping(source: dict[str, tuple[tuple[int, ...], str]],
                 target: dict[str, tuple[int, ...]], policy: Policy, where: str,
                 aliases: dict[str, str] | None = None) -> Mapping:
    """`source`: bundle name -> (shape, 'add' for deltas | 'set' for absolute values);
    `target`: the task model's tensor names -> shapes; `aliases`: tied name -> canonical name."""
    aliases = aliases or {}
    moves, dropped, renamed, grown, tied, claimed = [], {}, {}, {}, {}, {}
    for name in sorted(source):
        shape, how = source[name]
        new = name
        for pattern, replacement in policy.name_map:
            new = re.sub(pattern, replacement, new)
        if new != name:
            renamed[name] = new
        canonical = aliases.get(new, new)
        if canonical not in target:
            dropped[name] = f"no tensor '{new}' in the target model"
            continue
        want = tuple(target[canonical])
        if canonical in claimed:
            if tuple(shape) == tuple(source[claimed[canonical]][0]):
                tied[name] = canonical
            else:
                dropped[name] = f"'{canonical}' is already set from '{claimed[canonical]}'"
            continue
        if tuple(shape) == want:
            moves.append(Move(name, canonical, how))
        elif (how == ADD and len(shape) == len(want) and shape[1:] == want[1:]
              and shape[0] < want[0]):
            moves.append(Move(name, canonical, ADD_ROWS))
            grown[canonical] = [shape[0], want[0]]
        else:
            dropped[name] = f"shape {list(shape)} does not fit '{canonical}' {list(want)}"
            continue
        claimed[canonical] = name
    kept = sorted(set(target) - set(claimed))
    mapping = Mapping(moves, kept, dropped, renamed, grown, tied)
    if dropped and not policy.allow_partial:
        lines = "; ".join(f"{k}: {v}" for k, v in list(dropped.items())[:5])
        more = f" (and {len(dropped) - 5} more)" if len(dropped) > 5 else ""
        raise ConfigError(f"{where}: {len(dropped)} bundle tensor(s) cannot be mapped onto the new "
                          f"base: {lines}{more}. Map renamed modules with --name-map REGEX=NEW, "
                          "or pass --allow-partial to drop them")
    return mapping


def peft_saved_name(name: str, adapter: str = "default") -> str:
    """The name peft saves a trainable parameter of a PeftModel under (adapter name removed;
    a modules_to_save copy under the wrapped module's own name)."""
    return re.sub(rf"(\.modules_to_save)?\.{re.escape(adapter)}(?=\.|$)", "", name)


def mapping_targets(model: torch.nn.Module, peft: bool
                    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(name -> tensor, alias -> canonical name) that a bundle can map onto: for a PeftModel its
    trainable parameters under the names peft saves them with; otherwise every parameter and
    persistent buffer."""
    tensors, aliases, seen = {}, {}, {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if peft:
            if not param.requires_grad:
                continue
            name = peft_saved_name(name)
        if id(param) in seen:
            aliases[name] = seen[id(param)]
            continue
        seen[id(param)] = name
        tensors[name] = param
    if not peft:
        for module_name, module in model.named_modules():
            for name, buf in module._buffers.items():
                if buf is not None and name not in module._non_persistent_buffers_set:
                    tensors[f"{module_name}.{name}" if module_name else name] = buf
    return tensors, aliases


def full_shapes(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """ZeRO-3 parameters report their full shape (ds_shape)."""
    return {k: tuple(getattr(t, "ds_shape", t.shape)) for k, t in tensors.items()}


def apply_mapping(tensors: dict[str, torch.Tensor], mapping: Mapping,
                  read: Callable[[str], torch.Tensor]) -> None:
    """Write the mapped values into the model's `tensors` (from mapping_targets, before
    deepspeed.initialize). `read(name)` returns a bundle tensor; for a ZeRO-3 parameter only rank 0
    reads, otherwise every rank reads the same file and writes its own copy."""
    for move in mapping.moves:
        param = tensors[move.target]
        partitioned = hasattr(param, "ds_id")
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
            if partitioned and not dist.is_main():
                continue
            value = read(move.source).to(param.dtype)
            if move.how == ADD:
                updated = param.data + value
            elif move.how == ADD_ROWS:
                updated = torch.cat([param.data[:value.shape[0]] + value,
                                     param.data[value.shape[0]:]])
            else:
                updated = value
            if partitioned:  # the gathered buffer is what ZeRO-3 re-partitions on exit
                param.data.copy_(updated)
            else:  # a new tensor: writing into a lazily mmapped checkpoint would copy it page by page
                param.data = updated.contiguous()

