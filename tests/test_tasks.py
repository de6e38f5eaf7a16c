"""build_tasks: the real tasks from the prepared corpora: class lists, dedup, hash splits."""
import json

from rtune_ds.data.tasks import build_tasks, split_of


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_build_tasks_rules(tmp_path):
    corpora = tmp_path / "corpora"
    corpora.mkdir()
    general = [{"text": f"gloss number {i}  of  kind {k}", "lexname": k, "pos": "noun", "lemmas": []}
               for k, n in (("noun.artifact", 400), ("noun.person", 300), ("verb.motion", 250),
                            ("noun.Tops", 20)) for i in range(n)]
    general += [{"text": "gloss number 0 of kind noun.person", "lexname": "noun.person"},  # dup
                {"text": "a conflicting gloss", "lexname": "noun.artifact"},
                {"text": "a conflicting gloss", "lexname": "noun.person"}]
    write(corpora / "general.jsonl", general)
    computing = [{"text": f"definition {i} of {c}", "headword": str(i), "category": c}
                 for c, n in (("programming", 150), ("language, humour", 120), ("web", 10))
                 for i in range(n)] + [{"text": "no category here", "category": None}]
    write(corpora / "computing.jsonl", computing)
    out = tmp_path / "tasks"
    described = build_tasks(corpora, out)

    sup = described["supersense"]
    assert sup["classes"] == ["noun.artifact", "noun.person", "verb.motion"]  # noun.Tops < 200
    assert sup["dropped_conflicting_texts"] == 1
    rows = {s: [json.loads(l) for l in (out / f"supersense_{s}.jsonl").read_text().splitlines()]
            for s in ("train", "dev", "test")}
    texts = [r["text"] for rs in rows.values() for r in rs]
    assert len(texts) == len(set(texts)) == 950  # deduplicated, no text in two splits
    assert "a conflicting gloss" not in texts
    assert all(split_of(r["text"]) == s for s, rs in rows.items() for r in rs)
    assert 0.7 < len(rows["train"]) / 950 < 0.9
    assert all("  " not in t for t in texts)

    fol = described["foldoc_category"]
    assert fol["classes"] == ["language", "programming"]  # first name of "language, humour"
    assert sum(fol["records"].values()) == 270
    fol_rows = {s: [json.loads(l) for l in (out / f"foldoc_category_{s}.jsonl").read_text()
                    .splitlines()] for s in ("train", "dev", "test")}
    assert all(split_of(r["text"], (0.55, 0.75)) == s for s, rs in fol_rows.items() for r in rs)
    assert 0.15 < fol["records"]["test"] / 270 < 0.35  # a quarter: the study's large test set
    meta = json.loads((out / "tasks.json").read_text())
    assert "sha256" in meta["rules"] and set(meta["tasks"]) == {"supersense", "foldoc_category"}
    # deterministic: a second build writes the same files
    before = (out / "supersense_train.jsonl").read_text()
    build_tasks(corpora, out)
    assert (out / "supersense_train.jsonl").read_text() == before


def test_missing_corpus_is_skipped(tmp_path):
    write(tmp_path / "general.jsonl", [{"text": f"t{i}", "lexname": "a" if i % 2 else "b"}
                                       for i in range(600)])
    assert set(build_tasks(tmp_path, tmp_path / "out")) == {"supersense"}
