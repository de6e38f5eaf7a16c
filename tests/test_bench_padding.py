"""`rtune bench padding` prints (and writes) its JSON: the real-token fraction rises with dynamic
padding and grouping, and both sides of the real loop were timed in real tokens/s."""
import json

import pytest
from conftest import FIXTURES, check, finetune_config, rtune, tiny_base, write_config

pytestmark = pytest.mark.slow


def test_bench_padding_reports_fractions_and_speed(tmp_path, cache_dir):
    run_dir = tmp_path / "bench"
    cfg = finetune_config(run_dir, tiny_base(cache_dir),
                          task={"train": str(FIXTURES / "general.jsonl"), "label_field": "lexname",
                                "dev": str(FIXTURES / "general.jsonl"), "test": None,
                                "max_len": 64},
                          train={"micro_batch_size": 16})
    proc = check(rtune(["bench", "padding", "--config", str(write_config(tmp_path / "b.yaml", cfg)),
                        "--steps", "2", "--warmup", "1", "--repeats", "2"], cache_dir))
    result = json.loads((run_dir / "bench" / "padding.json").read_text())
    assert json.loads(proc.stdout[proc.stdout.index('{\n  "bench"'):]) == result
    fraction = result["real_token_fraction"]
    assert fraction["before"] < fraction["dynamic_ungrouped"] < fraction["after"]
    assert fraction["after"] >= 0.9
    assert result["global_batch_size"] == 32 and result["world_size"] == 1
    assert all(len(v) == 2 and min(v) > 0 for v in result["runs"].values())
    per_s = result["real_tokens_per_s"]
    assert result["speedup"] == pytest.approx(per_s["after"] / per_s["before"])
