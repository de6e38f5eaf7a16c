"""A frozen model under DeepSpeed, for forwards only (a compatibility check, a distillation
teacher): no optimizer and no gradients. Under ZeRO-3 the parameters stay partitioned (and may be
offloaded to CPU by the config's offload_param) and are gathered layer by layer in the forward."""
from __future__ import annotations

import deepspeed
import torch

INFERENCE_DROPS = ("optimizer", "scheduler", "gradient_clipping")


def inference_config(ds_config: dict) -> dict:
    """`ds_config` without what only training uses. ZeRO-1/2 partition only optimizer state and
    gradients, which a frozen model does not have: they become stage 0."""
    config = {k: v for k, v in ds_config.items() if k not in INFERENCE_DROPS}
    zero = dict(config.get("zero_optimization", {}))
    zero.pop("offload_optimizer", None)
    if zero.get("stage", 0) in (1, 2):
        zero = {"stage": 0}
    config["zero_optimization"] = zero
    return config


def frozen_engine(model: torch.nn.Module, ds_config: dict):
    """The model in eval mode, every parameter frozen, wrapped by a DeepSpeed engine."""
    model.requires_grad_(False)
    model.eval()
    engine, *_ = deepspeed.initialize(model=model, config=inference_config(ds_config))
    engine.eval()
    return engine
