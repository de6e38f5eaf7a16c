"""The analysis functions on small inputs with known answers: interpolation between two real
(tiny) models, JS divergence of attention heads, parameter distances, steps to a target; and
`rtune analyze convergence` on a run dir written by the real Monitor."""
import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from rtune_ds.analysis.connectivity import barrier, interpolate, lambdas
from rtune_ds.analysis.convergence import steps_to_target, threshold
from rtune_ds.analysis.distance import parameter_distances
from rtune_ds.analysis.similarity import LN2, attention_js, js_divergence
from rtune_ds.cli import main
from rtune_ds.train.monitor import Monitor, read_metrics


def tiny_classifier(seed: int) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=3,
                         pad_token_id=0, attn_implementation="eager")
    return LlamaForSequenceClassification(config).eval()


def test_lambdas_are_equally_spaced_from_0_to_1():
    got = lambdas(26)
    assert len(got) == 26 and got[0] == 0.0 and got[-1] == 1.0
    assert all(b - a == pytest.approx(0.04) for a, b in zip(got, got[1:]))
    with pytest.raises(ValueError):
        lambdas(1)


def test_interpolation_endpoints_are_the_two_models_exactly():
    a, b = tiny_classifier(1).state_dict(), tiny_classifier(2).state_dict()
    assert not torch.equal(a["score.weight"], b["score.weight"])
    for name in a:
        assert torch.equal(interpolate(a[name], b[name], 0.0), a[name]), name
        assert torch.equal(interpolate(a[name], b[name], 1.0), b[name]), name
        mid = interpolate(a[name], b[name], 0.25)
        assert torch.allclose(mid, 0.75 * a[name] + 0.25 * b[name], atol=1e-7), name


def test_interpolation_passes_equal_index_buffers_and_refuses_mismatches():
    ids = torch.arange(5)
    assert torch.equal(interpolate(ids, ids.clone(), 0.5), ids)
    with pytest.raises(ValueError, match="non-float"):
        interpolate(ids, ids + 1, 0.5)
    with pytest.raises(ValueError, match="shapes"):
        interpolate(torch.zeros(2, 3), torch.zeros(3, 2), 0.5)


def test_barrier_is_the_worst_gap_below_the_line_between_the_endpoints():
    lams = [0.0, 0.5, 1.0]
    assert barrier([0.8, 0.5, 0.6], lams, rises=True) == pytest.approx(0.2)  # line at 0.5: 0.7
    assert barrier([1.0, 2.0, 1.0], lams, rises=False) == pytest.approx(1.0)
    assert barrier([0.8, 0.75, 0.6], lams, rises=True) == 0.0  # above the line: connected


def test_js_divergence_known_values():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])
    assert js_divergence(q, q.flip(0)).item() == pytest.approx(LN2)  # disjoint supports
    # M = (0.75, 0.25): KL(P||M) = 0.5 ln(4/3), KL(Q||M) = ln(4/3)
    assert js_divergence(p, q).item() == pytest.approx(0.75 * math.log(4 / 3), abs=1e-12)
    assert js_divergence(p, p).item() == 0.0


def attentions(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions


def test_attention_js_is_zero_for_identical_heads_and_positive_up_to_ln2_otherwise():
    ids = torch.randint(1, 40, (3, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:] = 0
    ids[1, 4:] = 0
    a, b = tiny_classifier(1), tiny_classifier(2)
    same = attention_js(attentions(a, ids, mask), attentions(a, ids, mask), mask)
    assert same.shape == (2, 2) and torch.all(same == 0)
    different = attention_js(attentions(a, ids, mask), attentions(b, ids, mask), mask)
    assert torch.all(different > 0) and torch.all(different <= LN2)


def test_attention_js_ignores_padded_queries_and_averages_tokens_then_examples():
    # 2 examples, 1 layer, 1 head, 4 positions; example 0 has 1 real token, example 1 has 3
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]])
    first = torch.eye(4)[None, None].repeat(2, 1, 1, 1)  # each query attends to itself
    other = first.clone()
    other[0, 0, 0] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # example 0's real query: disjoint -> ln 2
    other[:, :, 3] = 0.25  # padded queries (and example 0's rows 1-2) differ; they must not count
    other[0, 0, 1:3] = 0.25
    got = attention_js([first], [other], mask)
    # per example: ln 2 (its one token), 0 (three identical tokens) -> mean ln 2 / 2
    assert got.item() == pytest.approx(LN2 / 2, abs=1e-9)


def test_distances_are_zero_for_identical_sets():
    a = tiny_classifier(1).state_dict()
    got = parameter_distances(a, {k: v.clone() for k, v in a.items()})
    assert got["l2"] == 0.0 and got["cosine"] == pytest.approx(1.0)
    assert all(p["l2"] == 0.0 for p in got["per_parameter"].values())


