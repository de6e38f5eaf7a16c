"""The one whole-or-absent writer: a failed write is one RunError naming the target, removes what
it staged and leaves what was there; a race lost to another process leaks nothing; artifacts
honour the umask (the HF export's and a bundle's final/ are 0755 with 0644 files under 022)."""
import os
import resource
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import (
    FIXTURES,
    finished_runs,
)
from safetensors.torch import save_file

from rtune_ds.errors import RunError
from rtune_ds.io import (
    append_jsonl,
    save_json,
    save_jsonl,
    save_text,
    save_yaml,
    staged_dir,
    staged_file,
)


@contextmanager
def file_size_limit(limit: int):
    """Writes past `limit` bytes fail with EFBIG, as on a full disk (Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


BIG = {"x": "y" * 8192}
WRITERS = {"text": lambda path: save_text(BIG["x"], path),
           "json": lambda path: save_json(BIG, path),
           "yaml": lambda path: save_yaml(BIG, path),
           "jsonl": lambda path: save_jsonl([BIG, BIG], path)}


@pytest.mark.parametrize("kind", WRITERS)
def test_a_failed_file_write_names_the_file_and_keeps_the_old_one(tmp_path, kind):
    target = tmp_path / f"report.{kind}"
    target.write_text("old")
    with file_size_limit(4096), pytest.raises(RunError) as err:
        WRITERS[kind](target)
    assert str(err.value).startswith(f"{target}: writing it failed (")
    assert "\n" not in str(err.value) and "File too large" in str(err.value)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [target.name]
    WRITERS[kind](target)
    assert target.stat().st_size >= 8192 and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_failed_write_inside_a_staged_dir_names_the_dir(tmp_path):
    out = tmp_path / "final"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with file_size_limit(4096), pytest.raises(RunError) as err:
        with staged_dir(out) as tmp:
            save_json({"a": 1}, tmp / "small.json")
            save_file({"w": torch.zeros(4096)}, str(tmp / "model.safetensors"))
    assert str(err.value).startswith(f"{out}: writing it failed (")
    with file_size_limit(4096), pytest.raises(RunError) as err:
        with staged_dir(out) as tmp:
            save_json(BIG, tmp / "lineage.json")  # its own failure is re-raised naming the dir
    assert str(err.value).startswith(f"{out}: writing it failed (")
    assert ".tmp-" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_a_staged_file_keeps_the_suffix_and_leaves_nothing_on_another_error(tmp_path):
    with pytest.raises(ValueError):
        with staged_file(tmp_path / "plot.png") as tmp:
            assert tmp.suffix == ".png" and tmp.parent == tmp_path
            tmp.write_text("half")
            raise ValueError("not a write")
    assert not list(tmp_path.iterdir())


def test_a_lost_race_keeps_the_first_copy_and_leaks_nothing(tmp_path):
    out = tmp_path / "cache"
    with staged_dir(out, first_wins=True) as tmp:
        (tmp / "mine.txt").write_text("mine")
        with staged_dir(out, first_wins=True) as other:  # another process finishes first
            (other / "theirs.txt").write_text("theirs")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_the_tokenizer_cache_leaks_no_temp_dir_when_it_loses_a_race(tmp_path):
    from rtune_ds.data.tokenizer import train_tokenizer

    out = tmp_path / "tokenizers" / "key"
    for _ in range(2):  # the second finishes after the first: it loses the race
        tok = train_tokenizer([str(FIXTURES / "general.jsonl")], "text", 300, out)
    assert tok.eos_token == "</s>"
    assert [p.name for p in out.parent.iterdir()] == ["key"]


def test_append_jsonl_cuts_a_partial_line_off_again(tmp_path):
    log = tmp_path / "metrics.jsonl"
    append_jsonl({"step": 1}, log)
    with file_size_limit(4096), pytest.raises(RunError, match=f"{log}: writing it failed"):
        append_jsonl({"step": 2, **BIG}, log)
    append_jsonl({"step": 3}, log)
    assert log.read_text() == '{"step": 1}\n{"step": 3}\n'


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root.parent)): p.stat().st_mode & 0o777
            for p in [root, *sorted(root.rglob("*"))]}


def expected(root: Path, mask: int) -> dict[str, int]:
    return {str(p.relative_to(root.parent)): (0o777 if p.is_dir() else 0o666) & ~mask
            for p in [root, *sorted(root.rglob("*"))]}


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_staged_writes_honour_the_umask(tmp_path, mask):
    with umask(mask):
        with staged_dir(tmp_path / "final") as tmp:
            save_file({"w": torch.zeros(4)}, str(tmp / "model.safetensors"))  # 0600 by itself
            (tmp / "adapter").mkdir()
            save_json({"a": 1}, tmp / "adapter" / "config.json")
        save_text("x", tmp_path / "report.md")
    assert modes(tmp_path / "final") == expected(tmp_path / "final", mask)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.slow
@pytest.mark.parametrize("run", ["pretrain", "finetune"])
def test_final_dirs_are_0755_with_0644_files_under_umask_022(cache_dir, run):
    final = finished_runs(cache_dir)[run] / "final"
    assert any(final.glob("*.safetensors"))
    found = modes(final)
    assert found == {name: 0o755 if (final.parent / name).is_dir() else 0o644 for name in found}
