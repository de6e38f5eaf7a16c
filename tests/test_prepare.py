"""rtune_ds.data.prepare (first part) and rtune_ds.data.debian (last part): parsing the Debian
packages' real formats (WordNet data.* files, a dictd .index + .dict.dz pair) on small snippets,
the local-source and .deb paths, the error a user without apt sees, and (slow) the real fetch by
package name."""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess

import pytest

from rtune_ds.data import prepare as P
from rtune_ds.errors import ConfigError

LICENSE = ("  1 This software and database is being provided to you, the LICENSEE, by  \n"
           "  2 Princeton University under the following license.  By obtaining, using  \n")
NOUN = ("00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 "
        "| that which is perceived or known or inferred to have its own distinct existence (living or nonliving)  \n"
        "00002684 03 n 02 object 0 physical_object 0 001 @ 00001930 n 0000 | a tangible and "
        "visible entity; \"it was full of rackets, balls and other objects\"  \n"
        "02958343 06 n 05 car 0 auto 0 automobile 0 machine 0 motorcar 0 001 @ 03791235 n 0000 "
        "| a motor vehicle with four wheels  \n")
OTHER_POS = {
    "verb": "01835496 38 v 01 travel 0 000 | change location; move, travel, or proceed  \n",
    "adj": "00001740 00 a 01 able 0 000 | (usually followed by `to') having the necessary means\n"
           "00002312 00 s 02 alive(p) 0 live_on(a) 0 000 | possessing life  \n",
    "adv": "00001740 02 r 01 barely 0 000 | only just  \n",
}


def make_wordnet(root):
    """A wordnet-base tree: usr/share/wordnet/data.* and the doc changelog (for the version)."""
    wn = root / "usr" / "share" / "wordnet"
    wn.mkdir(parents=True)
    (wn / "data.noun").write_text(LICENSE + NOUN)
    for pos, lines in OTHER_POS.items():
        (wn / f"data.{pos}").write_text(LICENSE + lines)
    doc = root / "usr" / "share" / "doc" / "wordnet-base"
    doc.mkdir(parents=True)
    with gzip.open(doc / "changelog.Debian.gz", "wt") as fh:
        fh.write("wordnet (1:3.0-37) unstable; urgency=medium\n\n  * test\n")
    return root


def dictd_b64(n: int) -> str:
    digits = ""
    while True:
        n, r = divmod(n, 64)
        digits = P.DICTD_B64[r] + digits
        if n == 0:
            return digits


FOLDOC_ENTRIES = [  # (index names, entry text) in .dict order, as dictfmt writes them
    (["00-database-info"], "00-database-info\n\n   This is dictd meta data, long enough to be kept "
                           "if it were an entry.\n"),
    (["c", "the c language"],
     "C\nthe C language\n\n   <language, programming> <language> A {programming language}\n"
     "   designed by {Dennis\n   Ritchie} at {AT&T Bell Labs (http://bell-labs.com/)}, see\n"
     "   {(http://c.example.org/)} and {loops (loop)}.\n\n   (1997-03-12)\n\n"),
    (["ack"], "ACK\n\n   {Acknowledgement}.\n\n   (1996-01-01)\n\n"),
    (["language for the on-line investigation of abstractions", "lolita"],
     "Language for the On-Line\nInvestigation of Abstractions\nLOLITA\n\n   1. <language> An "
     "extension of the {Culler-Fried System}. 2. <tool> A {symbolic mathematics} tool.\n\n"),
    (["duff's device"], "Duff's device\n\n   <programming> Unrolled copying in C: switch (n % 8) "
     "{ case 0: do { *to = *from++; } while (--n > 0); } and {x: P(x)}.\n\n   (2005-01-01)\n\n"),
]


def make_foldoc(root):
    """A dict-foldoc tree: usr/share/dictd/foldoc.index + foldoc.dict.dz (gzip-compatible)."""
    data, index = b"", []
    for names, text in FOLDOC_ENTRIES:
        raw = text.encode()
        index += [f"{name}\t{dictd_b64(len(data))}\t{dictd_b64(len(raw))}" for name in names]
        data += raw
    dictd = root / "usr" / "share" / "dictd"
    dictd.mkdir(parents=True)
    (dictd / "foldoc.index").write_text("\n".join(sorted(index)) + "\n")
    (dictd / "foldoc.dict.dz").write_bytes(gzip.compress(data))
    return root


