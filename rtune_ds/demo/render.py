"""The demo's report: OUT/report.json (every number), OUT/report.md (tables and findings) and the
PNG plots beside them (results, convergence, pretraining, connectivity, similarity). Every file
goes through rtune_ds.io, so a reader never sees half of one."""
from __future__ import annotations

import json
from pathlib import Path

from rtune_ds.demo.plan import METHODS, NEW_TASK, TASKS
from rtune_ds.demo.results import REGIME_LABEL, dev_curve
from rtune_ds.io import pyplot, save_figure, save_json, save_text
from rtune_ds.report import markdown_table


def write_report(report: dict, logs: dict[str, list[dict]], conn: dict, sim: dict,
                 out: Path) -> dict:
    """The plots (their names go into the report), then report.json and report.md."""
    report["plots"] = plots(report, logs, conn, sim, out)
    save_json(report, out / "report.json")
    save_text(markdown(report), out / "report.md")
    return report


# ---------------------------------------------------------------- markdown

def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def markdown(report: dict) -> str:
    b, base = report["budget"], report["base"]
    t = b["tune"]
    what = (f"v0 = `{base.get('origin', base['path'])}` as released (`{base['package']}` "
            f"{base['version']}, {base['licence']})" if base["source"] == "released" else
            f"v0 = `{base['path']}` (--base-dir)" if base["source"] == "--base-dir" else
            f"v0 = preset `{base['preset']}` pretrained here")
    lines = [
        f"# rtune demo ({report['profile']})", "",
        f"{what}; {report['precision']['chosen']} ({report['precision']['why']}), "
        f"{report['nproc']} ranks on {report['cpu']}, DeepSpeed `{report['ds_config']}`; "
        f"wall time {report['wall_time_s']:.0f} s ({len(report['jobs'])} jobs, "
        f"{sum(1 for x in report['jobs'] if x['reused'])} reused). Every number below is read "
        "from the run directories under `runs/` (TensorBoard: `tensorboard --logdir runs`); the "
        "sha256 of every file of v0 is in report.json (`base.sha256`).", ""]
    lines += protocol(report)
    lines += pretraining_table(report["pretraining"])
    lines += ["## Results", "",
              f"Accuracy (dev: the kept best state's; test: scored once with it), mean over "
              f"seeds (± sd), per seed in order of seed. Full data: {report['task_records']} "
              f"records sampled per split; few-shot: {t['few_shot']} per class for train and dev "
              "(seeded), the same test set.", ""]
    lines += markdown_table(
        ["task", "run", "dev acc", "test acc (mean ± sd)", "test per seed", "majority"],
        ([r["task"], r["run"], fmt(r["dev_mean"]),
          fmt(r["test_mean"]) + (f" ± {fmt(r['test_std'])}" if len(r["test_per_seed"]) > 1
                                 else ""),
          " / ".join(fmt(x) for x in r["test_per_seed"]), fmt(r["majority"])]
         for r in report["table"]))
    lines += compat_table(report["compat_curve"])
    lines += convergence_table(report["convergence"])
    lines += ["", "## Findings", ""]
    for key, f in report["findings"].items():
        lines += [f"### {key.replace('_', ' ')}: **{f['reproduced']}**", "",
                  f"- claim: {f['claim']}", f"- criterion: {f['criterion']}",
                  f"- numbers: `{json.dumps(f['evidence'], default=str)}`", ""]
    missing = [k for k, f in report["findings"].items() if f["reproduced"] != "yes"]
    lines += ["**Did not reproduce here (fully):** " + (", ".join(missing) or "none") + ".", ""]
    lines += phase_table(report["phases"])
    lines += ["## Plots", "", *(f"![{name}]({name})" for name in report["plots"]), ""]
    return "\n".join(lines)


