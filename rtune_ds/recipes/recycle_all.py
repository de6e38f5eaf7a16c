"""`rtune recycle-all`: a library of bundles brought to a new base, as a protocol:

1. plan every bundle as `rtune recycle --method compat` would (its own tuning config from its
   lineage.json, or --config; the mapping planned on a meta model): a bundle that cannot be read
   (a corrupt or pickled tensor file) or mapped (another architecture) is listed as refused with
   the reason, and the rest go on. With --unlabeled, a bundle whose labeled dev set is gone is
   planned label-free on those inputs;
2. start the ranks; read each bundle's task data, tokenised once per distinct content;
3. load the new base once per task class (one model for every classifier, whatever its label
   set), take its weight digest, then for each bundle: put it on in place, score dev and test,
   take it off (recycling.library); a label-free bundle is scored against its old model (old base
   + bundle, built for it) on the unlabeled inputs instead; OUT/compat/<bundle>/compat.json as
   `rtune recycle` writes it; the digest after the library must equal the digest before;
4. decide per bundle (recycling.advice): keep, re-tune with init, or init+distill for a few-shot
   task (label-free: keep, or label-free init+distill), with the evidence -> OUT/recycle_all.json
   and .md, ranked;
5. `--then tune`: the recommended recycling of every bundle that needs it, one job after another
   in this launch (OUT/tune/<bundle>); a finished job is skipped and an interrupted one resumes
   from its last checkpoint on a rerun; then a table: old, compat and recycled score, steps.
"""
from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path

from rtune_ds import dist
from rtune_ds.artifacts.run_dir import release_unused_run_dirs, write_run_files
from rtune_ds.config.schema import RecyclingMethod
from rtune_ds.data.corpus import content_hash
from rtune_ds.data.examples import load_task, task_key
from rtune_ds.data.tokenizer import load_tokenizer, tokenizer_hash
from rtune_ds.errors import ConfigError, RunError
from rtune_ds.io import save_json, save_text
from rtune_ds.jobs import recycling, tuning
from rtune_ds.recycling.advice import AGREE_AT, FEW_SHOT_AT, KEEP_AT, advise
from rtune_ds.recycling.library import LoadedBase, adapter_type
from rtune_ds.recycling.mapping import Policy
from rtune_ds.report import markdown_table
from rtune_ds.train.monitor import progress_bar


@dataclass
class Entry:
    row: dict
    r: recycling.Recycling


@dataclass
class Jobs:
    """How every bundle's job is made (for its compat check, and for its re-tuning)."""
    base: str
    config: str | None
    overrides: list[str]
    policy: Policy
    force_same_base: bool
    unlabeled: str | None  # inputs for the bundles whose labeled dev set is gone
    old_base: str | None  # the old model's base, where a bundle does not record it

    def prepare(self, bundle: Path, run_dir: Path, method: str,
                resume: str | None) -> recycling.Recycling:
        cfg, where = recycling.bundle_job_config(bundle, self.config, self.overrides, run_dir,
                                                 self.base, self.unlabeled)
        return recycling.prepare(cfg, where, resume, str(bundle), method, self.policy,
                                 self.force_same_base, self.old_base)


def headline(metrics: dict, task_type: str) -> float | None:
    """The score a bundle is judged by: dev accuracy for classifiers, dev loss for lm tasks."""
    key = "accuracy" if task_type == "classification" else "loss"
    return metrics.get(key, metrics.get(f"eval/{key}"))


def plan_library(bundles: str, jobs: Jobs, out_dir: Path) -> tuple[list[Entry], list[dict]]:
    """Step 1: (the bundles that can be recycled, the refused ones as rows with a reason)."""
    entries, refused = [], []
    for bundle in recycling.bundle_dirs(bundles):
        row = {"bundle": bundle.name, "path": str(bundle.resolve())}
        try:
            r = jobs.prepare(bundle, out_dir / "compat" / bundle.name, RecyclingMethod.COMPAT,
                             None)
        except ConfigError as err:
            refused.append({**row, "status": "refused", "reason": str(err)})
            continue
        entries.append(Entry(row, r))
    return entries, refused


