"""The mapping plan from names and shapes: same shapes, vocabulary growth, added and removed layers,
renamed modules, tied weights, strict refusal."""
import pytest
import torch

from rtune_ds.errors import ConfigError
from rtune_ds.recycling.mapping import (
    ADD,
    ADD_ROWS,
    SET,
    Policy,
    apply_mapping,
    mapping_targets,
    parse_name_map,
    peft_saved_name,
    plan_mapping,
)

H = 8
TARGET = {"embed.weight": (100, H), "layers.0.w": (H, H), "layers.1.w": (H, H),
          "score.weight": (3, H)}


def source(**shapes):
    out = {name.replace("__", "."): (shape, ADD) for name, shape in shapes.items()}
    out["score.weight"] = ((3, H), SET)
    return out


def moves(mapping):
    return {m.source: (m.target, m.how) for m in mapping.moves}


def test_same_shapes_map_one_to_one():
    m = plan_mapping(source(embed__weight=(100, H), layers__0__w=(H, H), layers__1__w=(H, H)),
                     TARGET, Policy(), "t")
    assert moves(m) == {"embed.weight": ("embed.weight", ADD), "layers.0.w": ("layers.0.w", ADD),
                        "layers.1.w": ("layers.1.w", ADD), "score.weight": ("score.weight", SET)}
    assert not m.kept and not m.dropped


def test_grown_vocabulary_gets_the_delta_on_shared_rows_only():
    m = plan_mapping(source(embed__weight=(90, H), layers__0__w=(H, H), layers__1__w=(H, H)),
                     TARGET, Policy(), "t")
    assert moves(m)["embed.weight"] == ("embed.weight", ADD_ROWS)
    assert m.grown == {"embed.weight": [90, 100]}


def test_a_shrunk_vocabulary_or_a_set_tensor_of_another_shape_is_not_grown():
    with pytest.raises(ConfigError, match="embed.weight"):
        plan_mapping(source(embed__weight=(120, H), layers__0__w=(H, H), layers__1__w=(H, H)),
                     TARGET, Policy(), "t")
    src = source(embed__weight=(100, H), layers__0__w=(H, H), layers__1__w=(H, H))
    src["score.weight"] = ((2, H), SET)  # another label count: never "grown"
    with pytest.raises(ConfigError, match="score.weight"):
        plan_mapping(src, TARGET, Policy(), "t")


def test_an_added_layer_keeps_the_new_values_and_is_reported():
    m = plan_mapping(source(embed__weight=(100, H), layers__0__w=(H, H)), TARGET, Policy(), "t")
    assert m.kept == ["layers.1.w"]
    assert m.report()["kept_new_values"] == ["layers.1.w"]


def test_strict_refuses_a_tensor_without_a_place_and_names_it():
    src = source(embed__weight=(100, H), layers__0__w=(H, H), layers__1__w=(H, H),
                 layers__2__w=(H, H))
    with pytest.raises(ConfigError, match=r"1 bundle tensor.*layers\.2\.w.*--allow-partial"):
        plan_mapping(src, TARGET, Policy(), "t")
    m = plan_mapping(src, TARGET, Policy(allow_partial=True), "t")
    assert list(m.dropped) == ["layers.2.w"] and len(m.moves) == 4


def test_renamed_modules_through_the_name_map():
    src = source(embed__weight=(100, H), blocks__0__w=(H, H), blocks__1__w=(H, H))
    with pytest.raises(ConfigError, match="blocks.0.w"):
        plan_mapping(src, TARGET, Policy(), "t")
    m = plan_mapping(src, TARGET, Policy(parse_name_map([r"^blocks\.=layers."], "t")), "t")
    assert moves(m)["blocks.1.w"] == ("layers.1.w", ADD)
    assert m.renamed == {"blocks.0.w": "layers.0.w", "blocks.1.w": "layers.1.w"}


def test_bad_name_map_is_a_config_error():
    with pytest.raises(ConfigError, match="REGEX=REPLACEMENT"):
        parse_name_map(["nothing"], "t")
    with pytest.raises(ConfigError, match="bad regex"):
        parse_name_map(["(=x"], "t")


def test_tied_weights_are_applied_once():
    model = torch.nn.Module()
    model.embed = torch.nn.Embedding(10, 4)
    model.head = torch.nn.Linear(4, 10, bias=False)
    model.head.weight = model.embed.weight
    tensors, aliases = mapping_targets(model, peft=False)
    assert aliases == {"head.weight": "embed.weight"}
    src = {"embed.weight": ((10, 4), ADD), "head.weight": ((10, 4), ADD)}
    m = plan_mapping(src, {k: tuple(v.shape) for k, v in tensors.items()}, Policy(), "t", aliases)
    assert len(m.moves) == 1 and m.tied == {"head.weight": "embed.weight"}
    before = model.embed.weight.detach().clone()
    apply_mapping(tensors, m, lambda name: torch.ones(10, 4))
    assert torch.equal(model.embed.weight.detach(), before + 1)  # once, not twice


def test_apply_adds_rows_and_sets():
    tensors = {"e": torch.zeros(5, 2), "s": torch.zeros(2, 2)}
    m = plan_mapping({"e": ((3, 2), ADD), "s": ((2, 2), SET)},
                     {"e": (5, 2), "s": (2, 2)}, Policy(), "t")
    apply_mapping(tensors, m, lambda name: torch.full((3, 2) if name == "e" else (2, 2), 2.0))
    assert tensors["e"][:3].eq(2).all() and tensors["e"][3:].eq(0).all()
    assert tensors["s"].eq(2).all()


def test_peft_saved_names():
    assert peft_saved_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight") \
        == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert peft_saved_name("base_model.model.score.modules_to_save.default.weight") \
        == "base_model.model.score.weight"


def test_transplant_applies_a_peft_adapter_as_peft_itself_does(tmp_path):
    """The one base + bundle -> model path, in process on a tiny base and a plain PEFT adapter."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
    )

    from rtune_ds.artifacts.bundle import open_old_weights
    from rtune_ds.recycling.transplant import transplant

    labels = ["a", "b", "c"]
    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(tmp_path / "base"))  # a base has no task head

    def classifier():
        return LlamaForSequenceClassification.from_pretrained(
            str(tmp_path / "base"), num_labels=3, pad_token_id=0, dtype=torch.float32)

    adapter = get_peft_model(classifier(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                      task_type="SEQ_CLS"))
    with torch.no_grad():
        for p in adapter.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    adapter.save_pretrained(str(tmp_path / "adapter"))

    old = open_old_weights(tmp_path / "adapter", labels, "t")
    got = transplant(old, tmp_path / "base", labels=labels, pad_token_id=0, where="t")
    assert got.head == ["score.weight"] and len(got.mapping.moves) == len(old.sources)
    want = PeftModel.from_pretrained(classifier(), str(tmp_path / "adapter")).eval()
    ids = torch.randint(1, 40, (2, 7))
    with torch.no_grad():
        assert torch.equal(got.model.eval()(input_ids=ids).logits, want(input_ids=ids).logits)


def test_the_bundle_format_knows_nothing_of_recycling():
    import ast
    from pathlib import Path

    import rtune_ds.artifacts.bundle as bundle

    tree = ast.parse(Path(bundle.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m.startswith("rtune_ds.recycling") for m in imported), imported
