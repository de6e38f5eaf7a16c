"""A run directory's own files: the resolved RunConfig and DeepSpeed config."""
from __future__ import annotations

from pathlib import Path

from rtune_ds import dist
from rtune_ds.config.schema import RunConfig
from rtune_ds.io import save_json, save_yaml


def write_run_files(cfg: RunConfig, ds_config: dict) -> Path:
    """All ranks call this; rank 0 writes run_dir/config.yaml and ds_config.json."""
    run_dir = Path(cfg.run_dir)
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg.to_dict(), run_dir / "config.yaml")
        save_json(ds_config, run_dir / "ds_config.json")
    dist.barrier()
    return run_dir

