"""An LM task of definitions from Debian WordNet (the prepared general.jsonl of `rtune data
prepare`): "Define the word X:" -> the first clause of X's gloss, for single-word nouns with a
3-12 word gloss, every 97th synset of the file (a spread, not its first synsets). The task the
README's bounded LM teacher cache was measured on (320 train, 64 dev).

    python scripts/definitions_task.py PREPARED_DIR/general.jsonl OUT_DIR [--train 320 --dev 64]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=320)
    ap.add_argument("--dev", type=int, default=64)
    args = ap.parse_args()
    rows = []
    with open(args.source) as fh:
        for i, line in enumerate(fh):
            record = json.loads(line)
            lemma, gloss = record["lemmas"][0], record["text"].split(";")[0].strip()
            if (record["pos"] == "noun" and "_" not in lemma and " " not in lemma
                    and 3 <= len(gloss.split()) <= 12 and i % 97 == 0):
                rows.append({"prompt": f"Define the word {lemma}:", "completion": f" {gloss}"})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:args.train]),
                       ("dev", rows[args.train:args.train + args.dev])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))


if __name__ == "__main__":
    main()
