"""rtune recycle on real ranks (gloo): a bundle tuned on v0 mapped onto v1 gives the same weights on
2 ZeRO-3 ranks as on 1 unsharded rank (delta and PEFT); init starts where compat ends; the shape
policies (vocabulary growth, an added layer, a removed one, renamed modules); plain peft adapters;
refusals (same base, pickled tensors, paths outside the bundle) before any output."""
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, check, derived_base, recycle, recycle_args, rtune, rtune_many
from transformers import AutoTokenizer

pytestmark = pytest.mark.slow


def grow_vocab(model):
    model.resize_token_embeddings(model.config.vocab_size + 8, mean_resizing=False)
    return model


def with_layers(n: int):
    def change(model):
        from transformers import LlamaForCausalLM

        config = model.config
        config.num_hidden_layers = n
        torch.manual_seed(12)
        new = LlamaForCausalLM(config)
        new.load_state_dict(model.state_dict(), strict=False)  # the extra layer keeps its init
        return new
    return change


@pytest.fixture(scope="module")
def env(recycle_env):
    """recycle_env, with its 2-rank recyclings made in one launch: the full and LoRA bundles'
    compat on v1 under ZeRO-3 (c3_<method>), and init under ZeRO-2."""
    _, bases, bundles, cache = recycle_env
    rtune_many([*(recycle_args(recycle_env, f"c3_{method}", bundles[method], bases["v1"],
                               ds="zero3") for method in ("full", "lora")),
                recycle_args(recycle_env, "init", bundles["full"], bases["v1"], method="init",
                             ds="zero2")], cache)
    return recycle_env


def compat(env, name) -> dict:
    return json.loads((env[0] / name / "compat.json").read_text())


def compat_on_v1(env, method: str) -> dict:
    """The 1-rank compat result of the `method` bundle on v1 (made once)."""
    if not (env[0] / f"c1_{method}" / "compat.json").is_file():
        check(recycle(env, f"c1_{method}", env[2][method], env[1]["v1"]))
    return compat(env, f"c1_{method}")


@pytest.mark.parametrize("method", ["full", "lora"])
def test_zero3_on_two_ranks_maps_exactly_as_one_unsharded_rank(env, method):
    one, three = compat_on_v1(env, method), compat(env, f"c3_{method}")
    assert one["weights_digest"] == three["weights_digest"]
    assert one["dev"] == pytest.approx(three["dev"], abs=1e-6)
    # v1 is v0 moved a little: the old tuning still works (fixture chance is 0.25)
    assert one["dev"]["accuracy"] > 0.4 and set(one["test"]) >= {"accuracy", "loss"}
    assert one["bundle"]["kind"] == ("delta" if method == "full" else "peft")
    events = list((env[0] / f"c1_{method}" / "tensorboard").glob("events.*"))
    assert events, "compat writes TensorBoard scalars"


