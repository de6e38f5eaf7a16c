"""rtune analyze on real bundles: A is a full fine-tuning bundle tuned on v0, B a LoRA bundle tuned
on v1 (merged for the analyses), and the control pair is A with itself. Connectivity starts and
ends at the two bundles' own dev metrics, is flat for the control pair, and gives the same curve
on 2 ranks (ZeRO-3 partitioned; ZeRO-2, replicated for inference) as on 1; similarity and distance
are 0 for the control pair and positive for A vs B; bad inputs are refused naming the argument,
before anything is written."""
import json
import math

import pytest
from conftest import check, finetune_config, read_jsonl, rtune, rtune_many, write_config

from rtune_ds.cli import main

pytestmark = pytest.mark.slow

POINTS = 6


@pytest.fixture(scope="module")
def env(recycle_env):
    """(root, cache, {"a": (bundle, base), "b": (bundle, base)})."""
    root, bases, bundles, cache = recycle_env
    run = root / "an_lora_v1"
    if not (run / "final").is_dir():
        cfg = finetune_config(run, bases["v1"], "lora", train={"max_steps": 20, "eval_every": 10})
        check(rtune(["finetune", "--config", str(write_config(root / "an_lora_v1.yaml", cfg))],
                    cache))
    return root, cache, {"a": (bundles["full"], bases["v0"]), "b": (run / "final", bases["v1"])}


def pair_args(env) -> list[str]:
    (a, base_a), (b, base_b) = env[2]["a"], env[2]["b"]
    # --bundle-b: the deepspeed launcher would take --b for its own --bind_* options
    return ["--a", str(a), "--base-a", str(base_a), "--bundle-b", str(b), "--base-b", str(base_b),
            "--control-a", str(a), "--control-base-a", str(base_a),
            "--control-b", str(a), "--control-base-b", str(base_a)]


def analyze_args(env, name: str, command: str, extra=()) -> list[str]:
    root, _, sides = env
    cfg = write_config(root / f"{name}.yaml", finetune_config(root / name, sides["b"][1]))
    return ["analyze", command, *pair_args(env), "--config", str(cfg), *extra]


def analyze(env, name: str, command: str, extra=()):
    return check(rtune(analyze_args(env, name, command, extra), env[1]))


def dev_metrics(bundle) -> dict:
    return json.loads((bundle / "bundle.json").read_text())["metrics"]["dev"]


@pytest.fixture(scope="module")
def one_rank(env):
    proc = analyze(env, "conn1", "connectivity", ["--points", str(POINTS)])
    assert str(env[0] / "conn1" / "connectivity.json") in proc.stdout
    return json.loads((env[0] / "conn1" / "connectivity.json").read_text())


def test_connectivity_runs_from_one_tuned_model_to_the_other(env, one_rank):
    root, _, sides = env
    main_curve = one_rank["pairs"]["main"]["curve"]
    assert [c["lambda"] for c in main_curve] == pytest.approx([i / 5 for i in range(POINTS)])
    for point, side in ((main_curve[0], "a"), (main_curve[-1], "b")):
        want = dev_metrics(sides[side][0])
        assert point["loss"] == pytest.approx(want["eval/loss"], abs=1e-5), side
        assert point["accuracy"] == pytest.approx(want["eval/accuracy"], abs=1e-5), side
    assert len({round(c["loss"], 6) for c in main_curve}) == POINTS  # every point its own model
    control = one_rank["pairs"]["control"]
    for point in control["curve"]:  # A with itself: the same model all along
        assert point["loss"] == pytest.approx(main_curve[0]["loss"], abs=1e-6)
    assert control["barrier"]["loss"] == pytest.approx(0.0, abs=1e-6)
    assert set(one_rank["pairs"]["main"]["barrier"]) == {"loss", "accuracy", "f1"}
    assert (root / "conn1" / "connectivity.png").stat().st_size > 0
    assert list((root / "conn1" / "tensorboard").glob("events.*"))
    logged = [r for r in read_jsonl(root / "conn1" / "metrics.jsonl")
              if "connectivity/main/dev/accuracy" in r]
    assert [r["step"] for r in logged] == list(range(POINTS))


