"""PEFT adapters (LoRA, IA3): resolving target modules and wrapping a task model."""
from __future__ import annotations

import torch

from rtune_ds.config.schema import TaskType, TuningMethod
from rtune_ds.errors import ConfigError


def resolve_peft_targets(tuning, model_type: str, names: list[str], where: str) -> dict:
    """The PEFT method's target module lists, defaults filled from peft's per-architecture table;
    every entry must name modules of the model (as peft matches them: the full name or its tail)."""
    from peft.utils import constants

    method = tuning.method
    if method == TuningMethod.FULL:
        return {}
    settings = getattr(tuning, method)
    table = {TuningMethod.LORA: constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
             TuningMethod.IA3: constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING}[method]
    out = {"target_modules": settings.target_modules or table.get(model_type)}
    if out["target_modules"] is None:
        raise ConfigError(f"{where}: key 'tuning.{method}.target_modules': peft has no default for "
                          f"'{model_type}' models; name the modules")
    if method == TuningMethod.IA3:
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


def wrap_peft(model: torch.nn.Module, method: str, task_type: str, targets: dict, tuning,
              seed: int):
    """A PeftModel: LoRA or IA3 on `targets`; a classifier's head is trained and saved with it."""
    from peft import IA3Config, LoraConfig, get_peft_model

    peft_task = "SEQ_CLS" if task_type == TaskType.CLASSIFICATION else "CAUSAL_LM"
    if method == TuningMethod.LORA:
        config = LoraConfig(r=tuning.lora.r, lora_alpha=tuning.lora.alpha,
                            lora_dropout=tuning.lora.dropout, task_type=peft_task, **targets)
    else:
        config = IA3Config(task_type=peft_task, **targets)
    torch.manual_seed(seed)  # adapter init depends on the seed only
    return get_peft_model(model, config)

