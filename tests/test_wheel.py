"""A plain (non-editable) install is complete: the wheel carries the stock DeepSpeed JSONs and the
demo budgets, and a tiny `rtune pretrain` with no --ds-config runs from a directory that has no
ds_configs/."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO, base_env, tiny_config, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple:
    """(the wheel, a site dir holding its install) outside the checkout."""
    work = tmp_path_factory.mktemp("wheel")
    # the venv's own setuptools: no download of a build environment
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(work / "dist"), str(REPO)],
                   check=True, capture_output=True, text=True)
    (wheel,) = (work / "dist").glob("rtune_ds-*.whl")
    site = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, text=True)
    return wheel, site


def test_the_wheel_ships_the_package_data(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    for want in ("rtune_ds/resources/ds_configs/zero0.json",
                 "rtune_ds/resources/ds_configs/teacher_offload.json",
                 "rtune_ds/resources/demo.yaml"):
        assert want in names, f"{want} missing from {wheel.name}"


def test_a_plain_install_pretrains_with_the_default_deepspeed_config(installed, tmp_path,
                                                                      cache_dir):
    _, site = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "run.yaml", tiny_config(run_dir, train={"max_steps": 4,
                                                                          "eval_every": 0}))
    env = {**base_env(cache_dir), "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import rtune_ds; print(rtune_ds.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(site)), where.stdout  # the wheel, not the checkout
    proc = subprocess.run([sys.executable, "-m", "rtune_ds", "pretrain", "--config", str(cfg)],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ds_config = json.loads((run_dir / "ds_config.json").read_text())
    assert ds_config["zero_optimization"]["stage"] == 0
    assert (run_dir / "final" / "config.json").is_file()
    assert not (elsewhere / "ds_configs").exists()
