"""A run directory: one launch at a time writes it (the lock), and its own files (the resolved
RunConfig and DeepSpeed config).

The lock is flock(2) on run_dir/.rtune.lock, taken by rank 0 in a job's plan, before any compute.
The kernel drops it when its holder dies (SIGKILL, a lost node), so a killed run leaves nothing that
blocks; the file keeps the holder's host and pid to name it. Other ranks take nothing: a refused
rank 0 exits 2, and the deepspeed launcher then ends the other ranks. One process may enter a run
dir again (the demo runs its jobs in one launch). A lock over NFS needs a client with lockd or
NFSv4; Lustre needs the `flock` mount option."""
from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rtune_ds import dist
from rtune_ds.config.schema import RunConfig
from rtune_ds.errors import ConfigError
from rtune_ds.io import save_json, save_yaml

LOCK_NAME = ".rtune.lock"


@dataclass
class _Held:
    fd: int
    created: list[Path]  # the directories the lock made (deepest first), removed if left unused


_held: dict[Path, _Held] = {}  # the run dirs this process holds


def hold_run_dir(run_dir: str | Path, where: str) -> None:
    """Make this launch the one writing `run_dir`; a run dir a live launch holds is a ConfigError
    that names the holder (host, pid). Rank 0 only; call it before any compute."""
    if not dist.is_main():
        return
    path = Path(run_dir).absolute()
    if path.resolve() in _held:
        return
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{where}: key 'run_dir': cannot create {path}: {err.strerror}") from None
    path = path.resolve()
    for _ in range(10):  # another process may remove an unused lock between our open and flock
        try:
            fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:
            path.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ConfigError(f"{where}: key 'run_dir': {path} is in use by a live launch "
                              f"({holder}); wait for it to end, stop it, or choose another "
                              "run_dir") from None
        except OSError as err:  # a filesystem without locks: run, but say what is not enforced
            os.close(fd)
            print(f"rtune: warning: {path}: no lock on this filesystem ({err.strerror}); "
                  "nothing stops a second launch into this run dir", file=sys.stderr)
            return
        if _same_file(fd, path / LOCK_NAME):
            break
        os.close(fd)
    else:
        raise ConfigError(f"{where}: key 'run_dir': {path}: could not take its lock "
                          f"{path / LOCK_NAME} (it keeps being removed)")
    record = {"host": socket.gethostname(), "pid": os.getpid(),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    _held[path] = _Held(fd, created)


def release_unused_run_dirs() -> None:
    """Let go of every held run dir that holds nothing but its lock (a launch refused after the
    lock, before it wrote anything), removing it and the parents the lock made: a refused launch
    leaves nothing that looks like a run. Run dirs with output stay held until the process ends."""
    for path, held in list(_held.items()):
        try:
            if [p.name for p in path.iterdir()] != [LOCK_NAME]:
                continue
        except OSError:
            continue
        (path / LOCK_NAME).unlink()  # before closing it: no one can lock a file on its way out
        os.close(held.fd)
        del _held[path]
        for d in held.created:
            try:
                d.rmdir()
            except OSError:
                break


atexit.register(release_unused_run_dirs)


def release_run_dirs() -> None:
    """Let go of every run dir this process holds, as its exit would: for a process that runs
    one launch after another (a test session), once a launch is done."""
    release_unused_run_dirs()
    for path, held in list(_held.items()):
        os.close(held.fd)
        del _held[path]


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _holder(fd: int) -> str:
    """'host H, pid P, since T' from the holder's record; it writes it right after its flock."""
    for _ in range(20):
        try:
            record = json.loads(os.pread(fd, 4096, 0).decode())
            return f"host {record['host']}, pid {record['pid']}, since {record['since']}"
        except (ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "its host and pid are not recorded"


def write_run_files(cfg: RunConfig, ds_config: dict) -> Path:
    """All ranks call this; rank 0 writes run_dir/config.yaml and ds_config.json."""
    run_dir = Path(cfg.run_dir)
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg.to_dict(), run_dir / "config.yaml")
        save_json(ds_config, run_dir / "ds_config.json")
    dist.barrier()
    return run_dir