def test_init_starts_from_the_compat_point_and_writes_a_new_bundle(env):
    root, bases, bundles, _ = env
    first = json.loads((root / "init" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0
    assert first["eval/loss"] == pytest.approx(compat_on_v1(env, "full")["dev"]["loss"], abs=1e-5)
    lineage = json.loads((root / "init" / "final" / "lineage.json").read_text())
    rec = lineage["recycled"]
    assert rec["method"] == "init" and rec["bundle"]["path"] == str(bundles["full"].resolve())
    assert rec["old_base"]["fingerprint"] != rec["new_base"]["fingerprint"]
    assert lineage["parent"]["path"] == str(bases["v1"].resolve())
    meta = json.loads((root / "init" / "final" / "bundle.json").read_text())
    assert meta["base"]["fingerprint"] == rec["new_base"]["fingerprint"]


def test_grown_vocabulary_changes_nothing_the_tokenizer_can_reach(env, cache_dir):
    _, bases, bundles, _ = env
    grown = derived_base(cache_dir, "v1_vocab", grow_vocab)
    check(recycle(env, "c_vocab", bundles["full"], grown))
    report = json.loads((env[0] / "c_vocab" / "mapping.json").read_text())
    rows = json.loads((bases["v1"] / "config.json").read_text())["vocab_size"]
    assert list(report["rows_grown"].values()) == [[rows, rows + 8]]
    # same weights as v1 plus rows no token id reaches: the same scores as on v1
    assert compat(env, "c_vocab")["dev"] == pytest.approx(compat_on_v1(env, "full")["dev"], abs=1e-6)


def test_added_layer_keeps_its_new_values_and_is_reported(env, cache_dir):
    _, _, bundles, _ = env
    deeper = derived_base(cache_dir, "v1_deeper", with_layers(3))
    check(recycle(env, "c_deeper", bundles["full"], deeper))
    report = json.loads((env[0] / "c_deeper" / "mapping.json").read_text())
    assert report["kept_new_values"] and all(k.startswith("model.layers.2.")
                                             for k in report["kept_new_values"])
    assert not report["dropped"]


def test_removed_layer_is_refused_in_strict_mode_and_dropped_when_allowed(env, cache_dir):
    root, _, bundles, _ = env
    shallow = derived_base(cache_dir, "v1_shallow", with_layers(1))
    proc = recycle(env, "c_shallow", bundles["full"], shallow)
    assert proc.returncode == 2
    assert "model.layers.1." in proc.stderr and "--allow-partial" in proc.stderr
    assert "Traceback" not in proc.stderr and not (root / "c_shallow").exists()
    check(recycle(env, "c_shallow", bundles["full"], shallow, extra=["--allow-partial"]))
    report = json.loads((root / "c_shallow" / "mapping.json").read_text())
    assert report["dropped"] and all(k.startswith("model.layers.1.") for k in report["dropped"])


def test_renamed_modules_map_through_the_name_map(env):
    root, bases, bundles, _ = env
    from safetensors.torch import load_file, save_file

    renamed = root / "renamed_bundle"
    shutil.copytree(bundles["full"], renamed)
    delta = load_file(str(renamed / "delta.safetensors"))
    save_file({k.replace("model.layers.", "model.blocks."): v for k, v in delta.items()},
              str(renamed / "delta.safetensors"))
    proc = recycle(env, "c_renamed", renamed, bases["v1"])
    assert proc.returncode == 2 and "model.blocks.0." in proc.stderr
    check(recycle(env, "c_renamed", renamed, bases["v1"],
                  extra=["--name-map", r"^model\.blocks\.=model.layers."]))
    assert compat(env, "c_renamed")["weights_digest"] == compat_on_v1(env, "full")["weights_digest"]


def test_a_plain_peft_adapter_is_recycled_like_peft_itself_would_apply_it(env):
    root, bases, _, _ = env
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from rtune_ds.config.schema import TaskConfig
    from rtune_ds.data.examples import load_task
    from rtune_ds.train.evaluate import evaluate_classification

    labels = sorted({json.loads(line)["label"]
                     for line in (FIXTURES / "cls_train.jsonl").read_text().splitlines()})
    tok = AutoTokenizer.from_pretrained(str(bases["v0"]))

    def classifier(base):
        return AutoModelForSequenceClassification.from_pretrained(
            str(base), num_labels=len(labels), pad_token_id=tok.pad_token_id, dtype=torch.float32)

    torch.manual_seed(5)
    peft_model = get_peft_model(classifier(bases["v0"]), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    adapter = root / "plain_adapter"
    peft_model.save_pretrained(str(adapter))
    check(recycle(env, "c_plain", adapter, bases["v1"]))
    got = compat(env, "c_plain")

    expected = PeftModel.from_pretrained(classifier(bases["v1"]), str(adapter)).eval()
    task = TaskConfig(train=str(FIXTURES / "cls_train.jsonl"), dev=str(FIXTURES / "cls_dev.jsonl"),
                      max_len=32)
    dev = load_task(task, tok, 3, "test").splits["dev"]
    want = evaluate_classification(expected, dev, 8, len(labels))
    assert got["dev"]["loss"] == pytest.approx(want["eval/loss"], abs=1e-5)
    assert got["dev"]["accuracy"] == want["eval/accuracy"]


def test_the_base_the_bundle_was_tuned_on_is_refused_unless_forced(env):
    root, bases, bundles, _ = env
    proc = recycle(env, "c_same", bundles["full"], bases["v0"])
    assert proc.returncode == 2 and "--force-same-base" in proc.stderr
    assert not (root / "c_same").exists()
    check(recycle(env, "c_same", bundles["full"], bases["v0"], extra=["--force-same-base"]))
    old_dev = json.loads((bundles["full"] / "bundle.json").read_text())["metrics"]["dev"]
    assert compat(env, "c_same")["dev"]["loss"] == pytest.approx(old_dev["eval/loss"], abs=1e-5)


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/rtune_pickle_payload_ran"),))


def test_a_pickled_tensors_file_is_refused_without_running_it(env):
    root, bases, bundles, cache = env
    marker = Path("/tmp/rtune_pickle_payload_ran")
    marker.unlink(missing_ok=True)
    evil = root / "evil_bundle"
    shutil.copytree(bundles["full"], evil)
    (evil / "delta.safetensors").write_bytes(pickle.dumps({"w": Payload()}))
    proc = recycle(env, "c_evil", evil, bases["v1"])
    assert proc.returncode == 2 and "delta.safetensors" in proc.stderr
    assert "never unpickled" in proc.stderr
    proc = rtune(["export", "--bundle", str(evil), "--base", str(bases["v0"]), "--out",
                  str(root / "evil_export")], cache)
    assert proc.returncode == 2 and "delta.safetensors" in proc.stderr
    assert not marker.exists() and not (root / "evil_export").exists()


def test_bundle_metadata_cannot_point_outside_the_bundle(env):
    root, bases, bundles, _ = env
    escape = root / "escape_bundle"
    shutil.copytree(bundles["full"], escape)
    meta = json.loads((escape / "bundle.json").read_text())
    meta["files"]["delta"] = "../ft_lora/final/head.safetensors"
    (escape / "bundle.json").write_text(json.dumps(meta))
    proc = recycle(env, "c_escape", escape, bases["v1"])
    assert proc.returncode == 2 and "files.delta" in proc.stderr and "outside" in proc.stderr


def test_analyze_compat_follows_a_bundle_across_base_versions(env):
    root, bases, bundles, cache = env
    check(rtune(["analyze", "compat", "--bundle", str(bundles["full"]), "--bases",
                 str(bases["v0"]), str(bases["v1"]), "--out", str(root / "curve")], cache))
    points = json.loads((root / "curve" / "compat_curve.json").read_text())["points"]
    old_dev = json.loads((bundles["full"] / "bundle.json").read_text())["metrics"]["dev"]
    assert points[0]["dev"]["loss"] == pytest.approx(old_dev["eval/loss"], abs=1e-5)
    assert points[1]["dev"] == pytest.approx(compat_on_v1(env, "full")["dev"], abs=1e-6)
    assert (root / "curve" / "compat_curve.png").stat().st_size > 0
    assert list((root / "curve" / "tensorboard").glob("events.*"))