@pytest.fixture(scope="module")
def two_ranks(env):
    """Connectivity on 2 ranks under ZeRO-3 and ZeRO-2, in one launch."""
    rtune_many([analyze_args(env, f"conn_{ds}", "connectivity",
                             ["--points", str(POINTS), "--ds-config", f"ds_configs/{ds}.json"])
                for ds in ("zero3", "zero2")], env[1])


@pytest.mark.parametrize("ds", ["zero3", "zero2"])
def test_connectivity_on_two_ranks_equals_one_rank(env, one_rank, two_ranks, ds):
    got = json.loads((env[0] / f"conn_{ds}" / "connectivity.json").read_text())
    assert got["world_size"] == 2 and got["zero_stage"] == int(ds[-1])
    for name in ("main", "control"):
        for want, point in zip(one_rank["pairs"][name]["curve"], got["pairs"][name]["curve"]):
            assert point == pytest.approx(want, abs=1e-5)


def test_similarity_is_zero_for_a_model_with_itself_and_positive_between_the_pair(env):
    proc = analyze(env, "sim", "similarity", ["--max-examples", "20"])
    out = env[0] / "sim"
    assert str(out / "similarity.json") in proc.stdout
    got = json.loads((out / "similarity.json").read_text())
    assert got["examples"] == 20
    main_js, control_js = got["pairs"]["main"]["js"], got["pairs"]["control"]["js"]
    assert [len(row) for row in main_js] == [4, 4]  # llama-1m: 2 layers of 4 heads
    assert all(v == 0 for row in control_js for v in row)
    assert all(0 < v <= math.log(2) for row in main_js for v in row)
    assert (out / "similarity.png").stat().st_size > 0


def test_distance_of_all_parameters_and_of_the_backbone(env, capsys):
    results = {}
    for name, extra in (("all", []), ("backbone", ["--backbone-only"])):
        out = env[0] / f"dist_{name}"  # one CPU process: run in this one
        assert main(["analyze", "distance", *pair_args(env), "--out", str(out), *extra]) == 0
        assert str(out / "distance.json") in capsys.readouterr().out
        results[name] = json.loads((out / "distance.json").read_text())["pairs"]
    full, backbone = results["all"]["main"], results["backbone"]["main"]
    assert results["all"]["control"]["l2"] == 0.0
    assert results["all"]["control"]["cosine"] == pytest.approx(1.0)
    assert full["l2"] > 0 and full["cosine"] < 1
    per_parameter = full["per_parameter"].values()
    assert full["l2"] ** 2 == pytest.approx(sum(p["l2"] ** 2 for p in per_parameter))
    assert backbone["excluded"] == ["score.weight"]
    assert "score.weight" not in backbone["per_parameter"]
    assert backbone["parameters"] == full["parameters"] - 1
    assert backbone["l2"] < full["l2"]


def test_bad_inputs_are_refused_naming_the_argument(env, tmp_path, capsys):
    (a, base_a), (b, base_b) = env[2]["a"], env[2]["b"]
    cfg = write_config(tmp_path / "run.yaml", finetune_config(tmp_path / "run", base_b))
    valid = ["--a", str(a), "--base-a", str(base_a), "--b", str(b), "--base-b", str(base_b)]
    cases = [
        (["--a", str(a), "--base-a", str(base_b), *valid[4:]], f"--base-a {base_b}: not the base"),
        (["--a", str(base_a), *valid[2:]], f"--a {base_a}: not an rtune bundle"),
        ([*valid, "--control-a", str(a)], "--control-base-a, --control-b, --control-base-b:"),
        ([*valid, "--points", "1"], "--points 1"),
        ([*valid, "task.labels=[x,y]"], "key 'task.labels'"),
    ]
    for args, said in cases:
        assert main(["analyze", "connectivity", "--config", str(cfg), *args]) == 2, said
        err = capsys.readouterr().err
        assert err.startswith("rtune: error: ") and said in err, err
    assert not (tmp_path / "run").exists()