def read_inputs(entries: list[Entry]) -> tuple[dict, list[dict]]:
    """Step 2: bundle name -> (tokenizer, task data), tokenised once per distinct task content;
    a bundle whose data's labels are not its own is refused."""
    tokenizers, tasks, inputs, refused = {}, {}, {}, []
    for e in entries:
        cfg = e.r.plan.cfg
        path = cfg.model.tokenizer or cfg.model.path
        if path not in tokenizers:
            tokenizers[path] = load_tokenizer(path)
        tok = tokenizers[path]
        key = task_key(cfg.task, tokenizer_hash(tok), cfg.seed, cfg.distill.unlabeled)
        if key not in tasks:
            tasks[key] = dist.main_first(lambda: load_task(cfg.task, tok, cfg.seed, e.r.plan.where,
                                                           cfg.distill.unlabeled))
        data = tasks[key]
        if data.label_names != e.r.old.labels:
            refused.append({**e.row, "status": "refused",
                            "reason": f"{e.r.plan.where}: the task data's labels "
                                      f"{data.label_names} are not the bundle's {e.r.old.labels}"})
            continue
        inputs[e.row["bundle"]] = (tok, data)
    return inputs, refused


def load_groups(entries: list[Entry]) -> list[list[Entry]]:
    """The bundles that share one load of the base: one task class and at most one adapter type
    (deltas join the first group of their task class)."""
    groups = []
    for task_type in dict.fromkeys(e.r.old.task_type for e in entries):
        of_task = [e for e in entries if e.r.old.task_type == task_type]
        types = list(dict.fromkeys(filter(None, (adapter_type(e.r.old) for e in of_task)))) or [None]
        for i, kind in enumerate(types):
            groups.append([e for e in of_task if adapter_type(e.r.old) == kind
                           or (i == 0 and adapter_type(e.r.old) is None)])
    return groups


def score_library(entries: list[Entry], inputs: dict, base: str,
                  agree_at: float) -> tuple[list[dict], dict]:
    """Step 3: (a compat result per bundle, the library's loads, digests and timings)."""
    order = sorted(entries, key=lambda e: (e.r.old.task_type, e.r.old.kind, e.r.old.method))
    ds_config = order[0].r.plan.ds_config
    results, stats = {}, {"loads": [], "ds_config_of": order[0].row["bundle"]}
    bar = progress_bar(len(order), "recycle-all")
    for group in load_groups(order):
        task_type = group[0].r.old.task_type
        widest = max((len(e.r.old.labels or []) for e in group), default=0)
        labels = [f"label_{i}" for i in range(widest)] if task_type == "classification" else None
        cfg = group[0].r.plan.cfg
        started = time.perf_counter()
        library = LoadedBase(base, task_type, labels, inputs[group[0].row["bundle"]][0].pad_token_id,
                             ds_config, cfg.seed, [e.r.old for e in group],
                             cfg.model.trust_remote_code)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        before = library.digest()
        digest_s = time.perf_counter() - started
        for e in group:
            tok, data = inputs[e.row["bundle"]]
            run_dir = write_run_files(e.r.plan.cfg, e.r.plan.ds_config)
            t0 = time.perf_counter()
            with library.applied(e.r.old, e.r.mapping) as module:
                t1 = time.perf_counter()
                metrics = tuning.score(e.r.plan, module, data, tok)
                label_free = recycling.label_free_compat(e.r, tok, data, module, agree_at) \
                    if e.r.plan.cfg.distill.unlabeled else None
                t2 = time.perf_counter()
            t3 = time.perf_counter()
            result = recycling.compat_result(e.r, metrics, None)
            if label_free:
                result["label_free"] = label_free
            result["timing_s"] = {"apply": t1 - t0, "score": t2 - t1, "restore": t3 - t2}
            if dist.is_main():
                save_json(e.r.mapping.report(), run_dir / "mapping.json")
            recycling.record_compat(result, run_dir)
            results[e.row["bundle"]] = result
            bar.update()
        after = library.digest()
        stats["loads"].append({"task_type": task_type, "bundles": len(group), "load_s": load_s,
                               "adapter_type": next(filter(None, map(adapter_type, (
                                   e.r.old for e in group))), None),
                               "digest_s": digest_s, "digest_before": before,
                               "digest_after": after, "label_rows": widest or None})
        del library
        gc.collect()
        if before != after:
            raise RunError(f"the base {base} changed while the library was on it (weight digest "
                           f"{before} before, {after} after)")
    bar.close()
    dist.barrier()
    return [results[e.row["bundle"]] for e in entries], stats


