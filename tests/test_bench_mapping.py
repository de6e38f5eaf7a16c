"""`rtune bench mapping` prints (and writes) its JSON, and the bundle it maps was really applied."""
import json

import pytest
from conftest import check, rtune

pytestmark = pytest.mark.slow


def test_bench_mapping_reports_times_and_ratio(tmp_path, cache_dir):
    proc = check(rtune(["bench", "mapping", "--preset", "llama-1m", "--repeats", "2",
                        "--out", str(tmp_path)], cache_dir))
    result = json.loads((tmp_path / "bench_mapping.json").read_text())
    assert json.loads(proc.stdout[proc.stdout.index('{\n  "bench"'):]) == result
    assert result["mapped_tensors"] > 10 and result["parameters"] > 500_000
    assert len(result["map_s"]) == len(result["load_s"]) == 2
    assert result["ratio_map_to_load"] == pytest.approx(
        result["map_s_median"] / result["load_s_median"])
    assert not (tmp_path / "work").exists()  # the generated bases and bundle are removed
