"""A failed write of each artifact kind, as on a full disk (a file-size limit, so writes past it
fail with EFBIG), exits 3 with one line naming the artifact, leaves no `.tmp-*` or half-written
directory, and leaves what was there before untouched."""
import resource
import shutil
from pathlib import Path

import pytest
from conftest import finished_runs, rtune_under, tiny_config, write_config

pytestmark = pytest.mark.slow

LIMIT = 1 << 20  # tokenizers, configs and logs fit; weights (~4.6 MB) and checkpoints do not


@pytest.fixture(scope="module")
def runs(cache_dir):
    return finished_runs(cache_dir)


def resumed(runs, name: str, tmp_path: Path) -> tuple[list[str], Path]:
    """Resume a copy of a finished run: no step is left, so the launch only writes final/."""
    run_dir = tmp_path / name
    shutil.copytree(runs[name], run_dir)
    return ([name, "--config", str(runs[name].with_suffix(".yaml")), "--resume", "auto",
             f"run_dir={run_dir}"], run_dir / "final")


def setup_case(case: str, runs, tmp_path: Path) -> tuple[list[str], Path, int]:
    """(rtune arguments, the artifact that fails, file-size limit)."""
    bundle, base = str(runs["finetune"] / "final"), str(runs["base"])
    if case == "checkpoint":
        cfg = tiny_config(tmp_path / "run", train={"max_steps": 4, "eval_every": 0})
        return (["pretrain", "--config", str(write_config(tmp_path / "run.yaml", cfg))],
                tmp_path / "run" / "checkpoints" / "step_00000004", LIMIT)
    if case == "hf export":
        return (*resumed(runs, "pretrain", tmp_path), LIMIT)
    if case == "bundle":
        return (*resumed(runs, "finetune", tmp_path), LIMIT)
    out = tmp_path / case.replace(" ", "_")
    out.mkdir()
    if case == "merged export":
        (out / "config.json").write_text("{}")  # an earlier export, to be kept
        return ["export", "--bundle", bundle, "--base", base, "--out", str(out)], out, LIMIT
    (out / "distance.json").write_text("{}")  # an earlier report, to be kept
    return (["analyze", "distance", "--a", bundle, "--base-a", base, "--b", bundle,
             "--base-b", base, "--out", str(out)], out / "distance.json", 256)


def tree(path: Path) -> dict[str, bytes] | None:
    if not path.exists():
        return None
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", ["checkpoint", "hf export", "bundle", "merged export", "report"])
def test_a_failed_write_exits_3_naming_the_artifact_and_leaves_no_trace(runs, cache_dir, tmp_path,
                                                                        case):
    args, target, limit = setup_case(case, runs, tmp_path)
    before = tree(target)
    proc = rtune_under(args, cache_dir,
                       lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 3, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("rtune: error:") and f"{target}: writing it failed" in err, err
    assert "Traceback" not in proc.stderr
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert tree(target) == before
    if case == "checkpoint":
        assert not list(target.parent.iterdir()) and not (tmp_path / "run" / "final").exists()
