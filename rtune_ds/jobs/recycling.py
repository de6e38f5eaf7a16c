"""The stages of recycling a bundle onto a new base: read and adopt the bundle, plan the mapping
before any compute, build the mapped model, the compat score, and tuning (with the teacher for
distillation). The recipes recycle, compat_curve and recycle_all put them in their order."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from rtune_ds import dist
from rtune_ds.artifacts.bundle import OldWeights, open_old_weights
from rtune_ds.artifacts.lineage import bundle_fingerprint, fingerprint
from rtune_ds.artifacts.run_dir import write_run_files
from rtune_ds.config.load import read_mapping, run_config_from
from rtune_ds.config.schema import RecyclingMethod, RunConfig, TaskType
from rtune_ds.data.corpus import content_hash
from rtune_ds.data.examples import TaskData, column, load_table
from rtune_ds.data.tokenizer import load_tokenizer, tokenizer_hash
from rtune_ds.errors import ConfigError
from rtune_ds.io import save_json
from rtune_ds.jobs import tuning
from rtune_ds.models.hf_config import hidden_size_of, read_hf_config
from rtune_ds.models.zero import weights_digest
from rtune_ds.recycling import transplant
from rtune_ds.recycling.advice import AGREE_AT, label_free_advice
from rtune_ds.recycling.mapping import Mapping, Policy
from rtune_ds.recycling.teacher import build_teacher, teacher_ds_config
from rtune_ds.train.distill import Distiller
from rtune_ds.train.engine import TrainResult
from rtune_ds.train.inference import agreement, class_logits, frozen_engine, next_token_top_k
from rtune_ds.train.monitor import Monitor
from rtune_ds.train.teacher_cache import (
    TopK,
    cached_outputs,
    class_logits_layout,
    default_dir,
    inputs_digest,
    target_offsets,
    targets_digest,
    top_k_layout,
)

SPLITS = ("train", "dev", "test")  # the task keys naming labeled data files


@dataclass
class Teacher:
    base: str  # the old base directory
    hidden_layers: list[int]  # hidden_states indices paired for the hidden-state term


@dataclass
class Recycling:
    method: RecyclingMethod
    old: OldWeights
    mapping: Mapping | None  # None for distill (the student does not start from the bundle)
    plan: tuning.Plan
    teacher: Teacher | None = None


@dataclass
class Started:
    """What steps 2-3 hand the last step: the task data and the student model."""
    tokenizer: object
    data: TaskData
    run_dir: Path
    model: torch.nn.Module
    head: list[str]  # the task head's tensor names


def task_labels(cfg: RunConfig, where: str) -> list[str] | None:
    """The label names of the run's task data (task.labels, else the sorted train labels)."""
    k = cfg.task
    if k.type != TaskType.CLASSIFICATION:
        return None
    if k.labels or k.train is None:  # label-free: the bundle's own labels
        return list(k.labels) if k.labels else None
    table = load_table(k.train, "task.train", where)
    return sorted({str(v) for v in column(table, k.label_field, "task.label_field", k.train,
                                          where)})


def adopt_bundle(cfg: RunConfig, old: OldWeights, where: str) -> None:
    """The run tunes what the bundle tuned: its task type, labels and method (with its adapter's
    target modules, recorded in the new bundle)."""
    if cfg.task.type != old.task_type:
        raise ConfigError(f"{where}: key 'task.type': '{cfg.task.type}', but the bundle "
                          f"{old.path} was tuned for '{old.task_type}'")
    if old.labels is not None:
        if cfg.task.labels is not None and list(cfg.task.labels) != list(old.labels):
            raise ConfigError(f"{where}: key 'task.labels': {cfg.task.labels} differ from the "
                              f"bundle's labels {old.labels} (names and order)")
        cfg.task.labels = list(old.labels)
    cfg.tuning.method = old.method
    if old.kind == "peft":
        adapter = json.loads((old.adapter_dir / "adapter_config.json").read_text())
        settings = getattr(cfg.tuning, old.method)
        if isinstance(adapter.get("target_modules"), list):
            settings.target_modules = sorted(adapter["target_modules"])
        if old.method == "lora":
            settings.r, settings.alpha = adapter["r"], float(adapter["lora_alpha"])
            settings.dropout = float(adapter.get("lora_dropout", 0.0))
        elif isinstance(adapter.get("feedforward_modules"), list):
            settings.feedforward_modules = sorted(adapter["feedforward_modules"])


