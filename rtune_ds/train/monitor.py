"""Run monitoring on rank 0: TensorBoard scalars, metrics.jsonl (their machine-readable twin) and a
progress bar. Other ranks get a monitor that does nothing. The progress bar is rtune's one bar,
also shown by the commands that loop without training."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from rtune_ds import dist
from rtune_ds.io import append_jsonl, save_text


def progress_bar(total: int, desc: str, initial: int = 0) -> tqdm:
    """Rank 0's bar; RTUNE_NO_PROGRESS=1 turns it off."""
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                disable=not dist.is_main() or os.environ.get("RTUNE_NO_PROGRESS") == "1",
                mininterval=0.1 if sys.stderr.isatty() else 30.0)  # quiet logs


class Monitor:
    def __init__(self, run_dir: Path, start_step: int, total_steps: int, enabled: bool | None = None,
                 desc: str = "train"):
        self.enabled = dist.is_main() if enabled is None else enabled
        self.writer = self.bar = None
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.metrics_path = run_dir / "metrics.jsonl"
        kept = _truncate_after(self.metrics_path, start_step)
        # wall_time: seconds of this run so far, across the launches of a resumed run
        self.started = time.time() - (kept[-1].get("wall_time", 0.0) if kept else 0.0)
        # purge_step drops events a crashed launch wrote past the checkpoint we resume from
        self.writer = SummaryWriter(str(run_dir / "tensorboard"),
                                    purge_step=start_step + 1 if start_step else None)
        self.bar = progress_bar(total_steps, desc, initial=start_step)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        append_jsonl({"step": step, **scalars,
                      "wall_time": round(time.time() - self.started, 3)}, self.metrics_path)

    def advance(self, step: int, loss: float | None = None) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()


def _truncate_after(path: Path, step: int) -> list[dict]:
    """Keep only the records up to `step` (a resumed run rewrites what follows); returns them."""
    if not path.exists():
        return []
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    save_text("".join(line + "\n" for line in kept), path)
    return [json.loads(line) for line in kept]


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

