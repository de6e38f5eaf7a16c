"""The demo's report: OUT/report.json (every number), OUT/report.md (tables and findings) and the
PNG plots beside them (results, convergence, pretraining, connectivity, similarity). Every file
goes through rtune_ds.io, so a reader never sees half of one."""
from __future__ import annotations

import json
from pathlib import Path

from rtune_ds.demo.plan import FEW_METHODS, NEW_TASK, TASKS
from rtune_ds.demo.results import dev_curve
from rtune_ds.io import pyplot, save_figure, save_json, save_text


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
    b = report["budget"]
    lines = [
        f"# rtune demo ({report['profile']})", "",
        f"Model preset `{b['preset']}`, {b['precision']}, {report['nproc']} ranks, DeepSpeed "
        f"`{report['ds_config']}`; {report['seeds']} few-shot seed(s); wall time "
        f"{report['wall_time_s']:.0f} s ({len(report['jobs'])} jobs in one deepspeed launch, "
        f"{sum(1 for x in report['jobs'] if x['reused'])} reused). Every number below is read "
        "from the run directories under `runs/` (TensorBoard: `tensorboard --logdir runs`).", ""]
    lines += pretraining_table(report["pretraining"])
    lines += ["## Results", "",
              "Accuracy (dev: the kept state's; test: scored once with it). Few-shot rows: mean "
              "over seeds, per seed in order of seed.", "",
              "| task | run | dev acc | test acc (mean ± sd) | test per seed | majority |",
              "|---|---|---|---|---|---|"]
    for r in report["table"]:
        per = " / ".join(fmt(x) for x in r["test_per_seed"])
        sd = f" ± {fmt(r['test_std'])}" if len(r["test_per_seed"]) > 1 else ""
        lines.append(f"| {r['task']} | {r['run']} | {fmt(r['dev_mean'])} | "
                     f"{fmt(r['test_mean'])}{sd} | {per} | {fmt(r['majority'])} |")
    c = report["convergence"]
    lines += ["", "## Steps to target", "",
              f"First dev evaluation at which a run reaches {c['fraction']:.0%} of the best dev "
              "accuracy of the vanilla run (plain tuning of v1) of the same data and seed "
              "(– = never).", "",
              "| data | seed | target | " + " | ".join(FEW_METHODS) + " |",
              "|---|---|---|" + "---|" * len(FEW_METHODS)]
    for pr in c["pairs"]:
        cells = [fmt((pr["methods"][m] or {}).get("step")) if m in pr["methods"] else "n/a"
                 for m in FEW_METHODS]
        lines.append(f"| {pr['regime']} | {pr['seed']} | {fmt(pr['vanilla_best'] * c['fraction'])}"
                     " | " + " | ".join(cells) + " |")
    lines += ["", "## The paper's findings at this scale", ""]
    for key, f in report["findings"].items():
        lines += [f"### {key.replace('_', ' ')}: **{f['reproduced']}**", "",
                  f"- claim: {f['claim']}", f"- criterion: {f['criterion']}",
                  f"- numbers: `{json.dumps(f['evidence'], default=str)}`", ""]
    missing = [k for k, f in report["findings"].items() if f["reproduced"] != "yes"]
    lines += ["**Did not reproduce here (fully):** " + (", ".join(missing) or "none") + ".", "",
              "## Plots", "", *(f"![{name}]({name})" for name in report["plots"]), ""]
    return "\n".join(lines)


def pretraining_table(p: dict) -> list[str]:
    """LM eval losses per domain: untrained, v0, v1 (v0's computing loss: v1 at step 0)."""
    v0, v1 = p["v0"], p["v1"]
    first0, first1, final0, final1 = (v0["first_eval"] or {}, v1["first_eval"] or {},
                                      v0["final_eval"], v1["final_eval"])
    general, computing = "eval/loss/general", "eval/loss/computing"
    return ["## Pretraining", "",
            "| model | steps | tokens | eval loss general | eval loss computing |",
            "|---|---|---|---|---|",
            f"| untrained (v0 at step 0) | 0 | 0 | {fmt(first0.get(general))} | – |",
            f"| v0 | {v0['steps']} | {v0['tokens']} | {fmt(final0.get(general))} "
            f"| {fmt(first1.get(computing))} |",
            f"| v1 | +{v1['steps']} | +{v1['tokens']} | {fmt(final1.get(general))} "
            f"| {fmt(final1.get(computing))} |", "",
            "v0's computing loss is v1's evaluation at step 0 (v0's weights).", ""]


# ---------------------------------------------------------------- plots

def plots(report: dict, logs: dict[str, list[dict]], conn: dict, sim: dict,
          out: Path) -> list[str]:
    """Write the PNGs into `out`; their file names, in report order."""
    made = {"results.png": results_plot(report["table"]),
            "convergence.png": convergence_plot(report["convergence"], logs),
            "pretraining.png": pretraining_plot(report["pretraining"])}
    for name, fig in made.items():
        save_figure(fig, out / name)
    names = list(made)
    # the analyses' own figures, drawn again from their JSON by the recipe that drew them (here,
    # not at the top: the recipe's imports start DeepSpeed, which nothing else here needs)
    from rtune_ds.recipes.analyze import plot_connectivity, plot_similarity

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
    """Dev accuracy over steps on v1: full data (vanilla, init), few-shot (a line per seed)."""
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4))
    colors = dict(zip(FEW_METHODS, ("C0", "C1", "C2", "C3")))
    labelled = set()
    for pr in conv["pairs"]:
        full = pr["regime"] == "full"
        ax, style = (axes[0], {"marker": "o", "ms": 3}) if full else (axes[1], {"alpha": 0.7})
        for method, name in pr["runs"].items():
            xs = dev_curve(logs[name])
            ax.plot([x for x, _ in xs], [y for _, y in xs], color=colors[method],
                    label=None if (full, method) in labelled else method, **style)
            labelled.add((full, method))
    axes[0].set_title(f"{NEW_TASK} on v1, full data")
    axes[1].set_title(f"{NEW_TASK} on v1, few-shot (one line per seed)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("dev accuracy")
        ax.legend(fontsize=8)
    return fig


def pretraining_plot(p: dict):
    """LM eval loss per domain over v0's steps, then v1's (v1 continues v0)."""
    fig, ax = pyplot().subplots(figsize=(7, 4))
    offset = 0
    for v in ("v0", "v1"):
        for key, style in (("eval/loss/general", "-"), ("eval/loss/computing", "--")):
            pts = [(r["step"] + offset, r[key]) for r in p[v]["evals"] if key in r]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], style, marker="o", ms=3,
                        label=f"{v} {key.rsplit('/', 1)[1]}")
        offset += p[v]["steps"]
    ax.set_xlabel("pretraining step (v1 continues v0)")
    ax.set_ylabel("eval loss")
    ax.legend(fontsize=8)
    return fig