def check_new_base(old: OldWeights, base: str, force: bool, where: str) -> None:
    same = (fingerprint(base) == old.base.get("fingerprint")
            or (old.base.get("path") is not None
                and Path(old.base["path"]).resolve() == Path(base).resolve()))
    if same and not force:
        raise ConfigError(f"{where}: key 'model.path': {base} is the base the bundle {old.path} "
                          "was tuned on; recycling needs another version (--force-same-base to "
                          "do it anyway)")


def check_teacher(cfg: RunConfig, old: OldWeights, old_base: str | None, where: str) -> Teacher:
    """The teacher is the old base + the bundle: the base must be the one the bundle was tuned on,
    read the student's token ids, and (for the hidden-state term) have layers to pair."""
    old_base = old_base or old.base.get("path")
    if not old_base or not Path(old_base, "config.json").is_file():
        raise ConfigError(f"{where}: --old-base: distillation needs the base the bundle was tuned "
                          f"on as the teacher's; {old_base!r} is not a model directory")
    want = old.base.get("fingerprint")
    if want and fingerprint(old_base) != want:
        raise ConfigError(f"{where}: --old-base {old_base}: not the base the bundle was tuned on "
                          f"(fingerprint {fingerprint(old_base)}, bundle: {want})")
    teacher_tok = tokenizer_hash(load_tokenizer(old_base))
    student_tok = tokenizer_hash(load_tokenizer(cfg.model.tokenizer or cfg.model.path))
    if teacher_tok != student_tok:
        raise ConfigError(f"{where}: --old-base {old_base}: the teacher's tokenizer (vocabulary) "
                          f"differs from the student's ({cfg.model.tokenizer or cfg.model.path}); "
                          "the teacher could not read the student's token ids")
    old_cfg, new_cfg = read_hf_config(old_base), read_hf_config(cfg.model.path)
    if old.task_type == "lm" and old_cfg.get("vocab_size") != new_cfg.get("vocab_size"):
        raise ConfigError(f"{where}: --old-base {old_base}: the teacher predicts "
                          f"{old_cfg.get('vocab_size')} tokens, the student "
                          f"{new_cfg.get('vocab_size')}: their distributions cannot be compared")
    depths = (old_cfg.get("num_hidden_layers"), new_cfg.get("num_hidden_layers"))
    layers = cfg.distill.hidden_layers
    if cfg.distill.beta > 0 and layers is None:
        if depths[0] != depths[1]:
            raise ConfigError(f"{where}: key 'distill.hidden_layers': teacher and student have "
                              f"{depths[0]} and {depths[1]} layers; name the hidden_states "
                              "indices to pair")
        layers = list(range(1, depths[0] + 1))
    if cfg.distill.beta > 0 and max(layers) > min(depths):
        raise ConfigError(f"{where}: key 'distill.hidden_layers': index {max(layers)} is past "
                          f"the last layer ({min(depths)})")
    return Teacher(old_base, layers or [])


