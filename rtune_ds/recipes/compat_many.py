"""Many compatibility checks, one after another in this process (each is `rtune recycle --method
compat`, on every rank):

- `rtune recycle-all`: every bundle in a directory mapped onto one new base and scored with no
  training; a table (markdown + JSON) ranks them by how much of their old score they keep, so a
  team sees which adapters survive the upgrade and which need tuning;
- `rtune analyze compat`: one bundle scored on each of a series of bases (say the exports of a
  continual-pretraining run), as a curve (JSON, PNG, TensorBoard).
"""
from __future__ import annotations

import json
from pathlib import Path

from rtune_ds import dist
from rtune_ds.config.load import read_mapping, run_config_from
from rtune_ds.config.schema import RunConfig
from rtune_ds.errors import ConfigError
from rtune_ds.io import pyplot, save_figure, save_json, save_text
from rtune_ds.jobs import recycling
from rtune_ds.recycling.mapping import Policy
from rtune_ds.train.monitor import Monitor

SURVIVES = 0.9  # keeps at least this fraction of its score on the old base: no tuning needed


def bundle_dirs(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--bundles {root}: not a directory")
    found = sorted(d for d in root.iterdir()
                   if (d / "bundle.json").is_file() or (d / "adapter_config.json").is_file())
    if not found:
        raise ConfigError(f"--bundles {root}: no bundle directories (with bundle.json or "
                          "adapter_config.json) in it")
    return found


def job_config(bundle: Path, config: str | None, overrides: list[str], run_dir: Path,
               base: str) -> tuple[RunConfig, str]:
    """The compat job for `bundle`: --config if given, else the config the bundle was tuned
    with (its lineage.json), with run_dir and model.path set."""
    if config:
        data, where = read_mapping(config), config
    else:
        lineage = bundle / "lineage.json"
        if not lineage.is_file():
            raise ConfigError(f"--bundles: {bundle} records no config (no lineage.json); give "
                              "--config with the task keys")
        data, where = json.loads(lineage.read_text())["config"], str(lineage)
    overrides = [*overrides, f"run_dir={run_dir}", f"model.path={base}"]
    return run_config_from(data, overrides, where, "finetune"), where


def compat_job(cfg: RunConfig, where: str, bundle: str, policy: Policy,
               force_same_base: bool) -> dict:
    """`rtune recycle --method compat` for one bundle: mapped onto the base and scored."""
    r = recycling.prepare(cfg, where, None, bundle, "compat", policy, force_same_base)
    tokenizer, data, run_dir, model, _ = recycling.start(r)
    return recycling.compat(r, model, tokenizer, data, run_dir)


def _score(metrics: dict, task_type: str) -> float | None:
    """The headline number: dev accuracy for classifiers, dev loss for language tasks."""
    key = "accuracy" if task_type == "classification" else "loss"
    return metrics.get(key, metrics.get(f"eval/{key}"))


def base_label(base: str) -> str:
    """'v1/final' rather than 'final'."""
    return "/".join(Path(base).resolve().parts[-2:])


def recycle_all(bundles: str, base: str, config: str | None, overrides: list[str], out: str,
                policy: Policy, command: str, force_same_base: bool = False) -> list[dict]:
    rows = []
    out_dir = Path(out)
    for bundle in bundle_dirs(bundles):
        row = {"bundle": bundle.name, "path": str(bundle.resolve())}
        try:
            cfg, where = job_config(bundle, config, overrides, out_dir / bundle.name, base)
            result = compat_job(cfg, where, str(bundle), policy, force_same_base)
        except ConfigError as err:
            rows.append({**row, "status": "refused", "reason": str(err)})
            continue
        task_type = cfg.task.type
        old, new = _score(result["old_metrics"].get("dev", {}), task_type), _score(result["dev"], task_type)
        kept = None
        if old and new is not None:
            kept = new / old if task_type == "classification" else old / new
        rows.append({**row, "status": "survives" if kept is not None and kept >= SURVIVES
                     else "needs tuning", "task": task_type, "kind": result["bundle"]["kind"],
                     "method": result["bundle"]["method"], "old_dev": old, "compat_dev": new,
                     "compat_test": _score(result.get("test", {}), task_type), "kept": kept,
                     "dev_majority_baseline": result["dev_majority_baseline"],
                     "mapping": {k: len(v) for k, v in result["mapping"].items()
                                 if isinstance(v, (dict, list))}})
    rows.sort(key=lambda r: (r["status"] == "refused", -(r.get("kept") or 0.0)))
    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        save_json({"command": command, "base": str(Path(base).resolve()), "survives_at": SURVIVES,
             "bundles": rows},
                  out_dir / "recycle_all.json")
        save_text(markdown_table(rows, base), out_dir / "recycle_all.md")
        print(markdown_table(rows, base))
    return rows


def markdown_table(rows: list[dict], base: str) -> str:
    def fmt(x):
        return "" if x is None else f"{x:.3f}"

    lines = [f"# Bundles recycled onto {base} (compat: no training)", "",
             f"'kept' = compat dev score / dev score on the old base (for lm tasks: old loss / "
             f"new loss); 'survives' at >= {SURVIVES}.", "",
             "| rank | bundle | status | kind | old dev | compat dev | compat test | kept | "
             "majority |", "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        if r["status"] == "refused":
            lines.append(f"| {i} | {r['bundle']} | refused: {r['reason'][:160]} | | | | | | |")
            continue
        lines.append(f"| {i} | {r['bundle']} | {r['status']} | {r['kind']}/{r['method']} | "
                     f"{fmt(r['old_dev'])} | {fmt(r['compat_dev'])} | {fmt(r['compat_test'])} | "
                     f"{fmt(r['kept'])} | {fmt(r['dev_majority_baseline'])} |")
    return "\n".join(lines) + "\n"


def compat_curve(bundle: str, bases: list[str], config: str | None, overrides: list[str],
                 out: str, policy: Policy, command: str) -> list[dict]:
    """Compat of one bundle on each base in order (the first may be the base it was tuned on)."""
    out_dir, points = Path(out), []
    for i, base in enumerate(bases):
        cfg, where = job_config(Path(bundle), config, overrides,
                                out_dir / f"{i:02d}_{base_label(base).replace('/', '_')}", base)
        result = compat_job(cfg, where, bundle, policy, force_same_base=True)
        points.append({"index": i, "base": str(Path(base).resolve()),
                       "dev": result["dev"], "test": result.get("test")})
    if dist.is_main():
        monitor = Monitor(out_dir, 0, len(points))
        for p in points:
            monitor.log(p["index"], {f"compat_curve/dev/{k}": v for k, v in p["dev"].items()})
        monitor.close()
        save_json({"bundle": str(Path(bundle).resolve()), "points": points},
                  out_dir / "compat_curve.json")
        plot_curve(points, out_dir / "compat_curve.png")
        print(f"rtune: compat curve -> {out_dir / 'compat_curve.json'}")
    return points


def plot_curve(points: list[dict], path: Path) -> None:
    plt = pyplot()
    metric = "accuracy" if "accuracy" in points[0]["dev"] else "loss"
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([p["index"] for p in points], [p["dev"][metric] for p in points], marker="o")
    ax.set_xticks([p["index"] for p in points],
                  [base_label(p["base"]) for p in points], rotation=30, ha="right")
    ax.set_ylabel(f"dev {metric} (compat, no training)")
    ax.set_title("Compatibility of one bundle across base versions")
    save_figure(fig, path)
