"""rtune generate-inputs --base OLD_BASE --examples FILE --n N --out OUT.jsonl: unlabeled inputs
the old decoder base writes from a handful of example texts, for `rtune recycle --unlabeled`.

The protocol: every refusal before any compute (flags, --out new, --base a decoder, the examples'
texts, the longest prompt within the base's positions); the base loaded; N inputs sampled in
batches; OUT.jsonl and its record (OUT.jsonl.lineage.json) written, each whole or absent; then a
JSON summary on stdout."""
from __future__ import annotations

import json
import time
from pathlib import Path

SETTINGS = ("n", "max_new_tokens", "temperature", "top_p", "seed", "shots", "batch_size",
            "text_field")


def from_args(args, command: str) -> dict:
    """The command from its parsed arguments."""
    from rtune_ds.jobs.generated_inputs import Settings

    return run(args.base, args.examples, args.out,
               Settings(**{name: getattr(args, name) for name in SETTINGS}), command)


def run(base: str, examples: str, out: str, settings, command: str) -> dict:
    """Generate, write, print the summary (and return it)."""
    from rtune_ds.jobs import generated_inputs as job

    start = time.time()
    base, examples, out = Path(base), Path(examples), Path(out)
    texts, tokenizer = job.check_request(base, examples, out, settings)
    model = job.load_decoder(base, tokenizer)
    made = job.generate(model, tokenizer, texts, settings)
    record = job.write(out, base, examples, len(texts), settings, made, tokenizer, command,
                       time.time() - start)
    summary = {"path": str(out), "record": str(job.record_path(out)),
               **{k: record["inputs"][k] for k in ("asked", "made", "attempts", "complete")},
               "examples": record["data"][0], "base": record["parent"],
               "seconds": record["seconds"], "first": made.texts[:3]}
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary
