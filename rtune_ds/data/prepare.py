"""Real text corpora from two Debian packages, fetched by name (`apt-get download`, works without
root) and unpacked with `dpkg-deb -x`, or read from local files (an unpacked package tree, any
directory holding the files, or the .deb itself).

general.jsonl: WordNet 3.0 synset glosses (package wordnet-base)
- Files usr/share/wordnet/data.{noun,verb,adj,adv}, read in that order, lines in file order.
- Lines starting with two spaces are the licence header: skipped.
- A synset line is `offset lex_filenum ss_type w_cnt(2 hex digits) [word lex_id]... ptrs | gloss`.
  Record: text = the gloss after " | " (definition plus any `; "example"`s), stripped;
  lexname = LEXNAMES[lex_filenum] (the 45 lexicographer files of lexnames(5WN), e.g. noun.artifact);
  pos = noun/verb/adj/adv from the file (adjective satellites `s` are adj);
  lemmas = the synset's words, `_` -> space, the adjective position markers (a)/(p)/(ip) removed.

computing.jsonl: FOLDOC definitions (package dict-foldoc, dictd format)
- usr/share/dictd/foldoc.index lines are `headword TAB offset TAB length`, numbers in dictd's
  base64 (A-Z a-z 0-9 + /, most significant digit first) into the uncompressed foldoc.dict.dz
  (plain gzip). Several index lines (aliases, lower-cased) share one entry: each distinct
  (offset, length) span is one entry, records are in offset order.
- Skipped: spans named by `00-database-*` index lines (dictd metadata) and the Debian packaging
  notice `Dictionary.debian`.
- An entry is header lines (the headword, possibly wrapped over lines, then aliases), a blank line,
  then the body. headword = the shortest run of leading header lines that (whitespace collapsed,
  lower-cased) is one of the entry's index names, else the first line.
- Body cleaning, in order: cross references `{target}` become `target` and `{text (target)}`
  become `text` (`{(url)}` becomes `url`); braces enclosing `;` or other braces are code and
  stay. Whitespace runs become one space. A trailing last-updated date `(YYYY-MM-DD)` is dropped.
  Leading category tags (`<networking, standard> <networking> ...`) leave the text; category =
  the first name in the first tag (`networking`), null when the body does not start with a tag
  (e.g. numbered senses `1. <language> ...` keep their tags in the text).
- Entries whose cleaned text is shorter than 40 characters (mostly bare acronym expansions) are
  dropped.
"""
from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from rtune_ds.errors import ConfigError
from rtune_ds.files import cache_root
from rtune_ds.io import save_jsonl, save_text, staged_dir, staged_file

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
WORDNET_POS = ("noun", "verb", "adj", "adv")
WORDNET_PACKAGE, FOLDOC_PACKAGE = "wordnet-base", "dict-foldoc"
OPTIONS = {WORDNET_PACKAGE: "--wordnet-dir", FOLDOC_PACKAGE: "--foldoc-dir"}
DICTD_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
MIN_FOLDOC_CHARS = 40
RULES = {
    "general.jsonl": "wordnet-base data.{noun,verb,adj,adv}: one record per synset line (licence "
                     "header lines starting with two spaces skipped); text = gloss after ' | '; "
                     "lexname = lexicographer file of lex_filenum; lemmas with '_' -> ' ' and "
                     "adjective markers (a)/(p)/(ip) removed.",
    "computing.jsonl": "dict-foldoc foldoc.index + foldoc.dict.dz: one record per distinct entry "
                       "span, offset order, 00-database-* and Dictionary.debian skipped; "
                       "{x (target)} -> x, {target} -> target; whitespace collapsed; trailing "
                       "(YYYY-MM-DD) dropped; leading <category, ...> tags removed, category = "
                       "first name of the first tag else null; texts < 40 chars dropped.",
}


def default_cache_dir() -> Path:
    """Where fetched packages live."""
    return cache_root() / "debian"


def _local_hint(name: str) -> str:
    option = OPTIONS.get(name, "--wordnet-dir / --foldoc-dir")
    return (f"download the '{name}' package elsewhere (e.g. `apt-get download {name}` or "
            f"https://packages.debian.org/{name}) and pass {option} PATH, where PATH is a "
            f"directory holding the unpacked package files or the .deb file itself")


def _unpack(deb: Path, root: Path, name: str) -> Path:
    """dpkg-deb -x into a temp dir, then rename: an existing root is always complete."""
    if shutil.which("dpkg-deb") is None:
        raise ConfigError(f"cannot unpack {deb}: dpkg-deb is not installed; unpack it "
                           f"elsewhere (dpkg-deb -x, or `ar x` then tar -x of data.tar.*) and "
                           f"pass {OPTIONS.get(name, '--wordnet-dir / --foldoc-dir')} DIR")
    with staged_dir(root, first_wins=True) as tmp:
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise ConfigError(f"dpkg-deb -x {deb} failed ({proc.stderr.strip()[-300:]}); "
                               f"{_local_hint(name)}")
    return root


def fetch_debian_package(name: str, cache_dir: Path) -> Path:
    """Download (apt-get download) + unpack (dpkg-deb -x) into cache_dir/name/, return that root.
    Cached: when cache_dir/name/ exists, nothing is run. The .deb is kept in cache_dir."""
    cache_dir = Path(cache_dir)
    root = cache_dir / name
    if root.is_dir():
        return root
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise ConfigError(f"cannot fetch Debian package '{name}': {tool} is not installed; "
                               f"{_local_hint(name)}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    # A fresh download dir tells which .deb this call fetched (older versions may sit in cache_dir).
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=f".download-{name}-") as dl:
        proc = subprocess.run(["apt-get", "download", name], cwd=dl, capture_output=True,
                              text=True)
        debs = sorted(Path(dl).glob(f"{name}_*.deb"))
        if proc.returncode != 0 or len(debs) != 1:
            raise ConfigError(f"`apt-get download {name}` failed "
                               f"({(proc.stderr or proc.stdout).strip()[-300:]}); try "
                               f"`apt-get update` first, or {_local_hint(name)}")
        deb = cache_dir / debs[0].name
        with staged_file(deb) as tmp:
            shutil.copyfile(debs[0], tmp)
    return _unpack(deb, root, name)


def _find(root: Path, filename: str, package: str) -> Path:
    if root.is_file() and root.name == filename:
        return root
    found = sorted(Path(root).rglob(filename))
    if not found:
        raise ConfigError(f"no file named {filename} below {root} (expected the unpacked "
                           f"'{package}' package, or {_local_hint(package)})")
    return found[0]


def read_wordnet_glosses(root: Path) -> list[dict]:
    """One record per synset of WordNet's data.{noun,verb,adj,adv} found below root."""
    records = []
    for pos in WORDNET_POS:
        path = _find(Path(root), f"data.{pos}", WORDNET_PACKAGE)
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue
            head, gloss = line.split(" | ", 1)
            fields = head.split()
            words = fields[4:4 + 2 * int(fields[3], 16):2]
            records.append({
                "text": gloss.strip(),
                "lexname": LEXNAMES[int(fields[1])],
                "pos": pos,
                "lemmas": [re.sub(r"\((a|p|ip)\)$", "", w).replace("_", " ") for w in words],
            })
    return records


def _dictd_int(digits: str) -> int:
    value = 0
    for ch in digits:
        value = value * 64 + DICTD_B64.index(ch)
    return value


CROSS_REF = re.compile(r"\{([^{};]+)\}")
REF_TARGET = re.compile(r"(.*?)(\s*)\(([^()]+)\)\s*", re.S)
TRAILING_DATE = re.compile(r"\s*\(\d{4}-?\d\d-\d\d\)$")
LEADING_TAGS = re.compile(r"^(?:<([^<>@]+)>\s*)+")


def _resolve_ref(match: re.Match) -> str:
    inner = match.group(1)
    # `{text (target)}` shows `text`. The `(target)` needs a space before it or a URL scheme,
    # so that literals like `{x: P(x)}` stay whole.
    ref = REF_TARGET.fullmatch(inner)
    if ref and (ref.group(2) or not ref.group(1) or ":" in ref.group(3)):
        return ref.group(1).strip() or ref.group(3).strip()
    return inner


def clean_foldoc_body(body: str) -> tuple[str, str | None]:
    """(cleaned text, category or None) of one FOLDOC entry body."""
    text = body
    for _ in range(3):  # a few nested refs like {inherits {inheritance}}
        text, n = CROSS_REF.subn(_resolve_ref, text)
        if not n:
            break
    text = TRAILING_DATE.sub("", " ".join(text.split()))
    category = None
    tags = LEADING_TAGS.match(text)
    if tags:
        category = re.match(r"<([^<>]+)>", text).group(1).split(",")[0].strip() or None
        text = text[tags.end():].strip()
    return text, category


