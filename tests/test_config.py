import json

import pytest
import yaml
from conftest import FIXTURES, tiny_config, write_config

from rtune_ds.config.checks import resolve_batch
from rtune_ds.config.ds_config import (
    CPU_REDUCE_BUCKET_SIZE,
    choose_precision,
    read_ds_config,
    reduce_bucket_size,
    resolve_ds_config,
)
from rtune_ds.config.load import load_run_config
from rtune_ds.config.schema import (
    Init,
    Nonfinite,
    Objective,
    Precision,
    Schedule,
    TaskType,
    TuningMethod,
)
from rtune_ds.errors import ConfigError
from rtune_ds.hardware import FORCE_NATIVE_BF16, native_bf16
from rtune_ds.resources import DS_CONFIGS


def load(tmp_path, cfg, overrides=()):
    return load_run_config(str(write_config(tmp_path / "run.yaml", cfg)), list(overrides))


def test_overrides_are_typed_and_applied(tmp_path):
    cfg = load(tmp_path, tiny_config(tmp_path / "r"), ["train.lr=1e-4", "train.max_steps=7",
                                                      "data.switch.train=[" + str(FIXTURES / "computing.jsonl") + "]",
                                                      "data.switch.at_step=3"])
    assert cfg.train.lr == 1e-4 and cfg.train.max_steps == 7
    assert cfg.data.switch.train[0].path.endswith("computing.jsonl")
    assert cfg.data.switch.train[0].weight == 1.0


@pytest.mark.parametrize("overrides, names", [
    (["train.lrr=1"], "train.lrr"),
    (["train.max_steps=abc"], "train.max_steps"),
    (["train.micro_batch_size=1.5"], "train.micro_batch_size"),
    (["model.preset=gpt-17"], "model.preset"),
    (["train.schedule=linear"], "train.schedule"),
    (["data.train=[/nonexistent/corpus.jsonl]"], "data.train[0]"),
    (["model.preset=null", "model.path=/nonexistent/model"], "model.path"),
    (["deepspeed=/nonexistent/ds.json"], "deepspeed"),
])
def test_bad_values_name_file_and_key(tmp_path, overrides, names):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, tiny_config(tmp_path / "r"), overrides)
    assert names in str(err.value) and "run.yaml" in str(err.value)


@pytest.mark.parametrize("key, choices", [
    ("train.schedule", Schedule), ("train.precision", Precision), ("train.nonfinite", Nonfinite),
    ("model.objective", Objective), ("model.init", Init), ("task.type", TaskType),
    ("tuning.method", TuningMethod),
])
def test_a_value_that_is_not_a_choice_names_file_and_key_and_lists_the_choices(tmp_path, key,
                                                                                choices):
    section, name = key.split(".")
    path = write_config(tmp_path / "run.yaml", tiny_config(tmp_path / "r", **{section: {name: 16}}))
    with pytest.raises(ConfigError) as err:
        load_run_config(str(path), [])
    assert str(err.value) == f"{path}: key '{key}': one of {', '.join(choices)}, got 16"


def test_choices_load_as_enums_and_are_saved_as_the_values_a_file_spells(tmp_path):
    cfg = load(tmp_path, tiny_config(tmp_path / "r"), ["train.precision=bf16",
                                                      "train.schedule=constant"])
    assert (cfg.train.precision, cfg.train.schedule) == (Precision.BF16, Schedule.CONSTANT)
    assert type(cfg.train.precision) is Precision
    saved = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))  # safe_dump refuses enum objects
    assert (saved["train"]["precision"], saved["tuning"]["method"]) == ("bf16", "full")


def test_global_batch_must_divide(tmp_path):
    cfg = load(tmp_path, tiny_config(tmp_path / "r"), ["train.global_batch_size=12"])
    assert resolve_batch(cfg, 3, "f") == (1, 12)
    with pytest.raises(ConfigError, match="train.global_batch_size"):
        resolve_batch(cfg, 2, "f")  # 12 / (4 x 2) is not whole


def resolve(cfg, ds, world=2, accum=2, lr=3e-3, where="ds.json"):
    return resolve_ds_config(ds, where, cfg, world, accum, lr, 128)


def test_auto_values_are_filled_from_the_run_config(tmp_path):
    cfg = load(tmp_path, tiny_config(tmp_path / "r"))
    ds, where = read_ds_config(str(DS_CONFIGS / "zero3.json"))
    out, precision, _ = resolve(cfg, ds)
    assert out["train_micro_batch_size_per_gpu"] == 4 and out["gradient_accumulation_steps"] == 2
    assert out["train_batch_size"] == 16 and out["gradient_clipping"] == 1.0
    assert out["optimizer"]["params"]["lr"] == 3e-3 and out["bf16"]["enabled"] is False
    # this machine's ranks run on the CPU accelerator: large buckets; a GPU would get hidden^2
    assert out["zero_optimization"]["reduce_bucket_size"] == CPU_REDUCE_BUCKET_SIZE
    assert out["zero_optimization"]["stage3_param_persistence_threshold"] == 1280
    assert precision == "fp32"


@pytest.mark.parametrize("name, torch_adam", [("zero0.json", True), ("zero3.json", True),
                                               ("zero2_offload.json", False),
                                               ("zero3_offload.json", False)])
