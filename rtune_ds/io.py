"""The one whole-or-absent writer. Every file and directory the project writes is staged beside its
target and renamed into place, so a reader never sees half of one. A failed write (a full disk, a
file too large, a lost permission) removes what was staged, leaves what was there before untouched,
and is a RunError that names the target in one line. What is written honours the umask."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

import yaml
from safetensors import SafetensorError

from rtune_ds.errors import RunError


class WriteFailed(RunError):
    """A write that failed; `reason` is its cause in one line. A staged dir re-raises it naming
    the dir, since the file inside the staging dir that failed is gone with it."""

    def __init__(self, target: Path, reason: str):
        super().__init__(f"{target}: writing it failed ({reason}); is the disk full? Nothing that "
                         "was already there was changed")
        self.reason = reason


# what a failed write raises: open/write/rename, safetensors' Rust writer, a nested staged write
WRITE_ERRORS = (OSError, SafetensorError, WriteFailed)


def write_failed(target: Path, err: BaseException, staging: Path | None = None) -> WriteFailed:
    """The one-line error of a failed write of `target`; the partial `staging` (file or dir) is
    removed. torch.save reports a failed write as a RuntimeError, so checkpoint code passes that."""
    if staging is not None:
        _remove(staging)
    reason = err.reason if isinstance(err, WriteFailed) else " ".join(str(err).split())
    return WriteFailed(target, reason)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _umask() -> int:
    try:  # read, not set: a thread creating a file meanwhile would get the wrong mode
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _publish(path: Path) -> None:
    """Give `path` (and a dir's whole tree) the modes a plain open()/mkdir() would: mkdtemp makes
    0700 dirs and safetensors >= 0.8 writes through its own 0600 temp file (safetensors#782)."""
    mask = _umask()

    def chmod(p: str, is_dir: bool) -> None:
        if not os.path.islink(p):
            full = is_dir or os.stat(p).st_mode & 0o100
            os.chmod(p, (0o777 if full else 0o666) & ~mask)

    chmod(str(path), path.is_dir())
    for root, dirs, files in os.walk(path) if path.is_dir() else ():
        for name in dirs:
            chmod(os.path.join(root, name), True)
        for name in files:
            chmod(os.path.join(root, name), False)


@contextmanager
def _staging(target: Path, tmp: Path):
    """Run the body that fills `tmp`; any error removes `tmp`, a failed write names `target`."""
    try:
        yield
    except WRITE_ERRORS as err:
        raise write_failed(target, err, tmp) from err
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def staged_file(path: Path):
    """Yield a temp path beside `path` (same suffix, for writers that pick a format by it) for the
    body to write; then it replaces `path` in one rename. Missing parent dirs are made."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(3)}{path.suffix}")
    with _staging(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        _publish(tmp)
        os.replace(tmp, path)


@contextmanager
def staged_dir(out_dir: Path, first_wins: bool = False):
    """Yield an empty dir beside `out_dir` for the body to fill; then it replaces `out_dir`.

    first_wins: `out_dir` is a cache that other ranks or processes may be filling at the same
    time with the same content; the first complete one stays and later ones are discarded."""
    out_dir = Path(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".tmp-{out_dir.name}-"))
    except OSError as err:
        raise write_failed(out_dir, err) from err
    with _staging(out_dir, tmp):
        yield tmp
        _publish(tmp)
        if first_wins:
            try:
                os.rename(tmp, out_dir)  # fails when a complete out_dir is already there
            except OSError:
                if not out_dir.is_dir():
                    raise
                _remove(tmp)
            return
        old = out_dir.with_name(f".tmp-old-{out_dir.name}-{secrets.token_hex(3)}")
        if out_dir.exists():
            os.replace(out_dir, old)  # a directory cannot be renamed over a non-empty one
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if old.exists():
                os.replace(old, out_dir)
            raise
        _remove(old)


def save_text(text: str, path: Path) -> None:
    with staged_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_json(data: Any, path: Path) -> None:
    save_text(json.dumps(data, indent=2, default=str) + "\n", path)


def save_yaml(data: dict, path: Path) -> None:
    save_text(yaml.safe_dump(data, sort_keys=False), path)


def save_jsonl(rows: Iterable[dict], path: Path, ensure_ascii: bool = True) -> None:
    """One JSON object per line, the whole file or none of it."""
    with staged_file(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=ensure_ascii) + "\n")


def append_jsonl(row: dict, path: Path) -> None:
    """Append one JSON line to a log, whole or not at all (a partial line is cut off again)."""
    data = memoryview((json.dumps(row) + "\n").encode())
    try:
        with open(path, "ab", buffering=0) as fh:  # unbuffered: nothing is left to flush on close
            end = fh.seek(0, os.SEEK_END)
            try:
                while data:
                    data = data[fh.write(data):]
            except OSError:
                fh.truncate(end)
                raise
    except OSError as err:
        raise write_failed(path, err) from err


def pyplot():
    """matplotlib's pyplot on the file-only backend (ranks have no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Write `fig` to `path` whole or not at all, and close it."""
    try:
        fig.tight_layout()
        with staged_file(path) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        pyplot().close(fig)
