"""Object keys are user input: hostile ones go through the stages without touching the filesystem.

Every key below is a real object in the real S3 server holding a real recording. The
stages (plain functions, no Prefect) must ingest, normalize and archive or quarantine it,
and the key must never become a file path or a subprocess argument: the work files are
named from the content hash (the run key), and ffmpeg/ffprobe get the work path only.
Each case snapshots the filesystem around the data directory (and /tmp, the working
directory, the home directory, / and /etc) before and after, and checks that nothing new
appeared outside ``settings.data_dir`` and nothing anywhere is named from the key.

The embedded SeaweedFS stores some keys under a canonical name: a leading or doubled
``/`` collapses (``/etc/passwd`` is ``etc/passwd``) and ``\\`` becomes ``/``. Reads
and copies by the original key resolve to the same object, so the expectations are
written against the name the server lists. Keys with ``.`` or ``..`` segments cannot be
stored at all (the client refuses them, or the server does); they get a test of their own.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from scribeline import stages, storage
from scribeline.storage import ObjectRef

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "en_harvard_birch_canoe.wav"  # 3.3 s, 16 kHz mono

NASTY_KEYS = {
    "absolute": "/etc/passwd",
    "absolute-tmp": "/tmp/pwned-abs.wav",
    # Valid sh: a shell given it would create pwned-subst, pwned-semi, pwned-tick and pwned-redir.wav.
    "shell": "$(touch pwned-subst);touch pwned-semi|cat&`touch pwned-tick`>pwned-redir.wav",
    "whitespace": "sp ace/new\nline\ttab\rcr.wav",
    "padded": " lead and trail .wav ",
    "backslash": "back\\slash\\pwned-bs.wav",
    "unicode": "café/ünïcode 录音.wav",
    "bidi": "a/\u202epwned-bidi.exe",
    "option": "-i pwned-dash.wav",
    "protocol": "file:pwned-proto.wav",
    "percent": "a//b/%2e%2e/%2F..%2fpwned-pct.wav",
    "query": "q?x=1#frag&y=*[pwned-glob].wav",
    "tilde": "~/pwned-tilde.wav",
    "control": "\x01ctl\x7fpwned-ctl.wav",
    # 809 bytes, 301 segments; one segment is 200 bytes (a path component may be 255).
    "deep": "deep/" + "d/" * 300 + "L" * 200 + ".wav",
}

# S3 keys that no client here can address: minio-py refuses '.'/'..' segments, and
# SeaweedFS refuses them after turning '\' into '/'.
DOT_KEYS = ["../../etc/passwd", "a/../../pwned-dots.wav", "./pwned-dot.wav", "..", "x/.",
            "..\\..\\pwned-bsdots.wav", "a\\..\\pwned-bsdot.wav"]


def _names(key: str) -> set[str]:
    """Names a careless use of ``key`` as a path (or shell text) would create."""
    names = {p for p in re.split(r"[/\\]", key) if p.strip(" .")}
    names |= set(re.findall(r"pwned-[\w-]+", key))
    names |= {n + ".part" for n in names} | {n + ".part.minio" for n in names}
    return names


class Snapshot:
    """What exists around the data directory: full trees where nothing else writes during the
    test, top-level names where other programs may (/tmp, the checkout, ~, /, /etc)."""

    def __init__(self, settings, tmp_path: Path):
        self.data_dir = settings.data_dir
        prefect_home = Path(os.environ.get("PREFECT_HOME", self.data_dir / "__none__")).resolve()
        self.deep_roots = {self.data_dir.parent, tmp_path.parent}
        self.skip = {self.data_dir, prefect_home}  # the data directory; a Prefect server's own files
        self.shallow_roots = {Path("/tmp"), Path.cwd(), ROOT, Path.home(), Path("/"), Path("/etc")}
        self.outside, self.shared = self._outside(), self._shared()
        self.inside = self._inside()
        self.passwd = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()

    def _outside(self) -> set[Path]:
        """Everything beside the data directory (and in pytest's temporary folders)."""
        seen: set[Path] = set()
        for root in self.deep_roots:
            for dirpath, dirnames, filenames in os.walk(root):
                here = Path(dirpath)
                dirnames[:] = [d for d in dirnames if here / d not in self.skip]
                seen.update(here / n for n in dirnames + filenames)
        return seen

    def _shared(self) -> set[Path]:
        """Top-level entries where other programs write too (SeaweedFS puts its sockets in /tmp)."""
        return {root / n for root in self.shallow_roots for n in os.listdir(root)}

    def _inside(self) -> set[Path]:
        """Everything in the data directory but the S3 server's own store."""
        seen: set[Path] = set()
        for dirpath, dirnames, filenames in os.walk(self.data_dir):
            here = Path(dirpath)
            dirnames[:] = [d for d in dirnames if here / d != self.data_dir / "s3"]
            seen.update(here / n for n in dirnames + filenames)
        return seen

    def check(self, key: str) -> None:
        names = _names(key)
        new_outside = self._outside() - self.outside
        assert not new_outside, f"created outside {self.data_dir}: {sorted(map(str, new_outside))}"
        anywhere = (self._inside() - self.inside) | new_outside | (self._shared() - self.shared)
        named = [p for p in anywhere if p.name in names or "pwned" in p.name]
        assert not named, f"paths named from the key {key!r}: {named}"
        assert hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest() == self.passwd


@pytest.fixture()
def spawned(monkeypatch):
    """Every process the stages start (ffprobe via ffmpeg-python, ffmpeg): argv and keywords."""
    calls: list[tuple[object, dict]] = []
    real = subprocess.Popen

    class Spy(real):
        def __init__(self, args, *rest, **kwargs):
            calls.append((args, dict(kwargs)))
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Spy)
    return calls


