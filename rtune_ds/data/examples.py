"""Fine-tuning data: a task's train/dev/test files (jsonl/csv/parquet through `datasets`), checked,
few-shot sampled, tokenised (right-padded to the longest of the split, at most task.max_len), and a
seeded, length-grouped batch source over them.

A batch is cut to the longest of its own rows (dynamic padding): with right padding, attention
masks and IGNORE labels on pads, a row's loss does not depend on how wide its batch is. The source
orders examples by the seed, the epoch and the global batch size only, so the global batch of a
step is the same at any world size (the engine slices it into the ranks' micro-batches).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from rtune_ds.config.schema import TaskConfig
from rtune_ds.data.corpus import LOADERS, content_hash
from rtune_ds.errors import ConfigError
from rtune_ds.train.objectives import IGNORE

TABLE_LOADERS = {**{k: v for k, v in LOADERS.items() if v != "text"}, ".csv": "csv"}
FEW_SHOT_SALT = {"train": 0, "dev": 1}


def load_table(path: str, key: str, where: str) -> datasets.Dataset:
    """All rows of a jsonl/json/csv/parquet file."""
    loader = TABLE_LOADERS.get(Path(path).suffix)
    if loader is None:
        raise ConfigError(f"{where}: key '{key}': unsupported file type '{Path(path).suffix}' "
                          f"(known: {', '.join(TABLE_LOADERS)})")
    try:
        return datasets.load_dataset(loader, data_files=str(path), split="train")
    except Exception as err:  # datasets raises many types for unreadable input
        raise ConfigError(f"{where}: key '{key}': cannot read {path}: {err}") from None


@dataclass
class Examples:
    """Tokenised, right-padded examples of one split. classification: labels [N] (class ids); lm:
    labels [N, L] (completion tokens, IGNORE elsewhere) and prompt_len [N]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prompt_len: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.lengths = self.attention_mask.sum(1).long()  # real tokens per example

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, idx, pad_to_max: bool = False) -> dict[str, torch.Tensor]:
        """The rows `idx`, padded to the longest of them (to the split's width with pad_to_max)."""
        width = self.input_ids.shape[1] if pad_to_max else int(self.lengths[idx].max())
        labels = self.labels[idx]
        return {"input_ids": self.input_ids[idx, :width],
                "attention_mask": self.attention_mask[idx, :width],
                "labels": labels[:, :width] if labels.dim() == 2 else labels}

    def by_length(self) -> torch.Tensor:
        """Example indices, longest first (lm: by prompt, which sets the width of generation)."""
        order = torch.argsort(self.lengths, descending=True, stable=True)
        if self.prompt_len is not None:
            order = order[torch.argsort(self.prompt_len[order], descending=True, stable=True)]
        return order


@dataclass
class TaskData:
    type: str
    label_names: list[str] | None
    splits: dict[str, Examples]  # train, dev (none in a label-free run), test (optional)
    files: dict[str, str]
    sizes: dict[str, int]

    def describe(self) -> list[dict]:
        """For lineage: every split file with its content hash and size after sampling."""
        return [{"split": s, "path": str(Path(p).resolve()), "sha256": content_hash(p),
                 "examples": self.sizes[s]} for s, p in self.files.items()]

    def majority_baseline(self, split: str = "dev") -> float | None:
        if self.type != "classification":
            return None
        labels = self.splits[split].labels
        return torch.bincount(labels).max().item() / len(labels)


