"""Real text corpora from two Debian packages, fetched by name (`apt-get download`, no root) and
unpacked with `dpkg-deb -x`, or read from local files given instead.

Parsing rules
- wordnet-base (WordNet 3.0, usr/share/wordnet/data.{noun,verb,adj,adv}): lines starting with two
  spaces are the licence header and are skipped. A synset line is
  `offset lex_filenum ss_type w_cnt(hex) word lex_id ... | gloss`; the record keeps the gloss
  (`text`), its definition part before the first `; "` example (`definition`), the lexicographer
  file name of lex_filenum (`lexname`, e.g. noun.artifact: the synset's supersense), the part of
  speech and the lemmas (underscores become spaces).
- dict-foldoc (FOLDOC in dictd format, usr/share/dictd/foldoc.{index,dict.dz}): the index gives
  each entry's base64 offset and length in the gzip-compatible .dict.dz. An entry is the headword
  line, optional alias lines, a blank line, then the body. In the body `{target}` and
  `{text (target)}` cross references keep their text, whitespace is collapsed, a trailing date
  `(YYYY-MM-DD)` is dropped, and a leading `<category>` tag (the first one when the body starts
  with one or more) becomes `category` and leaves the text. Bodies shorter than 40 characters
  and the `00-database-*` meta entries are dropped.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from rtune_ds.config import ConfigError

LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
]
PACKAGES = {"wordnet": "wordnet-base", "foldoc": "dict-foldoc"}
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
MIN_FOLDOC_CHARS = 40


def default_cache_dir() -> Path:
    return Path(os.environ.get("RTUNE_CACHE", Path.home() / ".cache" / "rtune_ds")) / "debian"


def _unpack(deb: Path, root: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".tmp-"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True, capture_output=True)
    os.replace(tmp, root)
    return root


def fetch_package(name: str, cache_dir: Path, option: str) -> tuple[Path, str]:
    """(unpacked root, .deb file name) of Debian package `name`, downloaded once into cache_dir."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    root = cache_dir / name
    debs = sorted(cache_dir.glob(f"{name}_*.deb"))
    if root.is_dir() and debs:
        return root, debs[-1].name
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise ConfigError(f"cannot fetch Debian package '{name}': '{tool}' is not installed; "
                              f"download {name}'s .deb (or unpack it) elsewhere and pass "
                              f"{option} PATH (a .deb file or a directory with its files)")
    proc = subprocess.run(["apt-get", "download", name], cwd=cache_dir, capture_output=True,
                          text=True)
    debs = sorted(cache_dir.glob(f"{name}_*.deb"))
    if proc.returncode != 0 or not debs:
        raise ConfigError(f"'apt-get download {name}' failed ({proc.stderr.strip()[-300:]}); "
                          f"try 'apt-get update', or pass {option} PATH (a .deb or a directory)")
    shutil.rmtree(root, ignore_errors=True)
    return _unpack(debs[-1], root), debs[-1].name


def local_source(path: Path, cache_dir: Path, option: str) -> tuple[Path, str]:
    if not path.exists():
        raise ConfigError(f"{option} {path}: no such file or directory")
    if path.is_file() and path.suffix == ".deb":
        root = cache_dir / f"local-{path.stem}"
        cache_dir.mkdir(parents=True, exist_ok=True)
        return (root if root.is_dir() else _unpack(path, root)), path.name
    return path, str(path)


def _find(root: Path, name: str, option: str) -> Path:
    found = sorted(root.rglob(name))
    if not found:
        raise ConfigError(f"{option} {root}: no file named {name} below it")
    return found[0]


def read_wordnet(root: Path, option: str = "--wordnet-dir") -> list[dict]:
    records = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in _find(root, f"data.{pos}", option).read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue
            head, gloss = line.split(" | ", 1)
            fields = head.split()
            lexname = LEXNAMES[int(fields[1])]
            lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(int(fields[3], 16))]
            gloss = gloss.strip()
            records.append({"text": gloss, "definition": gloss.split('; "')[0].strip(),
                            "lexname": lexname, "pos": pos, "lemmas": lemmas})
    return records


def _b64(s: str) -> int:
    value = 0
    for ch in s:
        value = value * 64 + B64.index(ch)
    return value


CROSS_REF = re.compile(r"\{([^{}]*?)(?:\s*\([^(){}]*\))?\}")
TRAILING_DATE = re.compile(r"\s*\(\d{4}-\d{2}-\d{2}\)\s*$")
CATEGORY = re.compile(r"^(?:<([^<>]+)>\s*(?:,\s*)?)+")


def clean_foldoc(body: str) -> tuple[str, str | None]:
    text = " ".join(CROSS_REF.sub(r"\1", body).split())
    text = TRAILING_DATE.sub("", text)
    category = None
    match = CATEGORY.match(text)
    if match:
        category = re.match(r"<([^<>]+)>", text).group(1).strip()
        text = text[match.end():].strip()
    return text, category


def read_foldoc(root: Path, option: str = "--foldoc-dir") -> list[dict]:
    index = _find(root, "foldoc.index", option).read_text(encoding="utf-8").splitlines()
    data = gzip.open(_find(root, "foldoc.dict.dz", option)).read()
    records = []
    for line in index:
        parts = line.split("\t")
        if len(parts) != 3 or parts[0].startswith("00-database"):
            continue
        start, length = _b64(parts[1]), _b64(parts[2])
        entry = data[start:start + length].decode("utf-8", "replace")
        if "\n\n" not in entry:
            continue
        text, category = clean_foldoc(entry.split("\n\n", 1)[1])
        if len(text) >= MIN_FOLDOC_CHARS:
            records.append({"text": text, "headword": parts[0], "category": category})
    return records


def write_jsonl(records: list[dict], path: Path) -> None:
    """Write, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def prepare_corpora(out_dir: Path, cache_dir: Path, wordnet_src: Path | None = None,
                    foldoc_src: Path | None = None) -> dict:
    """Write out_dir/general.jsonl (WordNet glosses) and out_dir/computing.jsonl (FOLDOC)."""
    sources = {}
    for key, src, option in (("wordnet", wordnet_src, "--wordnet-dir"),
                             ("foldoc", foldoc_src, "--foldoc-dir")):
        sources[key] = (local_source(src, cache_dir, option) if src
                        else fetch_package(PACKAGES[key], cache_dir, option))
    general = read_wordnet(sources["wordnet"][0])
    computing = read_foldoc(sources["foldoc"][0])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(general, out_dir / "general.jsonl")
    write_jsonl(computing, out_dir / "computing.jsonl")
    summary = {"general.jsonl": {"records": len(general), "source": sources["wordnet"][1]},
               "computing.jsonl": {"records": len(computing), "source": sources["foldoc"][1]},
               "rules": (__doc__ or "").split("Parsing rules", 1)[-1].strip()}
    (out_dir / "prepare.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
