"""PNG figures for reports (mode-connectivity curves, compat curves, comparisons), written whole."""
from __future__ import annotations

import os
from pathlib import Path


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
