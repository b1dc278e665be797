"""Fetch the realistic benchmark corpus (benchmark/corpus.tsv) into benchmark/.corpus/, checking each file's sha256.

    .venv/bin/python -m benchmark.fetch_corpus [--from-mirror /work/.mirror] [--cache DIR] [--only ID,ID]

Every file is a verbatim copy of a file in a public GitHub repository at a pinned
commit; by default it comes from ``https://raw.githubusercontent.com/<repo>/<commit>/<path>``.
``--from-mirror DIR`` reads the same blobs with git from local snapshots of those
repositories instead (``DIR/<owner>+<name>/repo``, bare git directories), for machines
that cannot reach GitHub. Files already in the cache with the right hash are kept.
The audio is never committed: the cache is in .gitignore.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "benchmark" / "corpus.tsv"
CACHE = ROOT / "benchmark" / ".corpus"


@dataclass(frozen=True)
class Entry:
    id: str
    language: str
    kind: str
    duration_s: float
    ref_quality: str  # exact | model | none
    repo: str
    commit: str
    path: str
    sha256: str
    bytes: int
    licence: str
    reference: str
    ref_source: str

    @property
    def scored_reference(self) -> str | None:
        """The text WER is measured against; None where the corpus has none."""
        return self.reference if self.ref_quality in ("exact", "model") and self.reference else None

    def cached(self, cache: Path = CACHE) -> Path:
        return cache / f"{self.id}{Path(self.path).suffix}"

    @property
    def url(self) -> str:
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{urllib.parse.quote(self.path)}"


def load(tsv: Path = CORPUS) -> list[Entry]:
    with open(tsv, encoding="utf-8", newline="") as fh:
        return [Entry(**{**row, "duration_s": float(row["duration_s"]), "bytes": int(row["bytes"])})
                for row in csv.DictReader(fh, delimiter="\t")]


def from_github(entry: Entry) -> bytes:
    with urllib.request.urlopen(entry.url, timeout=60) as response:
        return response.read()


def from_mirror(mirror: Path, entry: Entry) -> bytes:
    folder = mirror / entry.repo.replace("/", "+")
    git_dir = folder / "repo" if (folder / "repo").is_dir() else folder
    return subprocess.run(["git", f"--git-dir={git_dir}", "show", f"{entry.commit}:{entry.path}"],
                          check=True, capture_output=True).stdout


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(entries: list[Entry], cache: Path = CACHE, mirror: Path | None = None) -> list[Path]:
    """Each entry's file in the cache, fetched where missing or different; raises on a hash mismatch."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    for entry in entries:
        path = entry.cached(cache)
        if not (path.exists() and _sha256(path.read_bytes()) == entry.sha256):
            data = from_mirror(mirror, entry) if mirror else from_github(entry)
            if _sha256(data) != entry.sha256 or len(data) != entry.bytes:
                raise ValueError(f"{entry.id}: {entry.repo}@{entry.commit[:10]}:{entry.path} does not match corpus.tsv")
            tmp = path.with_suffix(path.suffix + ".part")
            tmp.write_bytes(data)
            tmp.replace(path)
            print(f"fetched {entry.id} ({len(data)} bytes)", file=sys.stderr)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from-mirror", type=Path, metavar="DIR", help="read blobs from git snapshots in DIR, not GitHub")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--only", help="comma-separated entry ids")
    args = p.parse_args(argv)
    entries = load()
    if args.only:
        wanted = set(args.only.split(","))
        entries = [e for e in entries if e.id in wanted]
    paths = fetch(entries, args.cache, args.from_mirror)
    print(f"{len(paths)} files, {sum(e.duration_s for e in entries):.0f} s of audio, in {args.cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