def few_shot_indices(labels: list[int], k: int, seed: int) -> list[int]:
    """K indices per class (all of a class with fewer), from a seeded permutation; in file order."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=g).tolist()
    taken: dict[int, int] = {}
    keep = []
    for i in order:
        if taken.get(labels[i], 0) < k:
            taken[labels[i]] = taken.get(labels[i], 0) + 1
            keep.append(i)
    return sorted(keep)


def _encode(tokenizer, text: str) -> list[int]:
    """BOS + tokens + EOS (whatever of them the tokenizer has): the first token is what an
    encoder's head reads, the last what a decoder's head reads."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if tokenizer.bos_token_id is not None and (not ids or ids[0] != tokenizer.bos_token_id):
        ids = [tokenizer.bos_token_id] + ids
    if tokenizer.eos_token_id is not None and ids[-1] != tokenizer.eos_token_id:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def line_of(path: str, record: int) -> str:
    """Where record `record` (0-based) of a table file stands, as a reader finds it: the line of a
    jsonl/csv file (blank jsonl lines are not records; csv has a header), else its index."""
    suffix = Path(path).suffix
    if suffix == ".jsonl":
        with open(path) as fh:
            lines = (n for n, line in enumerate(fh, 1) if line.strip())
            return f"line {next(n for i, n in enumerate(lines) if i == record)}"
    if suffix == ".csv":
        return f"line {record + 2}"
    return f"record {record + 1}"


def column(ds: datasets.Dataset, name: str, field_key: str, path: str, where: str) -> list:
    """The values of column `name`; a record without one (null, missing or blank) is an error
    naming the file and line, never a value of its own (a null label is not a class 'None')."""
    if name not in ds.column_names:
        raise ConfigError(f"{path}: no '{name}' column (columns: {ds.column_names}); "
                          f"set {field_key} in {where}")
    values = ds[name]
    for i, value in enumerate(values):
        if value is None or not str(value).strip():
            raise ConfigError(f"{path}: {line_of(path, i)}: '{name}' is "
                              f"{'null or missing' if value is None else 'empty'}; every record "
                              f"needs one ({field_key} in {where})")
    return values


def encode_classification(texts: list[str], label_ids: list[int], tokenizer,
                          max_len: int) -> Examples:
    rows = []
    for text in texts:
        ids = _encode(tokenizer, text)
        if len(ids) > max_len:  # keep the EOS a decoder's head reads
            ids = ids[:max_len - 1] + ids[-1:]
        rows.append(ids)
    ids, mask = _pad(rows, tokenizer.pad_token_id)
    return Examples(ids, mask, torch.tensor(label_ids, dtype=torch.long))


def encode_sft(prompts: list[str], completions: list[str], tokenizer, max_len: int) -> Examples:
    """prompt tokens (BOS first) + completion tokens + EOS; the loss sees the completion and EOS.
    A long prompt is cut from the left, so at least the completion's start stays."""
    rows, targets, prompt_lens = [], [], []
    for prompt, completion in zip(prompts, completions):
        p = _encode(tokenizer, prompt)[:-1]  # no EOS between prompt and completion
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        c = c[:max_len - 1]
        p = p[-(max_len - len(c)):]
        rows.append(p + c)
        targets.append([IGNORE] * len(p) + c)
        prompt_lens.append(len(p))
    ids, mask = _pad(rows, tokenizer.pad_token_id)
    labels = torch.full_like(ids, IGNORE)
    for i, t in enumerate(targets):
        labels[i, :len(t)] = torch.tensor(t, dtype=torch.long)
    return Examples(ids, mask, labels, torch.tensor(prompt_lens, dtype=torch.long))


def unlabeled_texts(path: str, text_field: str, key: str, field_key: str,
                    where: str) -> list[str]:
    """The texts of `path`: column `text_field` of a table (set by `field_key`), or a .txt file's
    non-blank lines; no other column is read. `key` names the file's setting in `where`."""
    if Path(path).suffix in (".txt", ".text"):
        table, field = datasets.load_dataset("text", data_files=str(path), split="train"), "text"
        table = table.filter(lambda row: bool(row["text"].strip()))
    else:
        table, field = load_table(path, key, where), text_field
    texts = [str(x) for x in column(table, field, field_key, path, where)]
    if not texts:
        raise ConfigError(f"{path}: no inputs ({key} in {where})")
    return texts