def decide(e: Entry, result: dict, data, keep_at: float, few_shot_at: int) -> dict:
    """Step 4: one table row (label-free: the advice drawn from the agreement with the old
    model)."""
    task_type = e.r.old.task_type
    old = headline(result["old_metrics"].get("dev", {}), task_type)
    compat = headline(result.get("dev", {}), task_type)
    if "label_free" in result:
        free = result["label_free"]
        advice = {"decision": free["decision"], "evidence": f"no labeled dev set: "
                  f"{free['evidence']}", "kept_gain": None, "few_shot": None,
                  "agreement": free["agreement"], "mean_kl": free["mean_kl"]}
    else:
        advice = advise(task_type, old, compat, result["dev_majority_baseline"],
                        data.sizes["train"], len(data.label_names) if data.label_names else None,
                        keep_at, few_shot_at)
    return {**e.row, "status": "scored", "task": task_type, "labels": data.label_names,
            "kind": e.r.old.kind, "method": e.r.old.method, "old_dev": old, "compat_dev": compat,
            "compat_test": headline(result.get("test", {}), task_type),
            "dev_majority_baseline": result["dev_majority_baseline"],
            "label_free": "label_free" in result,
            "train_examples": data.sizes["train"], **advice, "timing_s": result["timing_s"],
            "mapping": {k: len(v) for k, v in result["mapping"].items()
                        if isinstance(v, (dict, list))}}


def rank(row: dict) -> tuple:
    """Table order: labeled rows first, by the gain compat keeps (unknown last), then the
    label-free ones by their agreement with the old model."""
    score = row["agreement"] if row["label_free"] else row["kept_gain"]
    return row["label_free"], score is None, -(score or 0.0)


def tune_queue(rows: list[dict], jobs: Jobs, out_dir: Path, command: str) -> list[dict]:
    """Step 5: the recommended recycling of every bundle that needs it, in table order."""
    done = []
    for row in rows:
        if row["status"] != "scored" or row["decision"] == "keep":
            continue
        run_dir = out_dir / "tune" / row["bundle"]
        job = {"bundle": row["bundle"], "method": row["decision"], "run_dir": str(run_dir),
               "old_dev": row["old_dev"], "compat_dev": row["compat_dev"]}
        finished = (run_dir / "summary.json").is_file()  # written after the bundle, last
        if not finished:
            try:
                r = jobs.prepare(Path(row["path"]), run_dir, row["decision"], "auto")
                recycling.tune(r, recycling.start(r), command)
            except ConfigError as err:
                done.append({**job, "status": "refused", "reason": str(err)})
                continue
        summary = json.loads((run_dir / "summary.json").read_text())
        done.append({**job, "status": "finished earlier" if finished else "tuned",
                     "recycled_dev": headline(summary["metrics"].get("dev", {}), row["task"]),
                     "recycled_test": headline(summary["metrics"].get("test", {}), row["task"]),
                     "steps": summary["step"], "best_step": summary["best_step"],
                     "bundle_out": str(run_dir / "final")})
        gc.collect()
    return done