def read_foldoc_definitions(root: Path) -> list[dict]:
    """One record per FOLDOC entry (foldoc.index + foldoc.dict.dz found below root)."""
    index = _find(Path(root), "foldoc.index", FOLDOC_PACKAGE)
    with gzip.open(_find(Path(root), "foldoc.dict.dz", FOLDOC_PACKAGE)) as fh:
        data = fh.read()
    names: dict[tuple[int, int], set[str]] = {}
    skip = set()
    for line in index.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        span = (_dictd_int(parts[1]), _dictd_int(parts[2]))
        names.setdefault(span, set()).add(" ".join(parts[0].split()).lower())
        if parts[0].startswith("00-database") or parts[0].lower() == "dictionary.debian":
            skip.add(span)
    records = []
    for span in sorted(set(names) - skip):
        entry = data[span[0]:span[0] + span[1]].decode("utf-8", "replace").strip("\n")
        header, _, body = entry.partition("\n\n")
        lines = header.split("\n")
        headword = " ".join(lines[0].split())
        for i in range(1, len(lines) + 1):
            candidate = " ".join(" ".join(lines[:i]).split())
            if candidate.lower() in names[span]:
                headword = candidate
                break
        text, category = clean_foldoc_body(body)
        if len(text) >= MIN_FOLDOC_CHARS:
            records.append({"text": text, "headword": headword, "category": category})
    return records


def package_version(src: Path, name: str) -> str | None:
    """Version of a .deb (dpkg-deb -f, else its file name) or of an unpacked tree (its
    usr/share/doc/NAME/changelog.Debian.gz first line); None when neither says."""
    if src.is_file() and src.suffix == ".deb":
        if shutil.which("dpkg-deb"):
            proc = subprocess.run(["dpkg-deb", "-f", str(src), "Version"], capture_output=True,
                                  text=True)
            if proc.returncode == 0 and proc.stdout.strip():
                return proc.stdout.strip()
        parts = src.name.split("_")
        return parts[1].replace("%3a", ":") if len(parts) == 3 else None
    for changelog in sorted(src.rglob("changelog.Debian.gz")) if src.is_dir() else []:
        if changelog.parent.name == name:
            with gzip.open(changelog, "rt", encoding="utf-8", errors="replace") as fh:
                found = re.match(r"\S+ \(([^)]+)\)", fh.readline())
            return found.group(1) if found else None
    return None


def _source_root(name: str, src: Path | None, cache_dir: Path) -> tuple[Path, Path]:
    """(root to read, what to take the version from) of a package: fetched, or a local dir/.deb."""
    if src is None:
        root = fetch_debian_package(name, cache_dir)
        debs = sorted(Path(cache_dir).glob(f"{name}_*.deb"), key=lambda p: p.stat().st_mtime)
        return root, debs[-1] if debs else root
    src = Path(src).expanduser()
    if not src.exists():
        raise ConfigError(f"{OPTIONS[name]} {src}: no such file or directory")
    if src.is_file() and src.suffix == ".deb":
        root = Path(cache_dir) / "local" / src.stem
        return (root if root.is_dir() else _unpack(src, root, name)), src
    return src, src


def prepare_corpora(out_dir: Path, cache_dir: Path, wordnet_src: Path | None = None,
                    foldoc_src: Path | None = None) -> dict:
    """Write out_dir/{general,computing}.jsonl and out_dir/prepare.json (written last: counts,
    package versions, parsing rules); return the prepare.json dict. wordnet_src/foldoc_src:
    a local directory (searched recursively) or .deb file used instead of fetching."""
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    corpora = {}
    for filename, package, src, reader in (
            ("general.jsonl", WORDNET_PACKAGE, wordnet_src, read_wordnet_glosses),
            ("computing.jsonl", FOLDOC_PACKAGE, foldoc_src, read_foldoc_definitions)):
        root, version_src = _source_root(package, src, cache_dir)
        corpora[filename] = (package, str(src) if src else f"apt-get download {package}",
                             package_version(version_src, package), reader(root))
    summary: dict = {}
    for filename, (package, source, version, records) in corpora.items():
        save_jsonl(records, out_dir / filename, ensure_ascii=False)
        summary[filename] = {"records": len(records), "package": package, "version": version,
                             "source": source}
    general, computing = corpora["general.jsonl"][3], corpora["computing.jsonl"][3]
    summary["general.jsonl"]["by_pos"] = {p: sum(r["pos"] == p for r in general)
                                          for p in WORDNET_POS}
    summary["computing.jsonl"]["with_category"] = sum(r["category"] is not None
                                                      for r in computing)
    summary["rules"] = RULES
    save_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", out_dir / "prepare.json")
    return summary