def encode_unlabeled(path: str, task: TaskConfig, tokenizer, where: str) -> Examples:
    """Label-free training inputs: the texts of `path` (task.text_field; a .txt file's lines),
    their labels never read. classification: IGNORE as every label (a loss that read one would
    be NaN, not quietly wrong); lm: the whole text is the completion, every token a target."""
    texts = unlabeled_texts(path, task.text_field, "distill.unlabeled", "task.text_field", where)
    if task.type == "classification":
        return encode_classification(texts, [IGNORE] * len(texts), tokenizer, task.max_len)
    return encode_sft([""] * len(texts), texts, tokenizer, task.max_len)


def load_task(task: TaskConfig, tokenizer, seed: int, where: str,
              unlabeled: str | None = None) -> TaskData:
    """Read, check and tokenise every split. Labels outside the label set, missing columns and
    empty splits are errors that name the file and the key. `unlabeled`: the train split is that
    file's texts with no labels (label-free recycling), and task.train is not read."""
    files = {s: getattr(task, s) for s in ("train", "dev", "test") if getattr(task, s)}
    if unlabeled:
        files.pop("train", None)
    tables = {s: load_table(p, f"task.{s}", where) for s, p in files.items()}
    if tokenizer.pad_token_id is None:
        raise ConfigError(f"{where}: key 'model.path': the base's tokenizer has no pad token "
                          "and no EOS token to pad with")
    splits, sizes, label_names = {}, {}, None
    if task.type == "classification":
        columns = {s: (column(t, task.text_field, "task.text_field", files[s], where),
                       [str(v) for v in column(t, task.label_field, "task.label_field",
                                                files[s], where)])
                   for s, t in tables.items()}
        label_names = list(task.labels) if task.labels else sorted(set(columns["train"][1]))
        if len(label_names) < 2:
            raise ConfigError(f"{files.get('train', where)}: only one label ({label_names}); a "
                              "classifier needs at least two")
        index = {name: i for i, name in enumerate(label_names)}
        for s, (texts, labels) in columns.items():
            unknown = sorted(set(labels) - set(index))
            if unknown:
                raise ConfigError(f"{files[s]}: label '{unknown[0]}' is not in the label set "
                                  f"{'task.labels' if task.labels else 'of ' + files['train']} "
                                  f"({', '.join(label_names)})")
            ids = [index[x] for x in labels]
            keep = list(range(len(ids)))
            if task.few_shot and s in FEW_SHOT_SALT:
                keep = few_shot_indices(ids, task.few_shot, seed * 1_000_003 + FEW_SHOT_SALT[s])
            if not keep:
                raise ConfigError(f"{files[s]}: no examples")
            splits[s] = encode_classification([texts[i] for i in keep], [ids[i] for i in keep],
                                              tokenizer, task.max_len)
    else:
        for s, t in tables.items():
            prompts = column(t, task.prompt_field, "task.prompt_field", files[s], where)
            completions = column(t, task.completion_field, "task.completion_field", files[s],
                                  where)
            if not prompts:
                raise ConfigError(f"{files[s]}: no examples")
            splits[s] = encode_sft([str(x) for x in prompts], [str(x) for x in completions],
                                   tokenizer, task.max_len)
    if unlabeled:
        splits["train"], files = encode_unlabeled(unlabeled, task, tokenizer, where), \
            {"train": unlabeled, **files}
    sizes = {s: len(e) for s, e in splits.items()}
    return TaskData(task.type, label_names, splits, files, sizes)


def task_key(task: TaskConfig, tokenizer_id: str, seed: int, unlabeled: str | None = None) -> str:
    """What the tokenised splits of `task` depend on, as a digest: its settings, the bytes of its
    files (and of the unlabeled inputs that replace its train split), the tokenizer and the seed
    (few-shot draws). Two bundles of one task share one key."""
    files = [content_hash(p) for p in (task.train, task.dev, task.test, unlabeled) if p]
    return hashlib.sha256(json.dumps([vars(task), tokenizer_id, seed, files], sort_keys=True,
                                     default=str).encode()).hexdigest()


GROUP_BATCHES = 50  # global batches per length-sorted mega-batch (as HF's LengthGroupedSampler)
LENGTH_NOISE = 0.05  # ± relative noise on the sort key (AllenNLP's BucketBatchSampler: 0.1)


