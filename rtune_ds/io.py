"""The one whole-or-absent writer: text, JSON and YAML files and directories are written beside
their target and renamed into place, so a reader never sees half an artifact; PNG figures too."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError

from rtune_ds.errors import RunError


def save_yaml(data: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def save_text(text: str, path: Path) -> None:
    """Write `path` whole or not at all: a sibling temp file, then a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_json(data: Any, path: Path) -> None:
    save_text(json.dumps(data, indent=2, default=str) + "\n", path)


def pyplot():
    """matplotlib's pyplot on the file-only backend (ranks have no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Write `fig` to `path` (a sibling temp file, then rename) and close it."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.tight_layout()
    fig.savefig(tmp, dpi=120)
    pyplot().close(fig)
    os.replace(tmp, path)


def write_failed(target: Path, err: Exception, staging: Path) -> RunError:
    """A failed write (a full disk, a lost permission): the partial `staging` dir is removed and
    the error says it in one line. torch.save reports a failed write as a RuntimeError."""
    shutil.rmtree(staging, ignore_errors=True)
    reason = " ".join(str(err).split())
    return RunError(f"{target}: writing it failed ({reason}); is the disk full? Nothing that was "
                    "already there was changed")


@contextmanager
def staged_dir(out_dir: Path):
    """A directory written whole or not at all: the body fills a staging dir beside `out_dir`,
    which then replaces `out_dir`; a failed write removes it and raises a RunError naming
    `out_dir`, any other error just removes it."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".tmp-{out_dir.name}-"))
    try:
        yield tmp
    except (OSError, SafetensorError) as err:
        raise write_failed(out_dir, err, tmp) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)

