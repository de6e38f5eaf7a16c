"""The demo's report: OUT/report.json (every number), OUT/report.md (tables and verdicts) and the
PNG plots beside them (contrasts, convergence, pretraining, compat, connectivity, similarity).
Every file goes through rtune_ds.io, so a reader never sees half of one."""
from __future__ import annotations

from pathlib import Path

from rtune_ds.demo.findings import BLOCKED
from rtune_ds.demo.plan import (
    ARMS,
    CALIBRATION_SEED,
    NEW_TASK,
    arm,
    data_regime,
    lr_keys,
    run_name,
    tuning_methods,
)
from rtune_ds.demo.results import dev_curve, regime_label
from rtune_ds.io import pyplot, save_figure, save_json, save_text
from rtune_ds.report import markdown_table


def write_report(report: dict, logs: dict[str, list[dict]], analyses: dict, out: Path) -> dict:
    """The plots (their names go into the report), then report.json and report.md."""
    report["plots"] = plots(report, logs, analyses, out)
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
    base = report["base"]
    what = (f"v0 = `{base.get('origin', base['path'])}` as released (`{base['package']}` "
            f"{base['version']}, {base['licence']})" if base["source"] == "released" else
            f"v0 = `{base['path']}` (--base-dir)" if base["source"] == "--base-dir" else
            f"v0 = preset `{base['preset']}` pretrained here")
    lines = [
        f"# rtune demo ({report['profile']}{' --full' if report['budget']['full'] else ''})", "",
        f"{what}; {report['precision']['chosen']} ({report['precision']['why']}); "
        f"{report['workers']} jobs at once × {report['nproc']} rank(s) on {report['cpu']}, "
        f"DeepSpeed `{report['ds_config']}`; wall time {report['wall_time_s']:.0f} s "
        f"({len(report['jobs'])} jobs, {sum(1 for x in report['jobs'] if x['reused'])} reused). "
        "Every number below is read from the run directories under `runs/` (TensorBoard: "
        "`tensorboard --logdir runs`); every run's per-item test predictions are its "
        "`test_predictions.json`; the sha256 of every file of v0 is in report.json "
        "(`base.sha256`).", ""]
    lines += verdicts(report)
    lines += protocol(report)
    lines += pretraining_table(report["pretraining"])
    lines += gate_section(report["gate"])
    lines += results_table(report)
    lines += contrasts_table(report["contrasts"])
    lines += label_free_table(report["label_free_decisions"])
    lines += convergence_table(report["convergence"])
    lines += compat_table(report["compat_curve"])
    lines += analyses_table(report["analyses"])
    lines += phase_table(report["phases"])
    lines += ["## Plots", "", *(f"![{name}]({name})" for name in report["plots"]), ""]
    return "\n".join(lines)


def verdicts(report: dict) -> list[str]:
    """The plain summary: the gate, then each contrast by outcome."""
    gate, tested = report["gate"], report["contrasts"]
    lines = ["## In short", "", f"- **Upgrade gate: {'passed' if gate['passed'] else 'failed'}**"
             f" — {gate['says']}."]
    for outcome in ("reproduced", "contradicted", "inconclusive", BLOCKED):
        names = [n for n, t in tested.items() if t["verdict"] == outcome]
        if names:
            what = {"inconclusive": "inconclusive (the test set cannot decide)"}.get(outcome,
                                                                                  outcome)
            lines.append(f"- **{what}**: " + "; ".join(
                f"{n} ({t['difference']:+.3f}, 95% CI [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}])"
                for n, t in ((n, tested[n]) for n in names)))
    return lines + [""]