def recycle_all(bundles: str, base: str, config: str | None, overrides: list[str], out: str,
                policy: Policy, command: str, force_same_base: bool = False,
                keep_at: float = KEEP_AT, few_shot_at: int = FEW_SHOT_AT,
                then: str | None = None, unlabeled: str | None = None,
                old_base: str | None = None, agree_at: float = AGREE_AT) -> dict:
    out_dir = Path(out)
    if unlabeled is not None and not Path(unlabeled).is_file():
        raise ConfigError(f"--unlabeled {unlabeled}: file of unlabeled inputs not found")
    if not 0 < agree_at <= 1:
        raise ConfigError(f"--agree-at {agree_at}: must be in (0, 1]")
    clock = [time.perf_counter()]

    def lap() -> float:
        clock.append(time.perf_counter())
        return clock[-1] - clock[-2]

    jobs = Jobs(base, config, overrides, policy, force_same_base, unlabeled, old_base)
    entries, refused = plan_library(bundles, jobs, out_dir)
    phases = {"plan": lap()}
    dist.init()
    inputs, mislabelled = read_inputs(entries)
    entries = [e for e in entries if e.row["bundle"] in inputs]
    refused += mislabelled
    phases["inputs"] = lap()
    results, stats = score_library(entries, inputs, base, agree_at) if entries \
        else ([], {"loads": []})
    phases["score"] = lap()
    rows = [decide(e, res, inputs[e.row["bundle"]][1], keep_at, few_shot_at)
            for e, res in zip(entries, results)]
    rows.sort(key=rank)
    report = {"command": command, "base": str(Path(base).resolve()), "keep_at": keep_at,
              "few_shot_at": few_shot_at, "agree_at": agree_at, "world_size": dist.world_size(),
              "unlabeled": {"path": str(Path(unlabeled).resolve()),
                            "sha256": content_hash(unlabeled)} if unlabeled else None,
              "zero_stage": entries[0].r.plan.ds_config["zero_optimization"]["stage"]
              if entries else None,
              "library": stats, "phases_s": phases, "bundles": rows + refused}
    if then == "tune":
        report["tuned"] = tune_queue(rows, jobs, out_dir, command)
        phases["tune"] = lap()
    release_unused_run_dirs()  # the run dirs of refused bundles: only their lock
    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        save_json(report, out_dir / "recycle_all.json")
        save_text(markdown(report), out_dir / "recycle_all.md")
        print(markdown(report))
    dist.barrier()
    return report


def markdown(report: dict) -> str:
    def fmt(x):
        return "" if x is None else f"{x:.3f}"

    lines = [f"# Bundles recycled onto {report['base']}", "",
             "compat: each bundle applied with no training. 'kept' = the share of its old gain "
             "over the majority baseline that compat keeps (lm tasks: old loss / compat loss); "
             f"keep at >= {report['keep_at']}, else re-tune: init, or init+distill when the task "
             f"has at most {report['few_shot_at']} train examples per label. A bundle with no "
             "labeled dev set (--unlabeled) is judged by how often it agrees with its old model "
             f"on the unlabeled inputs: keep at >= {report['agree_at']}, else label-free "
             "init+distill.", ""]
    lines += markdown_table(
        ["rank", "bundle", "decision", "kind", "old dev", "compat dev", "compat test", "kept",
         "agreement", "majority", "evidence"],
        ([i, r["bundle"], "refused", *[""] * 7, r["reason"][:200]] if r["status"] == "refused"
         else [i, r["bundle"], r["decision"], f"{r['kind']}/{r['method']}", fmt(r["old_dev"]),
               fmt(r["compat_dev"]), fmt(r["compat_test"]), fmt(r["kept_gain"]),
               fmt(r.get("agreement")), fmt(r["dev_majority_baseline"]), r["evidence"]]
         for i, r in enumerate(report["bundles"], 1)))
    if "tuned" in report:
        lines += ["", "## Re-tuned (--then tune)", ""]
        lines += markdown_table(
            ["bundle", "method", "old dev", "compat dev", "recycled dev", "recycled test", "steps",
             "status"],
            ([t["bundle"], t["method"], fmt(t["old_dev"]), fmt(t["compat_dev"]),
              fmt(t.get("recycled_dev")), fmt(t.get("recycled_test")), t.get("steps", ""),
              t["status"] + (": " + t["reason"][:160] if "reason" in t else "")]
             for t in report["tuned"]))
    return "\n".join(lines) + "\n"
