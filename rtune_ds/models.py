"""Models: named presets of tiny Llama-style causal LMs and RoBERTa-style masked LMs, or any local
Hugging Face directory (no hub)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoModelForMaskedLM, LlamaConfig,
                          LlamaForCausalLM, RobertaConfig, RobertaForMaskedLM)

from transformers.integrations import HfDeepSpeedConfig

from rtune_ds.config import ConfigError

# name: (family, vocab, hidden, layers, heads, intermediate)
PRESETS = {
    "llama-1m": ("llama", 4096, 128, 2, 4, 512),
    "llama-10m": ("llama", 8192, 256, 6, 8, 1024),
    "llama-30m": ("llama", 8192, 384, 10, 6, 1536),
    "llama-100m": ("llama", 16384, 768, 12, 12, 2048),
    "roberta-1m": ("roberta", 4096, 128, 2, 4, 512),
    "roberta-10m": ("roberta", 8192, 256, 6, 8, 1024),
    "roberta-30m": ("roberta", 8192, 384, 10, 6, 1536),
    "roberta-100m": ("roberta", 16384, 768, 12, 12, 2048),
}
FAMILY_OBJECTIVE = {"llama": "clm", "roberta": "mlm"}


def preset_vocab_size(name: str) -> int:
    return PRESETS[name][1]


def preset_hidden_size(name: str) -> int:
    return PRESETS[name][2]


def preset_objective(name: str) -> str:
    return FAMILY_OBJECTIVE[PRESETS[name][0]]


def build_preset(name: str, tokenizer, seq_len: int, seed: int) -> torch.nn.Module:
    family, _, hidden, layers, heads, inter = PRESETS[name]
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, intermediate_size=inter,
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    if family == "llama":
        config = LlamaConfig(**common, num_key_value_heads=heads, tie_word_embeddings=True,
                             max_position_embeddings=max(seq_len, 256))
        return LlamaForCausalLM(config)
    # no dropout: pretraining at this scale does not need it, and resumes stay exact
    config = RobertaConfig(**common, max_position_embeddings=max(seq_len, 256) + 2,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                           type_vocab_size=1)
    return RobertaForMaskedLM(config)


def read_hf_config(path: str | Path) -> dict:
    return json.loads(Path(path, "config.json").read_text())


def objective_of(path: str | Path) -> str:
    """clm or mlm, from the architectures a saved HF config names."""
    archs = " ".join(read_hf_config(path).get("architectures") or [])
    if "MaskedLM" in archs:
        return "mlm"
    if "CausalLM" in archs:
        return "clm"
    raise ConfigError(f"{path}/config.json: cannot tell the objective from architectures "
                      f"{archs!r}; set model.objective")


def hidden_size_of(path: str | Path) -> int:
    cfg = read_hf_config(path)
    return cfg.get("hidden_size") or cfg.get("d_model") or cfg.get("n_embd") or 768


def load_local(path: str | Path, objective: str, ds_config: dict | None = None,
               trust_remote_code: bool = False):
    """Load a local HF directory. Under ZeRO-3 every rank loads only its shard: transformers
    reads the live HfDeepSpeedConfig and builds the model inside zero.Init."""
    auto = AutoModelForCausalLM if objective == "clm" else AutoModelForMaskedLM
    zero3 = ds_config is not None and ds_config.get("zero_optimization", {}).get("stage") == 3
    hf_ds_config = HfDeepSpeedConfig(ds_config) if zero3 else None  # must live during loading
    try:
        return auto.from_pretrained(str(path), dtype=torch.float32,
                                    trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot load a model for objective '{objective}': {err}") from None
    finally:
        del hf_ds_config


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- fine-tuning: task models, their new heads, PEFT wrapping ----------------------------------

def task_auto_class(task_type: str):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if task_type == "classification" else AutoModelForCausalLM


def task_model_kwargs(task_type: str, label_names: list[str] | None, pad_token_id: int | None) -> dict:
    if task_type != "classification":
        return {}
    return {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
            "label2id": {name: i for i, name in enumerate(label_names)},
            "pad_token_id": pad_token_id}


def check_task_architecture(path: str | Path, task_type: str, where: str) -> str:
    """The base's model_type, if transformers has a model of it for the task; else a ConfigError."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)

    model_type = read_hf_config(path).get("model_type")
    archs = " ".join(read_hf_config(path).get("architectures") or [])
    if task_type == "lm" and archs and "CausalLM" not in archs:
        raise ConfigError(f"{where}: key 'model.path': task.type 'lm' tunes a causal-LM base, but "
                          f"the base at {path} is a '{model_type}' {archs}")
    known = (MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES if task_type == "classification"
             else MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    if model_type not in known:
        raise ConfigError(f"{where}: key 'model.path': the base at {path} is a '{model_type}' "
                          f"model, which has no {'sequence-classification' if task_type == 'classification' else 'causal-LM'} "
                          f"form for task.type '{task_type}'")
    return model_type


def meta_task_model(path: str | Path, task_type: str, label_names: list[str] | None = None,
                    peft_config=None) -> torch.nn.Module:
    """The task model of `path` (PEFT-wrapped if a config is given) on the meta device: names and
    shapes without weights or compute."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    kwargs = task_model_kwargs(task_type, label_names or ["a", "b"], config.pad_token_id)
    for key, value in kwargs.items():
        setattr(config, key, value)
    with torch.device("meta"):
        model = task_auto_class(task_type).from_config(config)
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
    return model


def module_names_of(path: str | Path, task_type: str) -> list[str]:
    """Module names of the task model of `path`."""
    return [name for name, _ in meta_task_model(path, task_type).named_modules() if name]


def resolve_peft_targets(tuning, model_type: str, names: list[str], where: str) -> dict:
    """The PEFT method's target module lists, defaults filled from peft's per-architecture table;
    every entry must name modules of the model (as peft matches them: the full name or its tail)."""
    from peft.utils import constants

    method = tuning.method
    if method == "full":
        return {}
    settings = getattr(tuning, method)
    table = {"lora": constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
             "ia3": constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING}[method]
    out = {"target_modules": settings.target_modules or table.get(model_type)}
    if out["target_modules"] is None:
        raise ConfigError(f"{where}: key 'tuning.{method}.target_modules': peft has no default for "
                          f"'{model_type}' models; name the modules")
    if method == "ia3":
        ff_table = constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING
        out["feedforward_modules"] = (settings.feedforward_modules
                                      or [m for m in ff_table.get(model_type, [])
                                          if m in out["target_modules"]])
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    for target in out["target_modules"]:
        if not any(n == target or n.endswith("." + target) for n in names):
            raise ConfigError(f"{where}: key 'tuning.{method}.target_modules': no module "
                              f"'{target}' in this {model_type} model (module names end in: "
                              f"{', '.join(leaves)})")
    return out


def init_head(model: torch.nn.Module, names: list[str], seed: int) -> None:
    """Initialise the new task head (`names`: the parameters the base did not have) from `seed`
    alone, the same way on every rank and ZeRO stage: weights N(0, initializer_range), biases 0."""
    import deepspeed

    std = getattr(model.config, "initializer_range", 0.02)
    g = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    for name in sorted(names):
        param = model.get_parameter(name)
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
            shape = getattr(param, "ds_shape", param.shape)
            value = (torch.zeros(shape) if name.endswith("bias")
                     else torch.randn(shape, generator=g) * std)
            param.data.copy_(value.to(param.dtype))


def load_task_model(path: str | Path, task_type: str, label_names: list[str] | None,
                    pad_token_id: int | None, ds_config: dict | None, seed: int,
                    trust_remote_code: bool = False):
    """(model, head parameter names). Under ZeRO-3 each rank loads only its shard. The head (the
    parameters a classifier adds to the base) is initialised from the seed."""
    zero3 = ds_config is not None and ds_config.get("zero_optimization", {}).get("stage") == 3
    hf_ds_config = HfDeepSpeedConfig(ds_config) if zero3 else None  # must live during loading
    try:
        model, info = task_auto_class(task_type).from_pretrained(
            str(path), dtype=torch.float32, trust_remote_code=trust_remote_code,
            output_loading_info=True, **task_model_kwargs(task_type, label_names, pad_token_id))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot load a model for task.type '{task_type}': {err}") from None
    finally:
        del hf_ds_config
    head = sorted(set(info["missing_keys"]) & {n for n, _ in model.named_parameters()})
    init_head(model, head, seed)
    return model, head


def wrap_peft(model: torch.nn.Module, method: str, task_type: str, targets: dict, tuning,
              seed: int):
    """A PeftModel: LoRA or IA3 on `targets`; a classifier's head is trained and saved with it."""
    from peft import IA3Config, LoraConfig, get_peft_model

    peft_task = "SEQ_CLS" if task_type == "classification" else "CAUSAL_LM"
    if method == "lora":
        config = LoraConfig(r=tuning.lora.r, lora_alpha=tuning.lora.alpha,
                            lora_dropout=tuning.lora.dropout, task_type=peft_task, **targets)
    else:
        config = IA3Config(task_type=peft_task, **targets)
    torch.manual_seed(seed)  # adapter init depends on the seed only
    return get_peft_model(model, config)