def protocol(report: dict) -> list[str]:
    """The protocol as run: data, decontamination, seeds, budgets, the grid and its choice."""
    b, t = report["budget"], report["budget"]["tune"]
    d = report["decontamination"]
    removed = ", ".join(f"{name}: {c['removed']} of {c['records']} records"
                        for name, c in d["corpora"].items())
    lines = ["## Protocol", "",
             f"- data: {NEW_TASK} records per split: " + ", ".join(
                 f"{split} {n}" for name, n in report["task_records"].items()
                 if (split := name.removeprefix(f"{NEW_TASK}_")) != name)
             + "; the dev split is halved: `dev` chose the v0 bundles, the few-shot dev pools "
             "come from `dev_pool`.",
             f"- decontamination: every pretraining corpus drops the texts of every task's dev "
             f"and test splits ({d['held_out_texts']} normalised texts): {removed} removed.",
             f"- seeds: {', '.join(str(s) for s in range(1, report['seeds'] + 1))}, paired: seed "
             "s is v0's bundle tuned with seed s, the few-shot sample s and every arm of seed s "
             f"recycling bundle s. Seed {CALIBRATION_SEED} is not reported: it chooses the LRs and "
             "its bundles join the gate and the label-free library.",
             *(f"- {'LoRA ' if m == 'lora' else ''}bundles: v0 tuned "
               f"{'with LoRA' if m == 'lora' else 'fully'} on full data at LR "
               f"{lr_keys(b, m)['bundle_lr']:g}, {t['full']['max_steps']} steps."
               for m in tuning_methods(b)),
             *(f"- {regime_label(r)}: a fixed budget of {t[data_regime(r)]['max_steps']} steps, "
               f"warmup {t['warmup_fraction']:.0%} then cosine to {t['min_lr_ratio']:g}× the LR,"
               f" dev every {t[data_regime(r)]['eval_every']} steps from step 0; the best dev "
               "state (step 0 included) is scored on test once." for r in b["regimes"]),
             f"- few-shot samples: {t['few_shot']} per class for train and for dev.",
             "- label-free: init+distill that reads no label: its inputs are the task's train "
             "texts (labels dropped), the loss the KL to the old model alone (α = 1), and it "
             "keeps its last weights (no label chooses them; its LR comes from the grid like "
             "every arm's). Its compat score is the bundle's agreement with the old model over "
             "those texts (keep at ≥ 0.9).",
             f"- distillation: α = {t['distill']['alpha']:g}, T = "
             f"{t['distill']['temperature']:g} (loss (1−α)·CE + α·T²·KL; the paper's code "
             "sweeps α in {0.7, 0.9} and T in {5, 10, 20}).",
             *(lr_protocol(b, m) for m in tuning_methods(b)), ""]
    lrs = report["chosen_lr"]
    if not report["grid"]:
        return lines
    lines += markdown_table(
        ["regime", "arm", "LR", "dev acc (seed 0)", "best step"],
        ([regime_label(r["regime"]), r["arm"], f"{r['lr']:g}"
          + (" (chosen)" if lrs[r["regime"]][r["arm"]] == r["lr"] else ""), fmt(r["dev"]),
          "last (no labels)" if r["best_step"] is None else r["best_step"]]
         for r in report["grid"]))
    return lines + [""]


def lr_protocol(b: dict, method: str) -> str:
    grid = lr_keys(b, method)["lr_grid"]
    what = f"- LR{' (LoRA)' if method == 'lora' else ''}: every arm"
    if len(grid) == 1:
        return f"{what} at {grid[0]:g} (a grid of one LR: nothing chosen, no grid run)."
    return (f"{what} on the grid {', '.join(f'{x:g}' for x in grid)}, each choosing its best "
            f"dev accuracy on seed {CALIBRATION_SEED}.")


def gate_section(gate: dict) -> list[str]:
    e, th = gate["evidence"], gate["evidence"]["thresholds"]
    fall, kept = e.get("relative_fall", {}), e.get("gain_kept", {})
    return ["## The upgrade gate", "",
            f"- domain shift: the computing LM loss falls by {fmt(fall.get('computing'))} "
            f"(relative), the general one by {fmt(fall.get('general'))}: a gap of "
            f"{fmt(e.get('fall_gap'))}, needed ≥ {th['fall_gap']:g} → "
            f"{gate['checks'].get('domain_shift')}",
            f"- the v0 bundles keep {fmt(e.get('mean_gain_kept'))} of their dev gain over the "
            f"majority class on v1 with no training (per seed: "
            f"{', '.join(f'{s}: {fmt(k)}' for s, k in kept.items())}), needed ≤ "
            f"{th['max_gain_kept']:g} → {gate['checks'].get('bundles_lose_gain')}",
            f"- **{'passed' if gate['passed'] else 'failed'}: {gate['says']}**"
            + ("" if gate["passed"] else "; no method verdict is issued."), ""]


def results_table(report: dict) -> list[str]:
    lines = ["## Results", "", "Test accuracy of the kept best dev state (every arm of a seed "
             "on the same test set), mean ± sd over the reported seeds, per seed in order.", ""]
    return lines + markdown_table(
        ["arm", "regime", "test acc (mean ± sd)", "test per seed", "dev per seed"],
        ([r["run"], regime_label(r["regime"]),
          f"{fmt(r['test_mean'])} ± {fmt(r['test_std'])}",
          " / ".join(fmt(x) for x in r["test_per_seed"]),
          " / ".join(fmt(x) for x in r["dev_per_seed"])] for r in report["table"])) + [""]


def contrasts_table(tested: dict[str, dict]) -> list[str]:
    any_test = next(iter(tested.values()), None)
    lines = ["## Contrasts", "",
             "Each a paired bootstrap over the test items pooled over seeds "
             f"({any_test['resamples'] if any_test else 0} resamples, "
             f"{any_test['items'] if any_test else 0} items × {any_test['seeds'] if any_test else 0}"
             " seeds), Holm-corrected over the family; reproduced / contradicted only when the "
             "corrected p < 0.05; \"detectable\" is the smallest effect this test set detects "
             "with 80% power.", ""]
    return lines + markdown_table(
        ["contrast", "claim", "difference", "95% CI", "p (Holm)", "detectable", "verdict"],
        ([name, t["claim"] + (f" ({t['best_single']})" if "best_single" in t else ""),
          f"{t['difference']:+.3f}", f"[{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]",
          fmt(t["p_holm"]), fmt(t["detectable"]), f"**{t['verdict']}**"]
         for name, t in tested.items())) + [""]


def label_free_table(d: dict) -> list[str]:
    """Each bundle's keep / re-tune decision from its labeled compat and from its label-free
    score, and how often they agree."""
    if not d["of"]:
        return []
    th = d["thresholds"]
    lines = ["## Deciding without labels", "",
             f"The label-free compat decision (keep when the bundle on v1 agrees with the old "
             f"model on ≥ {th['agree_at']:g} of the train texts) against the labeled one (keep "
             f"when compat keeps ≥ {th['keep_at']:g} of the dev gain over the majority class): "
             f"**the same decision for {d['same']} of {d['of']} bundles** (bundle 1 on v1's "
             "exports along its run too: nearer v0, a bundle may still be worth keeping).", ""]
    lines += markdown_table(
        ["bundle", "seed", "on", "dev on v0", "compat dev", "gain kept", "labeled", "agreement",
         "mean KL", "label-free"],
        ([r["method"], r["seed"], "v1" if r["point"] == 1 else f"v1 at {r['point']:.0%}",
          fmt(r["old_dev"]), fmt(r["compat_dev"]), fmt(r["gain_kept"]), r["labeled"],
          fmt(r["agreement"]), fmt(r["mean_kl"]), r["label_free"]] for r in d["bundles"]))
    return lines + [""]


def convergence_table(conv: dict) -> list[str]:
    lines = ["## Convergence", "",
             "Steps (examples) for init and init+distill to reach vanilla's best dev accuracy of "
             "the same seed — measurable only when the arm starts below it — and the paired "
             "area under the dev curve over the budget, minus vanilla's.", ""]
    rows = []
    for regime, arms in conv.items():
        for name, c in arms.items():
            for e in c["per_seed"]:
                reach = e.get("reach", "–")
                rows.append([regime_label(regime), name, e["seed"], fmt(e["target"]),
                             fmt(e["start"]),
                             f"{reach['step']} ({reach['examples']})" if isinstance(reach, dict)
                             else reach, f"{e['auc_minus_vanilla']:+.3f}"])
    return lines + markdown_table(["regime", "arm", "seed", "vanilla best dev", "start (step 0)",
                                   "steps (examples) to reach", "AUC − vanilla"], rows) + [""]


def compat_table(curve: list[dict]) -> list[str]:
    if not curve:
        return []
    return ["## Compatibility along the continual pretraining", "",
            "Dev accuracy of bundle 1 (tuned on v0), applied with no training to v1's weights "
            "at each share of its steps (0%: v0 itself).", "",
            *markdown_table(["point", "dev", "test", "majority (dev)"],
                            ([f"{p['point']:.0%}", fmt(p["dev"]), fmt(p["test"]),
                              fmt(p["majority"])] for p in curve)), ""]