def test_wordnet_glosses_fields_and_order(tmp_path):
    records = P.read_wordnet_glosses(make_wordnet(tmp_path))
    assert [r["pos"] for r in records] == ["noun"] * 3 + ["verb", "adj", "adj", "adv"]
    entity, obj, car = records[:3]
    assert entity == {"text": "that which is perceived or known or inferred to have its own "
                              "distinct existence (living or nonliving)",
                      "lexname": "noun.Tops", "pos": "noun", "lemmas": ["entity"]}
    assert obj["lemmas"] == ["object", "physical object"]
    assert obj["text"].endswith('"it was full of rackets, balls and other objects"')
    assert car["lexname"] == "noun.artifact"
    assert car["lemmas"] == ["car", "auto", "automobile", "machine", "motorcar"]
    assert records[3]["lexname"] == "verb.motion" and records[6]["lexname"] == "adv.all"
    assert records[5]["lemmas"] == ["alive", "live on"]  # (p)/(a) markers gone, satellite is adj
    assert not any("LICENSEE" in r["text"] for r in records)


def test_lexnames_are_the_45_standard_ones():
    assert len(P.LEXNAMES) == 45 == len(set(P.LEXNAMES))
    assert (P.LEXNAMES[0], P.LEXNAMES[18], P.LEXNAMES[43], P.LEXNAMES[44]) == (
        "adj.all", "noun.person", "verb.weather", "adj.ppl")


def test_foldoc_definitions(tmp_path):
    records = P.read_foldoc_definitions(make_foldoc(tmp_path))
    # meta entry and the short "ACK" dropped, the two-name entries appear once, in .dict order
    assert [r["headword"] for r in records] == [
        "C", "Language for the On-Line Investigation of Abstractions", "Duff's device"]
    c, lolita, duff = records
    assert c == {"text": "A programming language designed by Dennis Ritchie at AT&T Bell Labs, "
                         "see http://c.example.org/ and loops.",
                 "headword": "C", "category": "language"}
    assert lolita["category"] is None  # numbered senses: tags stay in the text
    assert lolita["text"] == ("1. <language> An extension of the Culler-Fried System. "
                              "2. <tool> A symbolic mathematics tool.")
    assert duff["category"] == "programming"
    assert "{ case 0: do { *to = *from++; } while (--n > 0); }" in duff["text"]  # code braces stay
    assert duff["text"].endswith("and x: P(x).")  # `(x)` without a space is no link target


def test_clean_foldoc_body():
    assert P.clean_foldoc_body("  plain {text}\n  {inherits {inheritance}} (2001-01-01)\n") == (
        "plain text inherits inheritance", None)
    assert P.clean_foldoc_body("<networking, standard> A {Home page(http://x.org/)}.") == (
        "A Home page.", "networking")


def test_missing_files_say_what_was_expected(tmp_path):
    with pytest.raises(ConfigError, match="data.noun.*--wordnet-dir"):
        P.read_wordnet_glosses(tmp_path)
    with pytest.raises(ConfigError, match="foldoc.index.*--foldoc-dir"):
        P.read_foldoc_definitions(tmp_path)