def protocol(report: dict) -> list[str]:
    """The fair protocol as run: the LR grid and its choice, early stopping, seeds."""
    t, lrs = report["budget"]["tune"], report["chosen_lr"]
    lines = ["## Protocol", "",
             f"- LR: the vanilla baseline (plain fine-tuning of v1, full FT, seed 1) is tuned on "
             f"dev over {', '.join(f'{x:g}' for x in t['lr_grid'])} per regime; every recycled "
             "arm (init, distill, init+distill) and the v0 runs use the LR chosen for their "
             f"regime: full data {lrs['full']:g}, few-shot {lrs['few']:g} (the LoRA bundle: "
             f"{t['lora_lr']:g}, fixed). The random-init control uses the full-data LR too, "
             "chosen for pretrained weights: it favours v0 in that control.",
             *(f"- {REGIME_LABEL[r]}: evaluate dev every {t[r]['eval_every']} steps, stop when dev "
               f"accuracy has not improved for {t[r]['patience']} evaluations (cap "
               f"{t[r]['max_steps']} steps), keep the best dev state, score test there once."
               for r in ("full", "few")),
             f"- seeds: {report['seeds']} per arm and regime (the seed draws the head, the data "
             "order and the few-shot sample); the controls on random init: seed 1.", ""]
    lines += markdown_table(
        ["regime", "LR", "dev acc (seed 1)", "best step", "early-stopped"],
        ([REGIME_LABEL[regime], f"{r['lr']:g}" + (" (chosen)" if r["lr"] == lrs[regime] else ""),
          fmt(r["dev"]), r["best_step"], r["early_stopped"]]
         for regime, rows in report["grid"].items() for r in rows))
    return lines + [""]


def pretraining_table(p: dict) -> list[str]:
    """MLM/LM eval losses per domain along the pretraining runs made here."""
    general, computing = "eval/loss/general", "eval/loss/computing"
    rows = []
    if "v0" in p:
        v0 = p["v0"]
        rows.append(["v0 (from the preset, untrained at step 0)", v0["steps"], v0["tokens"],
                     f"{fmt((v0['first_eval'] or {}).get(general))} → "
                     f"{fmt(v0['final_eval'].get(general))}", "–"])
    v1 = p["v1"]
    first = v1["first_eval"] or {}
    rows += [[f"v1 at step 0 (v0's weights{', its new head warmed up' if v1['new_head'] else ''})",
              0, 0, fmt(first.get(general)), fmt(first.get(computing))],
             ["v1", f"+{v1['steps']}", f"+{v1['tokens']}", fmt(v1["final_eval"].get(general)),
              fmt(v1["final_eval"].get(computing))]]
    lines = ["## Continual pretraining", "",
             *markdown_table(["run", "steps", "tokens", "eval loss general",
                              "eval loss computing"], rows), ""]
    if v1["new_head"]:
        h = v1["new_head"]
        loss = h.get("warmup_loss") or {}
        lines += [f"v0 has no MLM head: {len(h['initialised'])} tensors initialised ({h['init']}) "
                  f"and trained alone for {h['warmup_steps']} steps at LR {h['warmup_lr']:g} "
                  f"(loss {fmt(loss.get('first'))} → {fmt(loss.get('last'))}) before the "
                  "schedule.", ""]
    if v1["carried_from_parent"]:
        lines += ["Carried from v0 unchanged into v1 (not held by the MLM class): "
                  f"{', '.join(f'`{n}`' for n in v1['carried_from_parent'])}.", ""]
    return lines


def compat_table(curve: dict[str, list[dict]]) -> list[str]:
    """Compat (no training) of the v0 bundles along v1's continual pretraining."""
    points = sorted({p["point"] for rows in curve.values() for p in rows})
    if not points:
        return []
    lines = ["", "## Compatibility along the continual pretraining", "",
             "Dev accuracy of the bundles tuned on v0, applied with no training to v1's weights "
             "at each share of its steps (0%: v0 itself).", ""]
    dev = {tuning: {p["point"]: p["dev"] for p in rows} for tuning, rows in curve.items()}
    return lines + markdown_table(
        ["bundle", *(f"{p:.0%}" for p in points), "majority"],
        ([tuning, *(fmt(dev[tuning].get(p)) for p in points), fmt(rows[0]["majority"])]
         for tuning, rows in curve.items() if rows))


def convergence_table(conv: dict) -> list[str]:
    lines = ["", "## Convergence", "",
             "The first dev evaluation at which each run reaches the converged best dev accuracy "
             "of vanilla (same regime and seed): step / examples / wall time in s (– = never).",
             ""]

    def cell(methods: dict, m: str) -> str:
        hit = methods.get(m)
        return ("n/a" if m not in methods else "–" if hit is None else
                f"{hit['step']} / {hit['examples']} / {fmt(hit['wall_time_s'], 0)}")

    return lines + markdown_table(
        ["regime", "seed", "vanilla best", *METHODS],
        ([REGIME_LABEL[pr["regime"]], pr["seed"], fmt(pr["vanilla_best"]),
          *(cell(pr["methods"], m) for m in METHODS)] for pr in conv["pairs"]))


