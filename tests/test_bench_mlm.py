"""`rtune bench mlm` prints (and writes) its JSON: both sides timed, medians, ratio, same losses."""
import json
import statistics

import pytest
from conftest import check, rtune, tiny_config, write_config

pytestmark = pytest.mark.slow


def test_bench_mlm_reports_both_heads_and_their_ratio(tmp_path, cache_dir):
    cfg = tiny_config(tmp_path / "run", model={"preset": "roberta-1m"})
    proc = check(rtune(["bench", "mlm", "--config", str(write_config(tmp_path / "c.yaml", cfg)),
                        "--steps", "3", "--warmup", "1", "--repeats", "2"], cache_dir))
    result = json.loads((tmp_path / "run" / "bench" / "mlm.json").read_text())
    assert json.loads(proc.stdout[proc.stdout.index('{\n  "bench"'):]) == result
    assert result["model_class"] == "RobertaForMaskedLM" and result["repeats"] == 2
    for side in ("masked_rows", "full_head"):
        runs = result[f"{side}_runs"]
        assert len(runs) == 2 and all(v > 0 for v in runs)
        assert result[f"{side}_tokens_per_s"] == pytest.approx(statistics.median(runs))
    assert result["ratio"] == pytest.approx(
        result["masked_rows_tokens_per_s"] / result["full_head_tokens_per_s"])
    assert result["tokens_per_step"] == 4 * 2 * 32
    assert 0.08 < result["masked_fraction"] < 0.25
    assert result["max_abs_loss_diff"] < 1e-4


def test_bench_mlm_refuses_a_causal_lm(tmp_path, cache_dir):
    cfg = tiny_config(tmp_path / "run")
    proc = rtune(["bench", "mlm", "--config", str(write_config(tmp_path / "c.yaml", cfg))],
                 cache_dir)
    assert proc.returncode == 2 and "needs a masked LM" in proc.stderr, proc.stderr[-2000:]
