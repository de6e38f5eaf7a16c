"""Parsing the Debian packages' formats, and the fetch error a user without apt sees."""
import gzip
import json

import pytest

from rtune_ds.config import ConfigError
from rtune_ds.data.debian import B64, clean_foldoc, prepare_corpora, read_foldoc, read_wordnet

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"


def b64(n: int) -> str:
    out = ""
    while True:
        out, n = B64[n % 64] + out, n // 64
        if n == 0:
            return out


def write_wordnet(root):
    (root / "wordnet").mkdir(parents=True)
    lines = {
        "noun": "00002137 09 n 02 abstraction 0 abstract_entity 0 000 | a general concept formed "
                "by extracting common features; \"an example\"  \n",
        "verb": "01835496 38 v 01 travel 0 000 | change location; move, travel, or proceed  \n",
        "adj": "00001740 00 a 01 able 0 000 | (usually followed by `to') having the necessary means  \n",
        "adv": "00001740 02 r 01 barely 0 000 | only just  \n",
    }
    for pos, line in lines.items():
        (root / "wordnet" / f"data.{pos}").write_text(HEADER + line)


def write_foldoc(root):
    entries = [("00-databaseinfo", "00-databaseinfo\n\n   This is FOLDOC, a meta entry.\n"),
               ("C", "C\nNB\n\n   <language> A programming language designed by {Dennis Ritchie}\n"
                     "   at {AT&T} {Bell Labs} for {systems programming (system)}.\n\n(1997-03-12)\n"),
               ("tiny", "tiny\n\n   Too short.\n")]
    data, index, offset = b"", [], 0
    for head, text in entries:
        raw = text.encode()
        index.append(f"{head}\t{b64(offset)}\t{b64(len(raw))}")
        data, offset = data + raw, offset + len(raw)
    (root / "dictd").mkdir(parents=True)
    (root / "dictd" / "foldoc.index").write_text("\n".join(index) + "\n")
    (root / "dictd" / "foldoc.dict.dz").write_bytes(gzip.compress(data))


def test_wordnet_synset_lines(tmp_path):
    write_wordnet(tmp_path)
    records = {r["pos"]: r for r in read_wordnet(tmp_path)}
    assert len(records) == 4
    noun = records["noun"]
    assert noun["lexname"] == "noun.cognition" and noun["lemmas"] == ["abstraction", "abstract entity"]
    assert noun["definition"] == "a general concept formed by extracting common features"
    assert noun["text"].endswith('"an example"')
    assert records["verb"]["lexname"] == "verb.motion" and records["adv"]["lexname"] == "adv.all"


def test_foldoc_entries(tmp_path):
    write_foldoc(tmp_path)
    records = read_foldoc(tmp_path)
    assert [r["headword"] for r in records] == ["C"]  # meta and short entries dropped
    assert records[0]["category"] == "language"
    assert records[0]["text"] == ("A programming language designed by Dennis Ritchie at AT&T "
                                  "Bell Labs for systems programming.")


def test_clean_foldoc_without_category():
    assert clean_foldoc("  plain {text}\n  here (2001-01-01)") == ("plain text here", None)


def test_local_dirs_instead_of_apt(tmp_path):
    write_wordnet(tmp_path / "wn")
    write_foldoc(tmp_path / "fd")
    summary = prepare_corpora(tmp_path / "out", tmp_path / "cache", tmp_path / "wn", tmp_path / "fd")
    assert summary["general.jsonl"]["records"] == 4
    rows = [json.loads(x) for x in (tmp_path / "out" / "computing.jsonl").read_text().splitlines()]
    assert rows[0]["headword"] == "C"


def test_missing_apt_names_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, no dpkg-deb
    with pytest.raises(ConfigError, match="--wordnet-dir"):
        prepare_corpora(tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_real_packages(tmp_path):
    summary = prepare_corpora(tmp_path / "out", tmp_path / "cache")
    assert summary["general.jsonl"]["records"] > 100_000  # WordNet 3.0 has 117,659 synsets
    assert summary["computing.jsonl"]["records"] > 10_000
    first = json.loads((tmp_path / "out" / "computing.jsonl").read_text().splitlines()[0])
    assert set(first) == {"text", "headword", "category"}