def _canonical(settings, key: str, upload) -> str:
    """Upload, and return the name the server lists the new object under."""
    before = set(storage.list_keys(settings, settings.bucket_incoming))
    upload()
    new = set(storage.list_keys(settings, settings.bucket_incoming)) - before
    assert len(new) == 1, f"{key!r} listed as {new}"
    return new.pop()


def _keys(settings, bucket: str) -> set[str]:
    return set(storage.list_keys(settings, bucket))


@pytest.mark.parametrize("outcome", ["archive", "quarantine"])
@pytest.mark.parametrize("key", list(NASTY_KEYS.values()), ids=list(NASTY_KEYS))
def test_a_hostile_key_goes_through_the_stages_and_writes_nothing_outside_the_data_dir(
        s3, media_dir, tmp_path, spawned, key, outcome):
    settings = s3
    snap = Snapshot(settings, tmp_path)
    processed, quarantined = _keys(settings, settings.bucket_processed), _keys(settings, settings.bucket_quarantine)
    normalized_before = _keys(settings, settings.bucket_normalized)

    ref = None

    def upload():
        nonlocal ref
        ref = storage.upload_file(settings, media_dir / SOURCE, key=key)

    canon = _canonical(settings, key, upload)
    assert ref.key == key
    try:
        ingested = stages.ingest(settings, ref)
        run_key = ingested["run_key"]
        assert ingested["key"] == key and ingested["size"] == (media_dir / SOURCE).stat().st_size
        assert ingested["sha256"] == hashlib.sha256((media_dir / SOURCE).read_bytes()).hexdigest()
        assert run_key == settings.run_key(ingested["sha256"]) and re.fullmatch(r"[0-9a-f]{32}-[0-9a-f]+", run_key)

        normalized = stages.normalize(settings, ingested)
        assert normalized["info"]["sample_rate"] == 16000
        assert 3.0 < normalized["duration_s"] < 3.6
        assert [t["object_key"] for t in normalized["tracks"]] == [f"{run_key}/audio.s16"]
        assert all(k.startswith(f"{run_key}/") for k in _keys(settings, settings.bucket_normalized) - normalized_before)

        # The only work files: the scratch folder (empty again) and the run key's folder.
        work = settings.data_dir / "work"
        assert not list((work / "incoming").iterdir())
        assert sorted(p.name for p in (work / run_key).iterdir()) == ["audio.s16", "source"]

        # ffprobe and ffmpeg ran as argv lists, no shell, and never saw the key.
        assert len(spawned) >= 2
        for args, kwargs in spawned:
            assert isinstance(args, (list, tuple)) and not kwargs.get("shell")
            assert Path(args[0]).name in {"ffprobe", "ffmpeg"}
            assert str(work / run_key / "source") in args
            rest = [str(a).replace(str(work / run_key / "source"), "") for a in args]
            assert not [a for a in rest for name in _names(key) if len(name) > 2 and name in a]
        snap.check(key)

        sha16 = ingested["sha256"][:16]
        if outcome == "archive":
            out = stages.archive(settings, ingested)
            assert out.bucket == settings.bucket_processed and out.key == f"{sha16}/{key}"
            assert _keys(settings, settings.bucket_processed) - processed == {f"{sha16}/{canon}"}
            assert _keys(settings, settings.bucket_quarantine) == quarantined
        else:
            record = stages.quarantine(settings, ref, "normalize", "test", 1, ingested["sha256"], run_key)
            # The record may be an earlier one: the same content quarantined under another key.
            assert record["record_key"].startswith("records/") and record["sha256"] == ingested["sha256"]
            assert storage.get_json(settings, settings.bucket_quarantine, record["record_key"])["sha256"] == ingested["sha256"]
            media = _keys(settings, settings.bucket_quarantine) - quarantined - {record["record_key"]}
            assert len(media) == 1 and re.fullmatch(rf"media/[^/]*{sha16}[^/]*/{re.escape(canon)}", media.pop())
            assert _keys(settings, settings.bucket_processed) == processed
        assert canon not in _keys(settings, settings.bucket_incoming)
        assert not (work / run_key).exists()  # both outcomes clean the run's work folder
        snap.check(key)
    finally:
        if storage.exists(settings, ref.bucket, ref.key):
            storage.client(settings).remove_object(ref.bucket, ref.key)