def analyses_table(a: dict) -> list[str]:
    if not a:
        return []
    return ["## Analyses", "",
            "Main pair: bundle 1 tuned on v0 vs v1 tuned alike; floor: two seeds on v0 (bundles "
            "1 and 0); ceiling: bundle 1 vs rand tuned alike. Position: 0 at the floor, 1 at the "
            "ceiling.", "",
            *markdown_table(["analysis", "main", "floor", "ceiling", "position"],
                            ([name + (" (accuracy barrier)" if name == "connectivity"
                                      else " (mean head JS divergence)"),
                              fmt(v["main"]), fmt(v["floor"]), fmt(v.get("ceiling")),
                              fmt(v.get("position"))] for name, v in a.items())), ""]


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


def phase_table(phases: dict[str, float]) -> list[str]:
    return ["## Wall time per phase", "",
            *markdown_table(["phase", "s"], ([name, fmt(s, 0)] for name, s in phases.items())),
            ""]


# ---------------------------------------------------------------- plots

def plots(report: dict, logs: dict[str, list[dict]], analyses: dict, out: Path) -> list[str]:
    """Write the PNGs into `out`; their file names, in report order."""
    made = {"contrasts.png": contrasts_plot(report["contrasts"]),
            "convergence.png": convergence_plot(report, logs),
            "pretraining.png": pretraining_plot(report["pretraining"]),
            **({"compat.png": compat_plot(report["compat_curve"])}
               if report["compat_curve"] else {})}
    for name, fig in made.items():
        save_figure(fig, out / name)
    names = list(made)
    # the analyses' own figures, drawn again from their JSON by the recipes that drew them (here,
    # not at the top: the recipes' imports start DeepSpeed, which nothing else here needs)
    from rtune_ds.recipes.connectivity import plot_connectivity
    from rtune_ds.recipes.similarity import plot_similarity

    for name, plot in (("connectivity", plot_connectivity), ("similarity", plot_similarity)):
        if name in analyses:
            plot(analyses[name], out / f"{name}.png")
            names.append(f"{name}.png")
    return names


def contrasts_plot(tested: dict[str, dict]):
    """Each contrast's difference with its 95% CI and the detectable effect (a forest plot)."""
    fig, ax = pyplot().subplots(figsize=(8, 0.5 * len(tested) + 1.5))
    for i, (name, t) in enumerate(tested.items()):
        ax.plot([t["ci_low"], t["ci_high"]], [i, i], color="k")
        ax.plot([t["difference"]], [i], "o", color={"reproduced": "C2", "contradicted": "C3"}
                .get(t["verdict"], "C7"))
    ax.axvline(0, color="r", ls=":")
    ax.set_yticks(range(len(tested)))
    ax.set_yticklabels(list(tested), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("difference of test accuracy (A − B), 95% CI")
    return fig


def convergence_plot(report: dict, logs: dict[str, list[dict]]):
    """Dev accuracy over steps, one panel per regime, a line per arm and seed."""
    regimes = report["budget"]["regimes"]
    fig, axes = pyplot().subplots(1, len(regimes), figsize=(6 * len(regimes), 4), squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        for k, name in enumerate(ARMS):
            for seed in range(1, report["seeds"] + 1):
                curve = dev_curve(logs.get(run_name(arm(name, regime, seed)), []))
                ax.plot([x for x, _ in curve], [y for _, y in curve], color=f"C{k}", alpha=0.7,
                        label=name if seed == 1 else None)
        ax.set_title(f"{NEW_TASK}, {regime_label(regime)} (a line per seed)")
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


def compat_plot(curve: list[dict]):
    """Compat dev accuracy of bundle 1 along v1's continual pretraining."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    ax.plot([100 * r["point"] for r in curve], [r["dev"] for r in curve], marker="o",
            label=f"v0 {'LoRA' if curve[0]['method'] == 'lora' else 'full-FT'} bundle (seed 1)")
    ax.axhline(curve[0]["majority"], color="r", ls=":", label="majority class (dev)")
    ax.set_xlabel("% of v1's continual-pretraining steps (0: v0)")
    ax.set_ylabel("dev accuracy, no training")
    ax.legend(fontsize=8)
    return fig