def bundle_dirs(root: str | Path) -> list[Path]:
    """The bundle directories (rtune bundles and plain PEFT adapters) in a library."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--bundles {root}: not a directory")
    found = sorted(d for d in root.iterdir()
                   if (d / "bundle.json").is_file() or (d / "adapter_config.json").is_file())
    if not found:
        raise ConfigError(f"--bundles {root}: no bundle directories (with bundle.json or "
                          "adapter_config.json) in it")
    return found


def bundle_job_config(bundle: Path, config: str | None, overrides: list[str], run_dir: Path,
                      base: str, unlabeled: str | None = None) -> tuple[RunConfig, str]:
    """The job for `bundle`: --config if given, else the config the bundle was tuned
    with (its lineage.json), with run_dir and model.path set. With `unlabeled` inputs, a job
    whose labeled dev set is gone (task.dev unset, or its file missing) becomes label-free on
    them: its missing task files are dropped and distill.unlabeled is set."""
    if config:
        data, where = read_mapping(config), config
    else:
        lineage = bundle / "lineage.json"
        if not lineage.is_file():
            raise ConfigError(f"--bundles: {bundle} records no config (no lineage.json); give "
                              "--config with the task keys")
        data, where = json.loads(lineage.read_text())["config"], str(lineage)
    overrides = [*overrides, f"run_dir={run_dir}", f"model.path={base}"]
    task = data.get("task") or {}
    if unlabeled and not (task.get("dev") and Path(task["dev"]).is_file()):
        data = {**data, "task": {k: v for k, v in task.items() if k not in SPLITS
                                 or (v and Path(v).is_file())}}
        overrides.append(f"distill.unlabeled={unlabeled}")
    return run_config_from(data, overrides, where, "finetune"), where


def prepare(cfg: RunConfig, where: str, resume: str | None, bundle: str,
            method: RecyclingMethod, policy: Policy, force_same_base: bool,
            old_base: str | None = None) -> Recycling:
    """Step 1: everything that needs no compute."""
    label_free = cfg.distill.unlabeled is not None
    if label_free and method == RecyclingMethod.INIT:
        raise ConfigError(f"{where}: key 'distill.unlabeled': init tunes on labels; label-free "
                          "recycling is distill or init+distill (compat: the label-free score)")
    if label_free:
        cfg.distill.alpha = 1.0  # no labels: the KL to the old model is the whole loss
    old = open_old_weights(bundle, task_labels(cfg, where), where)
    adopt_bundle(cfg, old, where)
    p = tuning.plan(cfg, where, resume)
    check_new_base(old, cfg.model.path, force_same_base, where)
    mapping = None
    # distill's student starts fresh; only its teacher holds the bundle
    if method != RecyclingMethod.DISTILL:
        mapping = transplant.plan(old, cfg.model.path, policy,
                                  f"{where}: --bundle {bundle} -> {cfg.model.path}")
    # the old model teaches distillation, and is what label-free compat is compared with
    needs_old_model = method != RecyclingMethod.INIT and (
        method != RecyclingMethod.COMPAT or label_free)
    teacher = check_teacher(cfg, old, old_base, where) if needs_old_model else None
    return Recycling(method, old, mapping, p, teacher)


def start(r: Recycling) -> Started:
    """Steps 2-3: start the ranks, read the task data, record the configs and the mapping report,
    and build the student: the new base with the bundle mapped (a fresh one for distill)."""
    dist.init()
    tokenizer, data = tuning.load_inputs(r.plan)
    if data.label_names != r.old.labels:
        raise ConfigError(f"{r.plan.where}: the task data's labels {data.label_names} are not the "
                          f"bundle's {r.old.labels}")
    run_dir = write_run_files(r.plan.cfg, r.plan.ds_config)
    if dist.is_main() and r.mapping:
        save_json(r.mapping.report(), run_dir / "mapping.json")
    if r.method == RecyclingMethod.DISTILL:
        model, head = tuning.build_model(r.plan, tokenizer, data)
    else:
        cfg = r.plan.cfg
        mapped = transplant.transplant(r.old, cfg.model.path, labels=data.label_names,
                                       pad_token_id=tokenizer.pad_token_id, where=r.plan.where,
                                       mapping=r.mapping, ds_config=r.plan.ds_config,
                                       seed=cfg.seed,
                                       trust_remote_code=cfg.model.trust_remote_code)
        model, head = mapped.model, mapped.head
    return Started(tokenizer, data, run_dir, model, head)


def lineage_of(r: Recycling) -> dict:
    cfg = r.plan.cfg
    return {"recycled": {
        "method": r.method,
        "bundle": {"path": str(r.old.path.resolve()),
                   "fingerprint": bundle_fingerprint(r.old.path), "kind": r.old.kind,
                   "method": r.old.method, "metrics": r.old.metrics},
        "old_base": r.old.base,
        "new_base": {"path": str(Path(cfg.model.path).resolve()),
                     "fingerprint": fingerprint(cfg.model.path)},
        "mapping": r.mapping.report() if r.mapping else None,
        **({"label_free": label_free_record(cfg)} if cfg.distill.unlabeled else {})}}


def label_free_record(cfg: RunConfig) -> dict:
    path = cfg.distill.unlabeled
    return {"inputs": {"path": str(Path(path).resolve()), "sha256": content_hash(path)},
            "alpha": cfg.distill.alpha, "weights_kept": "the last (no labels chose them)"}


def live_teacher_why(cfg: RunConfig) -> str | None:
    """Why the teacher runs on every micro-batch instead of being read from the cache, if so."""
    if not cfg.distill.teacher_cache:
        return "distill.teacher_cache is false"
    if cfg.distill.beta > 0:
        return "the hidden-state term (distill.beta > 0) needs the teacher's hidden states"
    if cfg.task.type == TaskType.LM and cfg.distill.top_k is None:
        return ("task.type lm: the exact KL needs the teacher's whole vocabulary (distill.top_k "
                "caches a bounded table instead)")
    return None


def top_k_of(cfg: RunConfig, teacher_base: str) -> int:
    """The k of an LM teacher's bounded table: distill.top_k, at most the vocabulary."""
    return min(cfg.distill.top_k, read_hf_config(teacher_base)["vocab_size"])


