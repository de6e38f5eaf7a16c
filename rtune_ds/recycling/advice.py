"""What to do with a bundle after its compatibility check on a new base: keep it as it is, re-tune
it starting from it (init), or, for a few-shot task, re-tune with the old model as a teacher as
well (init+distill: the best few-shot arm of the study, README). Pure: tested in-process."""
from __future__ import annotations

from rtune_ds.config.schema import RecyclingMethod

KEEP_AT = 0.9  # keep a bundle whose compat score keeps at least this fraction of its old gain
AGREE_AT = 0.9  # label-free: keep a bundle that agrees with the old model on this share of inputs
FEW_SHOT_AT = 32  # a classification task with at most this many train examples per label
                  # (an lm task: this many examples) is few-shot


def kept_gain(task_type: str, old: float | None, compat: float | None,
              majority: float | None) -> float | None:
    """classification: (compat - majority) / (old - majority), the share of the old score's gain
    over the majority baseline that survives; lm: old loss / compat loss. None if undefined."""
    if old is None or compat is None:
        return None
    if task_type == "classification":
        if majority is None or old <= majority:
            return None
        return (compat - majority) / (old - majority)
    return old / compat if compat > 0 else None


def advise(task_type: str, old: float | None, compat: float | None, majority: float | None,
           train_examples: int, labels: int | None, keep_at: float = KEEP_AT,
           few_shot_at: int = FEW_SHOT_AT) -> dict:
    """{'decision': keep | init | init+distill, 'kept_gain', 'few_shot', 'evidence'}."""
    kept = kept_gain(task_type, old, compat, majority)
    per_label = train_examples / labels if labels else train_examples
    few_shot = per_label <= few_shot_at
    unit = "train examples per label" if labels else "train examples"
    shots = f"{per_label:g} {unit} ({'<=' if few_shot else '>'} {few_shot_at}: " \
            f"{'few-shot' if few_shot else 'not few-shot'})"
    if kept is not None and kept >= keep_at:
        what = "of its gain over the majority baseline" if task_type == "classification" \
            else "of its loss (old / compat)"
        return {"decision": "keep", "kept_gain": kept, "few_shot": few_shot,
                "evidence": f"compat keeps {kept:.3f} {what} (>= {keep_at})"}
    if kept is None:
        why = ("no old score to compare with" if old is None or compat is None else
               "on its old base it did not beat the majority baseline")
    else:
        why = f"compat keeps {kept:.3f} of its old gain (< {keep_at})"
    retune = RecyclingMethod.INIT_DISTILL if few_shot else RecyclingMethod.INIT
    return {"decision": retune, "kept_gain": kept,
            "few_shot": few_shot, "evidence": f"{why}; {shots}"}


def label_free_advice(agreement: float, keep_at: float = AGREE_AT) -> dict:
    """With no labels: keep a bundle whose predictions on the new base agree with the old model's
    on at least `keep_at` of the unlabeled inputs, else re-tune it label-free (init+distill on
    those inputs)."""
    keep = agreement >= keep_at
    return {"decision": "keep" if keep else RecyclingMethod.INIT_DISTILL,
            "evidence": f"agrees with the old model on {agreement:.3f} of the unlabeled inputs "
                        f"({'>=' if keep else '<'} {keep_at})"}