def phase_table(phases: dict[str, float]) -> list[str]:
    return ["## Wall time per phase", "",
            *markdown_table(["phase", "s"], ([name, fmt(s, 0)] for name, s in phases.items())),
            ""]


# ---------------------------------------------------------------- plots

def plots(report: dict, logs: dict[str, list[dict]], conn: dict, sim: dict,
          out: Path) -> list[str]:
    """Write the PNGs into `out`; their file names, in report order."""
    made = {"results.png": results_plot(report["table"]),
            "convergence.png": convergence_plot(report["convergence"], logs),
            "pretraining.png": pretraining_plot(report["pretraining"]),
            "compat.png": compat_plot(report["compat_curve"])}
    for name, fig in made.items():
        save_figure(fig, out / name)
    names = list(made)
    # the analyses' own figures, drawn again from their JSON by the recipes that drew them (here,
    # not at the top: the recipes' imports start DeepSpeed, which nothing else here needs)
    from rtune_ds.recipes.connectivity import plot_connectivity
    from rtune_ds.recipes.similarity import plot_similarity

    for name, result, plot in (("connectivity.png", conn, plot_connectivity),
                               ("similarity.png", sim, plot_similarity)):
        if result:
            plot(result, out / name)
            names.append(name)
    return names


def results_plot(rows: list[dict]):
    """Test accuracy per table row (bar: mean; dots: seeds), one panel per task."""
    fig, axes = pyplot().subplots(1, len(TASKS), figsize=(13, 5.5), squeeze=False)
    for ax, task in zip(axes[0], TASKS):
        rs = [r for r in rows if r["task"] == task]
        ax.barh(range(len(rs)), [r["test_mean"] for r in rs], color="#8fb3d9")
        for i, r in enumerate(rs):
            ax.plot(r["test_per_seed"], [i] * len(r["test_per_seed"]), "k.", ms=5)
        ax.axvline(rs[0]["majority"] if rs else 0, color="r", ls=":", label="majority class (dev)")
        ax.set_yticks(range(len(rs)))
        ax.set_yticklabels([r["run"] for r in rs], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("test accuracy")
        ax.set_title(task)
        ax.legend(fontsize=7)
    return fig


def convergence_plot(conv: dict, logs: dict[str, list[dict]]):
    """Dev accuracy over steps on v1, one panel per regime, a line per method and seed."""
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4))
    colors = dict(zip(METHODS, ("C0", "C1", "C2", "C3")))
    labelled = set()
    for pr in conv["pairs"]:
        ax = axes[0 if pr["regime"] == "full" else 1]
        for method, name in pr["runs"].items():
            xs = dev_curve(logs[name])
            ax.plot([x for x, _ in xs], [y for _, y in xs], color=colors[method], alpha=0.7,
                    label=None if (pr["regime"], method) in labelled else method)
            labelled.add((pr["regime"], method))
    for ax, regime in zip(axes, ("full", "few")):
        ax.set_title(f"{NEW_TASK} on v1, {REGIME_LABEL[regime]} (a line per seed)")
        ax.set_xlabel("step")
        ax.set_ylabel("dev accuracy")
        ax.legend(fontsize=8)
    return fig


def pretraining_plot(p: dict):
    """LM eval loss per domain over the pretraining runs made here (v1 continues v0)."""
    fig, ax = pyplot().subplots(figsize=(7, 4))
    offset = 0
    for v in (v for v in ("v0", "v1") if v in p):
        for key, style in (("eval/loss/general", "-"), ("eval/loss/computing", "--")):
            pts = [(r["step"] + offset, r[key]) for r in p[v]["evals"] if key in r]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], style, marker="o", ms=3,
                        label=f"{v} {key.rsplit('/', 1)[1]}")
        offset += p[v]["steps"]
    ax.set_xlabel("pretraining step" + (" (v1 continues v0)" if "v0" in p else " of v1"))
    ax.set_ylabel("eval loss")
    ax.legend(fontsize=8)
    return fig


def compat_plot(curve: dict[str, list[dict]]):
    """Compat dev accuracy of each v0 bundle along v1's continual pretraining."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for tuning, rows in curve.items():
        if rows:
            ax.plot([100 * r["point"] for r in rows], [r["dev"] for r in rows], marker="o",
                    label=f"v0 {tuning} bundle")
            ax.axhline(rows[0]["majority"], color="r", ls=":")
    ax.set_xlabel("% of v1's continual-pretraining steps (0: v0)")
    ax.set_ylabel("dev accuracy, no training")
    ax.legend(fontsize=8)
    return fig