def outputs_kept(cfg: RunConfig, data: TaskData, teacher_base: str) -> dict:
    """The key's part for what the cache keeps of the teacher's outputs: the class logits of the
    labels in order; for lm, the top k at the split's target positions (which are targets: the
    table's rows) and T, on which logsumexp(z/T) depends."""
    if cfg.task.type == TaskType.CLASSIFICATION:
        return {"labels": data.label_names}
    return {"top_k": top_k_of(cfg, teacher_base), "temperature": cfg.distill.temperature,
            "targets": targets_digest(data.splits["train"].labels)}


def teacher_cache_parts(r: Recycling, tokenizer, data: TaskData, ds_config: dict) -> dict:
    """What the teacher's outputs over the train split depend on: the teacher (its base's and
    bundle's content; build_teacher makes it from these alone), the tokenised inputs, the outputs
    kept, the tokenizer, the teacher's precision and the code that runs it."""
    import peft
    import transformers

    cfg = r.plan.cfg
    return {"teacher": {"base": fingerprint(r.teacher.base),
                        "bundle": bundle_fingerprint(r.old.path)},
            "inputs": inputs_digest(data.splits["train"]), "task_type": cfg.task.type,
            **outputs_kept(cfg, data, r.teacher.base), "max_len": cfg.task.max_len,
            "tokenizer": tokenizer_hash(tokenizer),
            "precision": "bf16" if ds_config.get("bf16", {}).get("enabled") is True else "fp32",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "peft": peft.__version__}}


def frozen_record(teacher, digest_before: str) -> dict:
    """The teacher's weights before and after its forwards, and that none had a gradient (all
    ranks call)."""
    params = list(teacher.module.parameters())
    return {"weights_digest_before": digest_before,
            "weights_digest_after": weights_digest(teacher),
            "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
            "parameters_with_grad": sum(p.grad is not None for p in params),
            "zero_stage": teacher.zero_optimization_stage()}


# A bounded LM table whose top k leave more of the teacher's tempered mass than this outside gives
# a KL far below the full one (SmolLM2-135M at T = 2: 80% outside the top 64, the KL 75% lower)
LOOSE_BOUND = 0.25


def warn_if_loose(cache: dict) -> None:
    outside = cache.get("mean_mass_outside_top_k", 0.0)
    if outside > LOOSE_BOUND and dist.is_main():
        warnings.warn(f"teacher cache: the teacher's top {cache['top_k']} tokens leave "
                      f"{outside:.0%} of its tempered mass (T = {cache['temperature']}) outside, "
                      "on average; the KL on them plus one rest bucket is a loose lower bound "
                      "of the full KL (raise distill.top_k, lower distill.temperature, or "
                      "distill.teacher_cache=false for the exact KL)")


def cache_plan(cfg: RunConfig, data: TaskData, teacher_base: str):
    """What the teacher cache keeps for the run's task: (its layout, how a teacher's forwards over
    the train split make it, with the summary the record keeps, and what the Distiller looks up
    in it). Classification: the class logits; lm: the top-k table and the mean tempered mass its
    top k leave out over the target positions (from the full logits)."""
    train, micro = data.splits["train"], cfg.train.micro_batch_size
    if cfg.task.type == TaskType.CLASSIFICATION:
        labels = len(data.label_names)
        return (class_logits_layout(len(train), labels),
                lambda teacher: ({"logits": class_logits(teacher, train, micro, labels)}, {}),
                lambda tensors: tensors["logits"])
    k, temperature = top_k_of(cfg, teacher_base), cfg.distill.temperature
    offsets = target_offsets(train.labels)

    def outputs(teacher) -> tuple[dict[str, torch.Tensor], dict]:
        table, outside = next_token_top_k(teacher, train, micro, k, temperature)
        return table, {"top_k": k, "vocab_size": read_hf_config(teacher_base)["vocab_size"],
                       "temperature": temperature, "target_positions": len(outside),
                       "mean_mass_outside_top_k": outside.double().mean().item()}

    return (top_k_layout(int(offsets[-1]), k), outputs,
            lambda tensors: TopK(**tensors, offsets=offsets))


