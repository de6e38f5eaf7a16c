"""rtune demo: the paper's whole story on real data with one command. Each step is a recipe run
with its own run dir OUT/runs/<name>/ (TensorBoard, metrics.jsonl, summary); all the jobs that
are not done yet run one after another inside ONE deepspeed launch (the ranks start once: at this
scale a start-up costs more than a job), so running the demo again into the same OUT continues
where it stopped:

1. data: the prepared corpora and tasks from --data DIR, else OUT/data (prepared there as
   `rtune data prepare` does when missing); each task's splits are sampled (seeded) into OUT/tasks
   so training and evaluation fit the budget;
2. pretrain: v0 on the general domain (WordNet glosses); v1 continually pretrained from v0 with
   the recipe (LR from v0's minimum, cosine to 1%, the blend switching to the computing domain,
   FOLDOC); rand, the random-init control: the same preset, seed and tokenizer, one step at an LR
   of 1e-12 (in fp32 the weights stay those v0 started from);
3. tune: v0 and rand on both tasks (supersense: general domain; foldoc_category: computing),
   full fine-tuning and LoRA, full data and few-shot, with the same settings; v1 on the
   computing task (vanilla);
4. recycle the v0 bundles of the computing task to v1: compat of the full-FT and LoRA bundles;
   init with full data; few-shot, one run per seed: vanilla (plain fine-tuning of v1), init,
   distill, init+distill;
5. analyze connectivity and similarity between the computing-task models tuned on v0 and on v1,
   with a control pair (the same v0 model against the one tuned on rand);
6. report: OUT/report.md, OUT/report.json and PNG plots; every number is read from the runs'
   files (summary.json, compat.json, metrics.jsonl, connectivity.json, similarity.json).

The budget (model preset, steps, lengths, sample sizes, seeds) of `--quick` and of the full demo
is data: rtune_ds/resources/demo.yaml.

Modules: main (the protocol `rtune demo` runs), plan (budgets, RunConfigs, the jobs and their
names), data (the prepared data and the task samples), runner (the jobs inside the one launch),
results (reading the runs), findings (the verdicts: pure functions), render (markdown and plots).
"""