@pytest.mark.parametrize("key", DOT_KEYS)
def test_a_key_with_dot_segments_is_refused_before_anything_is_written(s3, media_dir, tmp_path, key):
    settings = s3
    snap = Snapshot(settings, tmp_path)
    incoming = _keys(settings, settings.bucket_incoming)
    with pytest.raises((ValueError, storage.S3Error)):
        storage.upload_file(settings, media_dir / SOURCE, key=key)
    assert _keys(settings, settings.bucket_incoming) == incoming
    # Such a key may exist in another S3 store (AWS allows it): ingest fails before it opens a file.
    with pytest.raises((ValueError, storage.S3Error)):
        stages.ingest(settings, ObjectRef(settings.bucket_incoming, key, "", 1))
    assert not list((settings.data_dir / "work" / "incoming").iterdir())
    snap.check(key)


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield node, owner, name


def test_no_shell_anywhere_in_the_pipeline():
    """No shell=True, no os.system/os.popen, and every subprocess gets an argv list, not a string
    (allocator's os.execve re-runs the interpreter with an argv list: no shell either)."""
    spawn = {"run", "Popen", "call", "check_call", "check_output"}
    files = [p for d in ("scribeline", "flows", "tasks") for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 10
    found = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node, owner, name in _calls(tree):
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append(f"{where}: shell=")
            if (owner, name) in {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"),
                                 ("subprocess", "getstatusoutput")}:
                found.append(f"{where}: {owner}.{name}")
            if owner == "subprocess" and name in spawn and node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
                found.append(f"{where}: {owner}.{name} with a command string")
    assert found == []