def test_missing_apt_get_names_the_local_options(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="apt-get is not installed.*--wordnet-dir PATH"):
        P.fetch_debian_package("wordnet-base", tmp_path / "cache")
    with pytest.raises(ConfigError, match="--foldoc-dir"):
        P.fetch_debian_package("dict-foldoc", tmp_path / "cache")
    with pytest.raises(ConfigError, match="--wordnet-dir"):
        P.prepare_corpora(tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists()
    # an already unpacked package is reused without running anything
    (tmp_path / "cache" / "wordnet-base").mkdir(parents=True)
    assert P.fetch_debian_package("wordnet-base", tmp_path / "cache") == (
        tmp_path / "cache" / "wordnet-base")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("RTUNE_CACHE", str(tmp_path))
    assert P.default_cache_dir() == tmp_path / "debian"
    monkeypatch.delenv("RTUNE_CACHE")
    assert P.default_cache_dir().parts[-3:] == (".cache", "rtune_ds", "debian")


def test_prepare_from_local_dirs(tmp_path):
    wn, fd = make_wordnet(tmp_path / "wn"), make_foldoc(tmp_path / "fd")
    out = tmp_path / "out"
    summary = P.prepare_corpora(out, tmp_path / "cache", wordnet_src=wn, foldoc_src=fd / "usr")
    assert summary["general.jsonl"]["records"] == 7
    assert summary["general.jsonl"]["version"] == "1:3.0-37"
    assert summary["computing.jsonl"]["records"] == 3
    assert summary["computing.jsonl"]["version"] is None  # no changelog in that tree
    assert json.loads((out / "prepare.json").read_text()) == summary
    assert sorted(p.name for p in out.iterdir()) == [
        "computing.jsonl", "general.jsonl", "prepare.json"]  # no temp files left
    rows = [json.loads(line) for line in (out / "general.jsonl").read_text().splitlines()]
    assert rows == P.read_wordnet_glosses(wn)
    first = (out / "computing.jsonl").read_bytes()
    P.prepare_corpora(out, tmp_path / "cache", wordnet_src=wn, foldoc_src=fd)
    assert (out / "computing.jsonl").read_bytes() == first
    assert not (tmp_path / "cache").exists()  # nothing fetched


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_prepare_from_deb_file(tmp_path):
    tree = make_foldoc(tmp_path / "pkg")
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN" / "control").write_text(
        "Package: dict-foldoc\nVersion: 20230119-1\nArchitecture: all\n"
        "Maintainer: t <t@example.org>\nDescription: test\n")
    deb = tmp_path / "dict-foldoc_20230119-1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(deb)], check=True,
                   capture_output=True)
    summary = P.prepare_corpora(tmp_path / "out", tmp_path / "cache",
                                wordnet_src=make_wordnet(tmp_path / "wn"), foldoc_src=deb)
    assert summary["computing.jsonl"]["version"] == "20230119-1"
    assert summary["computing.jsonl"]["records"] == 3


@pytest.mark.slow
def test_real_fetch_by_package_name(tmp_path):
    if shutil.which("apt-get") is None:
        pytest.skip("needs apt-get")
    summary = P.prepare_corpora(tmp_path / "out", tmp_path / "cache")
    general, computing = summary["general.jsonl"], summary["computing.jsonl"]
    assert general["records"] == 117_659  # WordNet 3.0 synsets
    assert general["by_pos"] == {"noun": 82_115, "verb": 13_767, "adj": 18_156, "adv": 3_621}
    assert computing["records"] > 10_000  # 11,044 in dict-foldoc 20230119-1
    assert computing["with_category"] > computing["records"] // 2
    assert general["version"] and computing["version"]
    assert sorted((tmp_path / "cache").glob("*.deb"))  # fetched by name, kept
    rows = [json.loads(line) for line in (tmp_path / "out" / "general.jsonl").open()]
    assert {r["lexname"] for r in rows} == set(P.LEXNAMES)
    foldoc = [json.loads(line) for line in (tmp_path / "out" / "computing.jsonl").open()]
    assert all(len(r["text"]) >= 40 and set(r) == {"text", "headword", "category"} for r in foldoc)
    assert "{" not in next(r for r in foldoc if r["headword"] == "associative array")["text"]


def test_cli_prepare_writes_corpora_and_tasks(tmp_path, capsys):
    from rtune_ds.cli import main

    wn, fd = make_wordnet(tmp_path / "wn"), make_foldoc(tmp_path / "fd")
    out = tmp_path / "out"
    assert main(["data", "prepare", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--wordnet-dir", str(wn), "--foldoc-dir", str(fd)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["corpora"]["general.jsonl"]["records"] == 7
    assert set(report["tasks"]) == {"supersense", "foldoc_category"}
    assert (out / "tasks.json").is_file() and (out / "supersense_train.jsonl").is_file()


def test_cli_prepare_without_apt_exits_2_naming_the_option(tmp_path, monkeypatch, capsys):
    from rtune_ds.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, no dpkg-deb
    assert main(["data", "prepare", "--out", str(tmp_path / "out"),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "--wordnet-dir" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