def distiller(r: Recycling, tokenizer, data: TaskData) -> tuple[Distiller, dict]:
    """The distillation loss and the record of its teacher (for run_dir/teacher.json). From the
    teacher cache: on a hit no teacher is built; on a miss it runs over the train split once
    and is freed. Otherwise the teacher runs live (`weights_digest_before` recorded now)."""
    cfg, p = r.plan.cfg, r.plan
    ds_config = teacher_ds_config(cfg, dist.world_size(), p.grad_accum, p.schedule.peak_lr,
                                  hidden_size_of(r.teacher.base))

    def build():
        return build_teacher(r.old, r.teacher.base, data.label_names, tokenizer.pad_token_id,
                             ds_config)

    why = live_teacher_why(cfg)
    if why:
        teacher = build()
        return (Distiller(teacher, cfg.distill, cfg.task.type, r.teacher.hidden_layers),
                {"cache": {"status": "off", "why": why},
                 "weights_digest_before": weights_digest(teacher)})
    layout, outputs, lookup = cache_plan(cfg, data, r.teacher.base)
    ran = {}

    def compute() -> tuple[dict[str, torch.Tensor], dict]:
        teacher = build()
        before = weights_digest(teacher)
        found = outputs(teacher)
        ran.update(frozen_record(teacher, before))
        teacher.destroy()
        return found

    tensors, cache = cached_outputs(cfg.distill.teacher_cache_dir or default_dir(),
                                    teacher_cache_parts(r, tokenizer, data, ds_config), layout,
                                    compute)
    warn_if_loose(cache)
    return (Distiller(None, cfg.distill, cfg.task.type, [], cached=lookup(tensors)),
            {"cache": cache, **ran})


def compat_result(r: Recycling, metrics: dict, digest: str | None) -> dict:
    """The record of a compat check: dev/test metrics of the mapped model with no training."""
    return {
        "method": RecyclingMethod.COMPAT,
        **{split: {k.removeprefix("eval/"): v for k, v in metrics[split].items()}
           for split in ("dev", "test") if split in metrics},
        "dev_majority_baseline": metrics.get("dev_majority_baseline"),
        "old_metrics": r.old.metrics,
        "weights_digest": digest,
        **lineage_of(r)["recycled"]}


def record_compat(result: dict, run_dir: Path) -> None:
    """run_dir/compat.json and TensorBoard (step 0); rank 0 writes."""
    if dist.is_main():
        monitor = Monitor(run_dir, 0, 0)
        monitor.log(0, {f"compat/{split}/{k}": v for split in ("dev", "test") if split in result
                        for k, v in result[split].items()})
        monitor.close()
        save_json(result, run_dir / "compat.json")


def label_free_compat(r: Recycling, tokenizer, data: TaskData, student,
                      agree_at: float = AGREE_AT) -> dict:
    """How closely `student` (the bundle on the new base) follows the old model over the
    unlabeled inputs (no label read), and the keep / re-tune advice drawn from it."""
    cfg, p = r.plan.cfg, r.plan
    ds_config = teacher_ds_config(cfg, dist.world_size(), p.grad_accum, p.schedule.peak_lr,
                                  hidden_size_of(r.teacher.base))
    teacher = build_teacher(r.old, r.teacher.base, data.label_names, tokenizer.pad_token_id,
                            ds_config)
    labels = len(data.label_names) if data.label_names else None
    score = agreement(teacher, student, data.splits["train"], cfg.train.micro_batch_size, labels)
    teacher.destroy()
    return {**score, **label_free_advice(score["agreement"], agree_at), **label_free_record(cfg)}


def compat(r: Recycling, s: Started) -> dict:
    """Step 4 of compat: score the mapped model with no training: run_dir/compat.json and
    TensorBoard (step 0)."""
    engine = frozen_engine(s.model, r.plan.ds_config)
    metrics = tuning.score(r.plan, engine.module, s.data, s.tokenizer)
    result = compat_result(r, metrics, weights_digest(engine))
    if r.teacher:
        result["label_free"] = label_free_compat(r, s.tokenizer, s.data, engine.module)
    record_compat(result, s.run_dir)
    dist.barrier()
    return result


def tune(r: Recycling, s: Started, command: str) -> TrainResult:
    """Step 4 of the tuning methods: the one loop from the student's state (with the teacher for
    distill), then the new bundle in run_dir/final, its lineage naming the old bundle and both
    bases (and how the teacher cache served); with a teacher, run_dir/teacher.json (all ranks
    call)."""
    loss, teacher = distiller(r, s.tokenizer, s.data) if r.teacher else (None, None)
    result = tuning.train(r.plan, s.model, s.tokenizer, s.data, loss)
    if loss and loss.teacher is not None:  # a live teacher: unchanged by training?
        teacher.update(frozen_record(loss.teacher, teacher["weights_digest_before"]))
    lineage = lineage_of(r)
    if teacher:
        lineage["recycled"]["teacher_cache"] = teacher["cache"]
    if result.finished:
        tuning.finish(r.plan, result, s.tokenizer, s.data, s.head, command, lineage)
    if teacher:
        if dist.is_main():
            save_json(teacher, s.run_dir / "teacher.json")
        dist.barrier()
    return result