def test_distances_on_a_hand_computed_example():
    a = {"w": torch.tensor([1.0, 0.0]), "head": torch.tensor([2.0]), "zero": torch.zeros(2)}
    b = {"w": torch.tensor([0.0, 1.0]), "head": torch.tensor([2.0]), "zero": torch.zeros(2)}
    got = parameter_distances(a, b)
    assert got["l2"] == pytest.approx(math.sqrt(2))
    assert got["cosine"] == pytest.approx(4 / 5)  # (0 + 4) / (sqrt(5) * sqrt(5))
    assert got["per_parameter"]["w"] == {"l2": pytest.approx(math.sqrt(2)), "cosine": 0.0,
                                         "norm_a": 1.0}
    assert got["per_parameter"]["head"]["cosine"] == pytest.approx(1.0)
    assert got["per_parameter"]["zero"]["cosine"] is None  # undefined for a zero vector
    backbone = parameter_distances(a, b, exclude={"head"})
    assert backbone["parameters"] == 2 and "head" not in backbone["per_parameter"]
    assert backbone["l2"] == pytest.approx(math.sqrt(2)) and backbone["cosine"] == 0.0


def write_records(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


RECORDS = [
    {"step": 0, "eval/accuracy": 0.25, "eval/loss": 2.0},
    {"step": 1, "train/loss": 1.9, "train/tokens": 100},
    {"step": 2, "train/loss": 1.7, "train/tokens": 200},
    {"step": 2, "eval/accuracy": 0.5, "eval/loss": 1.5, "wall_time": 3.5},
    {"step": 3, "train/loss": 1.4, "train/tokens": 300},
    {"step": 4, "train/loss": 1.2, "train/tokens": 400},
    {"step": 4, "eval/accuracy": 0.7, "eval/loss": 1.2},
]


def test_steps_to_target_from_a_hand_written_metrics_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_records(path, RECORDS)
    records = read_metrics(path)
    # 70% of 0.7 = 0.49: first reached at step 2 (0.5), with its tokens and logged wall time
    assert steps_to_target(records, "eval/accuracy", 0.7, 0.7) == {
        "step": 2, "value": 0.5, "tokens": 200, "wall_time_s": 3.5}
    assert steps_to_target(records, "eval/accuracy", 0.7, 1.0) == {
        "step": 4, "value": 0.7, "tokens": 400, "wall_time_s": None}
    assert steps_to_target(records, "eval/accuracy", 0.25, 1.0)["tokens"] == 0  # at step 0
    assert steps_to_target(records, "eval/accuracy", 0.9, 1.0) is None
    # a loss falls: 80% of target 1.2 means at most 1.5
    assert threshold("eval/loss", 1.2, 0.8) == pytest.approx(1.5)
    assert steps_to_target(records, "eval/loss", 1.2, 0.8)["step"] == 2
    assert steps_to_target(list(reversed(records)), "eval/loss", 1.2, 0.8)["step"] == 2


def test_analyze_convergence_reads_runs_and_their_tensorboard_wall_times(tmp_path, capsys):
    runs = []
    for name, accuracies in (("fast", [0.3, 0.6, 0.8]), ("slow", [0.3, 0.4, 0.5])):
        run = tmp_path / name
        monitor = Monitor(run, 0, 20, enabled=True)
        for i, acc in enumerate(accuracies):
            if i:
                monitor.log(10 * i, {"train/loss": 1.0, "train/tokens": 640 * i})
            monitor.log(10 * i, {"eval/accuracy": acc})
        monitor.close()
        runs.append(str(run))
    out = tmp_path / "out"
    assert main(["analyze", "convergence", "--runs", *runs, "--target", "0.8", "--fraction",
                 "0.75", "--out", str(out)]) == 0
    assert str(out / "convergence.json") in capsys.readouterr().out
    result = json.loads((out / "convergence.json").read_text())
    assert result["threshold"] == pytest.approx(0.6)  # reached by 0.6 despite rounding
    fast, slow = result["runs"]
    assert fast["reached"] and fast["step"] == 10 and fast["tokens"] == 640
    assert 0 <= fast["wall_time_s"] < 60 and fast["best"] == 0.8
    assert not slow["reached"] and slow["step"] is None and slow["final"] == 0.5


def test_analyze_convergence_input_errors_name_the_argument(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    write_records(run / "metrics.jsonl", RECORDS)
    for args, said in ((["--metric", "eval/acc"], "--metric eval/acc: not logged"),
                       (["--fraction", "1.5"], "--fraction 1.5"),
                       (["--runs", str(tmp_path / "missing")], "--runs")):
        argv = ["analyze", "convergence", "--runs", str(run), "--target", "0.5",
                "--out", str(tmp_path / "out"), *args]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("rtune: error: ") and said in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