def test_the_default_optimizer_is_torch_fused_adamw_unless_offloaded(tmp_path, name, torch_adam):
    # DeepSpeed's FusedAdam costs every rank a JIT load per launch; an offloaded optimizer must
    # be DeepSpeed's CPU Adam (DeepSpeed refuses a torch optimizer with offload)
    cfg = load(tmp_path, tiny_config(tmp_path / "r"))
    out, _, _ = resolve(cfg, read_ds_config(str(DS_CONFIGS / name))[0])
    params = out["optimizer"]["params"]
    assert out["optimizer"]["type"] == "AdamW" and params["lr"] == 3e-3
    assert params.get("torch_adam", False) is torch_adam
    assert params.get("fused", False) is torch_adam
    mine = {"type": "AdamW", "params": {"lr": "auto"}}
    assert "torch_adam" not in resolve(cfg, {"optimizer": mine})[0]["optimizer"]["params"]


def test_auto_reduce_bucket_is_hidden_squared_on_gpus(monkeypatch):
    import deepspeed.accelerator

    class Cuda:
        def device_name(self):
            return "cuda"

    monkeypatch.setattr(deepspeed.accelerator, "get_accelerator", Cuda)
    assert reduce_bucket_size(128) == 128 * 128
    assert reduce_bucket_size(16384) == 16384 * 16384


def test_literal_deepspeed_examples_style_config_works(tmp_path):
    cfg = load(tmp_path, tiny_config(tmp_path / "r", train={"precision": "auto"}))
    ds = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 4, "steps_per_print": 10,
          "zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}
    out, precision, why = resolve(cfg, ds)
    assert precision == "bf16" and why == "the DeepSpeed JSON's bf16.enabled: True"
    assert out["gradient_accumulation_steps"] == 2
    assert out["optimizer"]["type"] == "AdamW"


@pytest.mark.parametrize("ds, key", [
    ({"train_micro_batch_size_per_gpu": 8}, "train.micro_batch_size"),
    ({"train_batch_size": 64}, "train_batch_size"),
    ({"train_batch_size": 15}, "not divisible"),
    ({"optimizer": {"type": "AdamW", "params": {"lr": 0.1}}}, "train.lr"),
    ({"scheduler": {"type": "WarmupLR"}}, "train.schedule"),
    ({"zero_optimization": {"stage": 5}}, "zero_optimization.stage"),
    ({"bf16": {"enabled": True}, "zero_optimization": {"stage": 0}}, "train.precision"),
])
def test_contradictions_name_both_sides(tmp_path, ds, key):
    cfg = load(tmp_path, tiny_config(tmp_path / "r", train={"precision": "fp32"}))
    with pytest.raises(ConfigError) as err:
        resolve(cfg, ds)
    assert key in str(err.value) and "ds.json" in str(err.value)


def test_malformed_deepspeed_json_names_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"train_batch_size": 8,,}')
    with pytest.raises(ConfigError, match="broken.json: malformed DeepSpeed JSON"):
        read_ds_config(str(bad))


def test_stock_configs_all_resolve(tmp_path):
    cfg = load(tmp_path, tiny_config(tmp_path / "r", train={"precision": "auto"}))
    for path in sorted(DS_CONFIGS.glob("*.json")):
        ds, where = read_ds_config(str(path))
        out, *_ = resolve(cfg, ds, where=where)
        json.dumps(out)
        assert out["train_batch_size"] == 16


@pytest.mark.parametrize("requested, ds_bf16, native, expected, why", [
    ("auto", "auto", True, "bf16", "auto: CPU X has avx512_bf16"),
    ("auto", "auto", False, "fp32", "auto: CPU X has neither"),
    ("auto", None, False, "fp32", "auto: CPU X has neither"),
    ("auto", True, False, "bf16", "the DeepSpeed JSON's bf16.enabled: True"),
    ("auto", False, True, "fp32", "the DeepSpeed JSON's bf16.enabled: False"),
    ("bf16", "auto", False, "bf16", "train.precision: bf16"),
    ("fp32", "auto", True, "fp32", "train.precision: fp32"),
])
def test_precision_follows_the_hardware_unless_asked(requested, ds_bf16, native, expected, why):
    answer = (native, "CPU X has avx512_bf16" if native else "CPU X has neither")
    precision, reason = choose_precision(requested, ds_bf16, lambda: answer)
    assert precision == expected and reason.startswith(why)


@pytest.mark.parametrize("forced, expected", [("1", "bf16"), ("0", "fp32")])
def test_auto_precision_flips_with_the_hardware_answer(tmp_path, monkeypatch, forced, expected):
    """The path of the other kind of machine, forced on this one: the resolved JSON, the
    precision and the recorded reason all follow the hardware's answer."""
    monkeypatch.setenv(FORCE_NATIVE_BF16, forced)
    native_bf16.cache_clear()
    try:
        cfg = load(tmp_path, tiny_config(tmp_path / "r", train={"precision": "auto"}))
        out, precision, why = resolve(cfg, read_ds_config(str(DS_CONFIGS / "zero0.json"))[0])
    finally:
        native_bf16.cache_clear()
    assert precision == expected and out["bf16"]["enabled"] is (expected == "bf16")
    assert why == f"auto: {FORCE_NATIVE_BF16}={forced}"


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch):
    import rtune_ds.hardware as hw

    monkeypatch.delenv(FORCE_NATIVE_BF16, raising=False)
    for flags, native in (({"avx2", "avx512_bf16"}, True), ({"avx2", "amx_bf16"}, True),
                          ({"avx2", "avx512f"}, False)):
        monkeypatch.setattr(hw, "cpu_info", lambda flags=flags: {"model": "M", "flags": flags})
        native_bf16.cache_clear()
        assert native_bf16()[0] is native, flags
    native_bf16.cache_clear()