class ExampleSource:
    """The engine's BatchSource over one split, with one checkpointed cursor over a seeded order.

    Each epoch's order is a seeded permutation cut into mega-batches of GROUP_BATCHES global
    batches; each mega-batch is sorted by length (±LENGTH_NOISE) and cut into global batches,
    whose order is shuffled (seeded). Every global batch is sorted by length, so consecutive
    micro-batches hold rows of similar length; the rows a step trains on are the same whatever the
    world size.
    `grouped=False`: the plain permutation; `pad_to_max`: batches padded to the split's width."""

    def __init__(self, examples: Examples, seed: int, grouped: bool = True,
                 pad_to_max: bool = False):
        self.examples, self.seed, self.cursor = examples, seed, 0
        self.grouped, self.pad_to_max = grouped, pad_to_max
        self.real_tokens = self.padded_tokens = 0  # of the micro-batches made (diagnostics)
        self.step_tokens = 0  # real tokens of the last global batch (all ranks)
        self._order: tuple[tuple[int, int], torch.Tensor] | None = None

    def _epoch_order(self, epoch: int, size: int) -> torch.Tensor:
        if self._order is None or self._order[0] != (epoch, size):
            n = len(self.examples)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(n, generator=g)
            if self.grouped:
                # the first rows complete the global batch the last epoch began
                head = min((-epoch * n) % size, n)
                # noisy lengths: on a small split, fewer of an example's batch-mates come back
                # the next epoch (501 glosses: 49% instead of 60%) for ~1% of the real tokens
                noise = LENGTH_NOISE * (2 * torch.rand(n, generator=g) - 1)
                keys = self.examples.lengths * (1 + noise)
                body = torch.cat([m[torch.argsort(keys[m], descending=True, stable=True)]
                                  for m in perm[head:].split(GROUP_BATCHES * size)] or [perm[:0]])
                full = len(body) // size
                batches = body[:full * size].view(full, size)[torch.randperm(full, generator=g)]
                perm = torch.cat([perm[:head], batches.flatten(), body[full * size:]])
            self._order = ((epoch, size), perm)
        return self._order[1]

    def global_batch(self, step: int, size: int) -> torch.Tensor:
        rows = []
        for _ in range(size):
            epoch, offset = divmod(self.cursor, len(self.examples))
            rows.append(self._epoch_order(epoch, size)[offset])
            self.cursor += 1
        rows = torch.stack(rows)
        lengths = self.examples.lengths[rows]
        if self.grouped:  # a batch across an epoch's end mixes two mega-batches
            rows = rows[torch.argsort(lengths, descending=True, stable=True)]
        self.step_tokens = int(lengths.sum())
        return rows

    def make_inputs(self, rows: torch.Tensor, keys: list[int]) -> dict[str, torch.Tensor]:
        """The model inputs of `rows`, and the rows themselves (`rows`: what a teacher's cached
        outputs are looked up by)."""
        batch = {**self.examples.batch(rows, self.pad_to_max), "rows": rows}
        self.real_tokens += int(batch["attention_mask"].sum())
        self.padded_tokens += batch["attention_mask"].numel()
        return batch

    def scalars(self, step: int) -> dict[str, float]:
        return {"data/epoch": self.cursor / len(self.examples),
                "data/real_tokens": self.step_tokens}

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "order": "grouped" if self.grouped else "permutation"}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = int(state["cursor"])
        # a checkpoint from before length grouping resumes in the order it began with
        self.grouped = state.get("order", "permutation") == "grouped"
        self._order = None


def real_token_fraction(source: ExampleSource, global_batch: int, micro_batch: int,
                        steps: int) -> float:
    """Real ÷ padded tokens of the micro-batches `source` yields over `steps` steps, sliced the
    way the engine slices them (every rank's share)."""
    for step in range(steps):
        rows = source.global_batch(step, global_batch)
        for start in range(0, global_batch, micro_batch):
            source.make_inputs(rows[start:start + micro_batch], [])
    return source.real_tokens / source.padded_tokens
