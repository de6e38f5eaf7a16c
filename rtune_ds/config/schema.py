"""The RunConfig schema: one dataclass per section, and one enum per key with a fixed set of
choices (their values are what YAML, JSON and the command line spell)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum, StrEnum


class Schedule(StrEnum):
    COSINE = "cosine"
    RECIPE = "recipe"
    CONSTANT = "constant"


class Objective(StrEnum):
    CLM = "clm"
    MLM = "mlm"


class Init(StrEnum):
    PRETRAINED = "pretrained"
    RANDOM = "random"


class Precision(StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"
    AUTO = "auto"  # bf16 only where the hardware runs it natively (rtune_ds/hardware.py)


class Nonfinite(StrEnum):
    SKIP = "skip"
    STOP = "stop"


class TaskType(StrEnum):
    CLASSIFICATION = "classification"
    LM = "lm"


class TuningMethod(StrEnum):
    FULL = "full"
    LORA = "lora"
    IA3 = "ia3"


class RecyclingMethod(StrEnum):
    """`rtune recycle --method`: see recipes/recycle.py."""
    COMPAT = "compat"
    INIT = "init"
    DISTILL = "distill"
    INIT_DISTILL = "init+distill"


@dataclass
class Source:
    """One corpus of a blend: a text/jsonl/json/parquet file, or a `save_to_disk` directory."""

    path: str
    weight: float = 1.0


@dataclass
class SwitchConfig:
    """A scheduled change of the training blend to `train`, at a step or when the LR falls."""

    train: list[Source] = field(default_factory=list)
    at_step: int | None = None
    lr_fraction: float | None = None  # switch when lr <= lr_fraction * peak lr


@dataclass
class ModelConfig:
    preset: str | None = None
    path: str | None = None
    objective: Objective | None = None  # None: the preset's, or inferred from the HF config
    tokenizer: str | None = None  # a tokenizer dir; None: the model dir's, or trained on data.train
    mlm_probability: float = 0.15
    trust_remote_code: bool = False
    architecture: str | None = None  # the HF model_type model.path must have (llama, roberta, ...)
    init: Init = Init.PRETRAINED  # random: model.path's architecture, weights from the seed
    # pretrain: steps that train only a head the checkpoint lacks (e.g. BERT's MLM head), the
    # rest frozen, before the schedule; None: 10% of train.max_steps (1..100) if one is missing
    head_warmup_steps: int | None = None
    head_warmup_lr: float | None = None  # their constant LR; None: the schedule's peak LR


@dataclass
class DataConfig:
    train: list[Source] = field(default_factory=list)
    eval: list[Source] = field(default_factory=list)
    eval_fraction: float = 0.05  # held-out blocks of each train source when data.eval is empty
    seq_len: int = 128
    text_field: str = "text"
    cache_dir: str | None = None  # tokenised+packed blocks; default ~/.cache/rtune_ds/packed
    switch: SwitchConfig | None = None


@dataclass
class TrainConfig:
    max_steps: int = 100
    micro_batch_size: int = 8
    grad_accum: int = 1
    global_batch_size: int | None = None  # if set, grad_accum is derived from it
    lr: float | None = 1e-3  # peak LR; for schedule=recipe, None means "the parent's min LR"
    schedule: Schedule = Schedule.COSINE
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of the peak
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_max_blocks: int = 256
    save_every: int = 0  # 0: checkpoint only when a launch ends
    stop_after: int | None = None  # end this launch after N steps; the schedule still spans max_steps
    log_every: int = 1
    # fp32 | bf16 | auto: a literal bf16.enabled of the DeepSpeed JSON, else bf16 only where the
    # hardware computes it natively (rtune_ds/hardware.py)
    precision: Precision = Precision.AUTO
    nonfinite: Nonfinite = Nonfinite.STOP  # NaN/Inf loss: stop (exit 3, nothing saved) | skip the update
    patience: int | None = None  # end after this many evals without a better best metric
    # pretrain: write an HF export to run_dir/exports/step-<N>/ at N = round(f * max_steps)
    export_fractions: list[float] = field(default_factory=list)


@dataclass
class TaskConfig:
    """A fine-tuning task: local jsonl/csv/parquet files with text,label or prompt,completion."""

    type: TaskType = TaskType.CLASSIFICATION
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    text_field: str = "text"
    label_field: str = "label"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    labels: list[str] | None = None  # the label set, in order; None: the sorted labels of train
    few_shot: int | None = None  # K examples per class (train and dev), seeded
    max_len: int = 128  # tokens per example (longer ones are cut)
    max_new_tokens: int = 32  # lm: greedy tokens for exact match (at most)
    best_metric: str | None = None  # None: eval/accuracy (classification), eval/loss (lm)


@dataclass
class LoraSettings:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None  # None: peft's default for the architecture


@dataclass
class IA3Settings:
    target_modules: list[str] | None = None  # None: peft's default for the architecture
    feedforward_modules: list[str] | None = None  # a subset of target_modules


@dataclass
class TuningConfig:
    method: TuningMethod = TuningMethod.FULL
    lora: LoraSettings = field(default_factory=LoraSettings)
    ia3: IA3Settings = field(default_factory=IA3Settings)


@dataclass
class DistillConfig:
    """recycle --method distill | init+distill: the old model (old base + old bundle) is a frozen
    teacher; loss = (1−alpha)·CE + alpha·T²·KL(teacher_T ‖ student_T) + beta·hidden-state MSE."""

    alpha: float = 0.5
    temperature: float = 2.0
    beta: float = 0.0  # 0: no hidden-state term
    hidden_layers: list[int] | None = None  # hidden_states indices paired; None: every layer's output
    teacher_deepspeed: str | None = None  # the teacher's own DeepSpeed JSON; None: teacher_offload
    # beta 0: the teacher's outputs over the train split, computed once and looked up per step
    # (train/teacher_cache.py); false: the teacher runs live every step
    teacher_cache: bool = True
    # lm: None, the teacher runs live (the exact KL over the vocabulary); k, the cache keeps the
    # teacher's k largest logits per target position (and the logsumexp of all), and the KL is
    # taken on those k tokens plus one bucket for the rest: a lower bound, tight only at T ~ 1
    top_k: int | None = None
    teacher_cache_dir: str | None = None  # None: $RTUNE_CACHE/teacher (~/.cache/rtune_ds/teacher)
    # label-free recycling: a file of inputs (jsonl/csv/parquet with task.text_field, or .txt, one
    # per line) whose labels, if any, are never read. distill and init+distill train on it with
    # alpha 1 (KL only) and keep their last weights (no labels choose them); compat adds the
    # label-free score (agreement and KL between the old model and the bundle on the new base)
    unlabeled: str | None = None


@dataclass
class RunConfig:
    run_dir: str = ""
    seed: int = 0
    deepspeed: str | None = None  # path of the DeepSpeed JSON; None: ds_configs/zero0.json
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: TaskConfig = field(default_factory=TaskConfig)  # finetune only
    tuning: TuningConfig = field(default_factory=TuningConfig)  # finetune only
    distill: DistillConfig = field(default_factory=DistillConfig)  # recycle distill methods only

    def to_dict(self) -> dict:
        """Plain data (enum choices as their values), as a YAML or JSON file spells it."""
        return dataclasses.asdict(self, dict_factory=lambda items: {
            k: v.value if isinstance(v, Enum) else v for k, v in items})


# model.preset: name -> (family, vocab, hidden, layers, heads, intermediate)
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

