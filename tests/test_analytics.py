"""What analysts get from a real pipeline run: full-text search, scores against uploaded reference
and corrected transcripts, the metrics views, and the HTML report rendered in a headless browser.

One run of the flow (`scribeline run`'s path: SeaweedFS over HTTP, a Prefect API, whisper, Presidio)
over recordings from ../shared/media under two key prefixes, with sidecar transcripts uploaded beside
them; every figure is checked against a computation of this file's own (its own Levenshtein distance).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scribeline import storage, warehouse
from tests.conftest import ROOT, manifest, own_buckets, speak

SCRIBELINE = [sys.executable, "-m", "scribeline.cli"]

MEDIA = {  # object key -> file in ../shared/media
    "team-a/en_jfk.flac": "en_jfk.flac",
    "team-a/en_timit_ldc93s1.wav": "en_timit_ldc93s1.wav",
    "team-b/en_ls_1272-128104-0000.wav": "en_ls_1272-128104-0000.wav",
    "team-b/en_harvard_birch_canoe.wav": "en_harvard_birch_canoe.wav",
}
PII_KEY = "team-a/support call.wav"
BROKEN_KEY = "team-b/broken.mp3"
LATE_KEY = "team-c/late.wav"  # its reference comes with the first run, the media only with the second
# A word nobody says: the corrected transcript that holds it must not reach the warehouse.
MARKER = "zyxquilt"


def _reference(name: str) -> str:
    return manifest()[name]["reference_text"]


def _sidecars() -> dict[str, str]:
    """Sidecar key -> its text: references (the corpus transcripts) and human corrections."""
    return {
        "team-a/en_jfk.flac.ref.txt": _reference("en_jfk.flac"),
        "team-a/en_timit_ldc93s1.wav.ref.txt": _reference("en_timit_ldc93s1.wav"),
        "team-b/en_ls_1272-128104-0000.wav.ref.txt": _reference("en_ls_1272-128104-0000.wav"),
        # what reviewers typed: the same words in their own case and punctuation, one word changed
        "team-a/en_jfk.flac.corrected.txt": "And so my fellow Americans: ask not what your country can do for you - "
                                            "ask what you can do for your nation!\n",
        "team-b/en_ls_1272-128104-0000.wav.corrected.txt": "Mister Quilter is the apostle of the middle classes, "
                                                           "and we're glad to welcome his gospel.",
        "team-b/en_harvard_birch_canoe.wav.corrected.txt": f"The birch canoe slid on the smooth {MARKER} planks.",
        f"{LATE_KEY}.ref.txt": _reference("en_harvard_birch_canoe.wav"),
    }


# ------------------------------------------------------------------ this file's own scoring
def words_of(text: str) -> list[str]:
    return re.sub(r"[^0-9a-z]+", " ", text.lower().replace("'", "")).split()


def levenshtein(a: list, b: list) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def test_levenshtein_of_this_file():
    assert levenshtein("kitten".split(), "kitten".split()) == 0
    assert levenshtein(list("kitten"), list("sitting")) == 3
    assert levenshtein("a b c d".split(), "a x c d e".split()) == 2
    assert levenshtein([], "a b".split()) == 2


# ------------------------------------------------------------------ the run
@pytest.fixture(scope="module")
def run(s3, prefect_api, media_dir, tmp_path_factory):
    from flows.process_incoming import process_incoming

    tmp = tmp_path_factory.mktemp("analytics")
    # Buckets and a warehouse of its own (the other modules' runs share the session's defaults); held
    # for the module, so the `scribeline` commands below see them too.
    with own_buckets("analytics", tmp) as settings:
        yield _run(settings, media_dir, tmp, process_incoming)


def _run(settings, media_dir, tmp, process_incoming):
    for key, name in MEDIA.items():
        storage.upload_file(settings, media_dir / name, key=key)
    storage.upload_file(settings, speak("Hello, my name is John Smith and my phone number is 212 555 0199.",
                                        tmp / "support.wav"), key=PII_KEY)
    (tmp / "broken.mp3").write_text("not audio at all\n")
    storage.upload_file(settings, tmp / "broken.mp3", key=BROKEN_KEY)
    for key, text in _sidecars().items():
        path = tmp / "sidecar.txt"
        path.write_text(text, encoding="utf-8")
        storage.upload_file(settings, path, key=key)

    first = {o["key"]: o for o in process_incoming()}
    waiting_after_first = [k for k in storage.list_keys(settings, settings.bucket_incoming) if k.startswith("team-")]
    # The late reference's media arrives: the same content as a media loaded already (no transcription).
    storage.upload_file(settings, media_dir / "en_harvard_birch_canoe.wav", key=LATE_KEY)
    second = {o["key"]: o for o in process_incoming()}
    return settings, first, second, waiting_after_first


def _media_id(settings, key: str) -> str:
    rows = warehouse.query(settings.warehouse, "SELECT DISTINCT media_id FROM ledger WHERE bucket = ? AND key = ? "
                                               "AND state <> 'quarantined'", [settings.bucket_incoming, key])
    assert len(rows) == 1, (key, rows)
    return rows.iloc[0]["media_id"]


def _machine_text(settings, media_id: str) -> str:
    return warehouse.query(settings.warehouse, "SELECT text FROM transcripts WHERE media_id = ?", [media_id]).iloc[0]["text"]


def test_sidecars_are_not_media_and_are_never_quarantined(run):
    settings, first, second, waiting_after_first = run
    assert first[BROKEN_KEY]["state"] == "quarantined"
    for key in MEDIA:
        assert first[key]["state"] in ("processed", "finished"), first[key]
    assert not [k for k in {**first, **second} if k.endswith((".ref.txt", ".corrected.txt"))]
    assert not [k for k in storage.list_keys(settings, settings.bucket_quarantine) if k.endswith(".txt")]
    ledger = warehouse.query(settings.warehouse, "SELECT key FROM ledger")["key"].tolist()
    assert not [k for k in ledger if k.endswith(".txt")]


def test_a_sidecar_waits_for_its_media_then_is_scored_once(run):
    settings, first, second, waiting_after_first = run
    # After the first run only the reference whose media had not come yet was left in incoming ...
    assert waiting_after_first == [f"{LATE_KEY}.ref.txt"]
    # ... the second run loaded nothing new (same content) and scored it through the ledger.
    assert second[LATE_KEY]["state"] == "processed" and "already in the warehouse" in second[LATE_KEY]["note"]
    assert [k for k in storage.list_keys(settings, settings.bucket_incoming) if k.startswith("team-")] == []
    moved = storage.list_keys(settings, settings.bucket_processed, "sidecars/")
    assert sorted(k.split("/", 2)[2] for k in moved) == sorted(_sidecars())
    scores = warehouse.query(settings.warehouse, "SELECT sidecar_key, count(*) AS n FROM transcript_scores "
                                                 "GROUP BY sidecar_key")
    assert dict(zip(scores["sidecar_key"], scores["n"])) == {key: 1 for key in _sidecars()}


def test_scores_match_an_independent_levenshtein(run):
    settings, *_ = run
    for key, text in _sidecars().items():
        media_key, kind = (key[:-len(".ref.txt")], "reference") if key.endswith(".ref.txt") else \
                          (key[:-len(".corrected.txt")], "correction")
        media_id = _media_id(settings, media_key)
        hyp, ref = words_of(_machine_text(settings, media_id)), words_of(text)
        row = warehouse.query(settings.warehouse, "SELECT * FROM transcript_scores WHERE sidecar_key = ?", [key]).iloc[0]
        assert (row["media_id"], row["kind"], row["source_key"]) == (media_id, kind, media_key)
        assert row["reference_words"] == len(ref) and row["hypothesis_words"] == len(hyp)
        assert row["word_edits"] == levenshtein(ref, hyp), (key, ref, hyp)
        assert row["wer"] == pytest.approx(levenshtein(ref, hyp) / len(ref))
        chars_ref, chars_hyp = list(" ".join(ref)), list(" ".join(hyp))
        assert row["cer"] == pytest.approx(levenshtein(chars_ref, chars_hyp) / len(chars_ref))
        media = warehouse.query(settings.warehouse, "SELECT model, pipeline_version FROM media WHERE media_id = ?",
                                [media_id]).iloc[0]
        assert (row["model"], row["pipeline_version"]) == (media["model"], media["pipeline_version"])
    # tiny.en reads these clean recordings well: the WER a user sees is low but real
    jfk = warehouse.query(settings.warehouse, "SELECT wer FROM transcript_scores WHERE sidecar_key = ?",
                          ["team-a/en_jfk.flac.ref.txt"]).iloc[0]["wer"]
    assert jfk <= 0.1


def test_the_sidecars_text_never_reaches_the_warehouse(run):
    settings, *_ = run
    con = warehouse.connect(settings.warehouse, read_only=True)
    try:
        columns = con.execute("SELECT table_name, column_name FROM information_schema.columns "
                              "WHERE table_catalog = 'lake' AND data_type = 'VARCHAR'").fetchall()
        for table, column in columns:
            hits = con.execute(f'SELECT count(*) FROM "{table}" WHERE "{column}" ILIKE ?', [f"%{MARKER}%"]).fetchone()[0]
            assert hits == 0, (table, column)
    finally:
        con.close()


def test_wer_trend_and_correction_views(run):
    settings, *_ = run
    expected_edits = expected_words = 0
    corrections = {}
    for key, text in _sidecars().items():
        kind = "reference" if key.endswith(".ref.txt") else "correction"
        media_key = key[:-len(".ref.txt")] if kind == "reference" else key[:-len(".corrected.txt")]
        media_id = _media_id(settings, media_key)
        ref, hyp = words_of(text), words_of(_machine_text(settings, media_id))
        if kind == "reference":
            expected_edits += levenshtein(ref, hyp)
            expected_words += len(ref)
        else:
            corrections[media_id] = (levenshtein(ref, hyp), len(ref))

    trend = warehouse.query(settings.warehouse, "SELECT * FROM wer_trend")
    assert trend["media"].sum() == 4  # jfk, timit, LibriSpeech, and the late reference (the birch canoe)
    assert trend["word_edits"].sum() == expected_edits and trend["reference_words"].sum() == expected_words
    for row in trend.itertuples():
        assert row.wer == pytest.approx(row.word_edits / row.reference_words)
        assert row.model == Path(os.environ["SCRIBELINE_MODEL"]).name

    rates = warehouse.query(settings.warehouse, "SELECT * FROM correction_rates")
    assert set(rates["media_id"]) == set(corrections)
    for row in rates.itertuples():
        edits, words = corrections[row.media_id]
        assert (row.word_edits, row.corrected_words) == (edits, words)
        assert row.correction_rate == pytest.approx(edits / words)
    # the reviewer's "nation" for "country" is at least one edit
    jfk = rates[rates["source_key"] == "team-a/en_jfk.flac"].iloc[0]
    assert jfk["word_edits"] >= 1
    ctrend = warehouse.query(settings.warehouse, "SELECT * FROM correction_trend")
    assert ctrend["media"].sum() == 3
    assert ctrend["word_edits"].sum() == sum(e for e, _ in corrections.values())
    assert ctrend["corrected_words"].sum() == sum(w for _, w in corrections.values())


def test_failure_rates_by_prefix_and_codec(run):
    settings, *_ = run
    by_prefix = warehouse.query(settings.warehouse, "SELECT * FROM failure_rates_by_prefix").set_index("source_prefix")
    a, b = by_prefix.loc["team-a"], by_prefix.loc["team-b"]
    assert (a["objects"], a["quarantined"], a["quarantine_rate"]) == (3, 0, 0)
    assert (b["objects"], b["quarantined"]) == (3, 1)
    assert b["quarantine_rate"] == pytest.approx(1 / 3)
    assert b["error_rate"] >= b["quarantine_rate"]
    by_codec = warehouse.query(settings.warehouse, "SELECT * FROM failure_rates_by_codec").set_index("codec")
    # the text file named .mp3 was never decoded: its codec is not recorded; FLAC is jfk's
    assert by_codec.loc["(not recorded)", "quarantined"] >= 1
    assert by_codec.loc["flac", "quarantined"] == 0 and by_codec.loc["flac", "objects"] >= 1
    ledger = warehouse.query(settings.warehouse, "SELECT count(*) AS n FROM ledger").iloc[0]["n"]
    assert by_codec["objects"].sum() == ledger == by_prefix["objects"].sum()


def test_latency_and_throughput_views_add_up(run):
    settings, *_ = run
    media = warehouse.query(settings.warehouse, "SELECT duration_s, processing_s FROM media")
    latency = warehouse.query(settings.warehouse, "SELECT * FROM latency_by_duration")
    assert latency["media"].sum() == len(media)
    short = media[media["duration_s"] < 10]  # timit, harvard, LibriSpeech, the support call
    row = latency[latency["duration_bucket"] == "under 10 s"].iloc[0]
    assert row["media"] == len(short) >= 4
    assert row["max_processing_s"] == pytest.approx(short["processing_s"].max())
    assert row["realtime_factor"] == pytest.approx(short["duration_s"].sum() / short["processing_s"].sum())
    hourly = warehouse.query(settings.warehouse, "SELECT * FROM throughput_hourly")
    assert hourly["media"].sum() == len(media)
    assert hourly["audio_s"].sum() == pytest.approx(media["duration_s"].sum())
    assert hourly["quarantined"].sum() >= 1


# ------------------------------------------------------------------ search
def scribeline(*args, timeout=300):
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([*SCRIBELINE, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_search_finds_a_spoken_word_with_its_offsets_best_first(run):
    result = scribeline("search", "country", "--json")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert hits and hits[0]["source_object"].endswith("en_jfk.flac")
    assert "country" in hits[0]["text"].lower()
    assert 0 <= hits[0]["start_s"] < hits[0]["end_s"] <= 11.05
    several = json.loads(scribeline("search", "country", "apostle", "canoe", "--json", "--limit", "50").stdout)
    scores = [h["score"] for h in several]
    assert scores == sorted(scores, reverse=True)
    found = {Path(h["source_object"]).name for h in several}
    assert {"en_jfk.flac", "en_ls_1272-128104-0000.wav", "en_harvard_birch_canoe.wav"} <= found
    assert len(json.loads(scribeline("search", "country", "apostle", "canoe", "--json", "--limit", "1").stdout)) == 1
    table = scribeline("search", "apostle")
    assert table.returncode == 0 and "en_ls_1272-128104-0000.wav" in table.stdout and "0:00:0" in table.stdout


def test_a_redacted_value_is_not_searchable(run):
    # the support call is indexed: its other words are found ...
    phone = json.loads(scribeline("search", "phone", "--json").stdout)
    assert any(h["source_object"].endswith("support call.wav") for h in phone)
    assert any("<" in h["text"] for h in phone if h["source_object"].endswith("support call.wav"))
    # ... the name and the number it held are not, nor is the placeholder a word
    for value in ("Smith", "John", "0199", "person"):
        hits = json.loads(scribeline("search", value, "--json").stdout)
        assert not [h for h in hits if h["source_object"].endswith("support call.wav")], (value, hits)
    assert "no matching segment" in scribeline("search", "Smith").stdout


# ------------------------------------------------------------------ report
def _chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={cwd / 'profile'}",
                           "--window-size=1400,3000", "--virtual-time-budget=10000", *args],
                          capture_output=True, text=True, timeout=180, cwd=cwd)


def test_report_renders_its_charts_in_a_browser(run, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs it)")
    out = tmp_path / "report.html"
    made = scribeline("report", "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert str(out) in made.stdout
    page = out.read_text(encoding="utf-8")
    assert "src=\"http" not in page and "src='http" not in page  # self-contained: plotly.js inlined
    assert page.count("Plotly.newPlot") >= 6

    dom = _chromium("--dump-dom", out.as_uri(), cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    sections = {m.group(1): m.group(2) for m in re.finditer(r"<section class=\"chart\" id=\"(\w+)\">(.*?)</section>",
                                                             dom.stdout, re.S)}
    rendered = {key for key, body in sections.items() if "main-svg" in body and "plot-container" in body}
    assert len(rendered) >= 3, sorted(sections)
    assert {"latency", "codec", "prefix", "wer", "corrections", "pii", "throughput"} <= rendered

    shot = tmp_path / "report.png"
    taken = _chromium(f"--screenshot={shot}", out.as_uri(), cwd=tmp_path)
    assert taken.returncode == 0 and shot.stat().st_size > 20_000, taken.stderr[-2000:]
    keep = ROOT / "test-output"
    keep.mkdir(exist_ok=True)
    shutil.copy(shot, keep / "report.png")
    shutil.copy(out, keep / "report.html")


def test_report_on_an_empty_warehouse_says_no_data_yet(tmp_path):
    from scribeline import report

    lake = tmp_path / "lake.sqlite"
    with warehouse.writer(lake):
        pass
    page = report.write(lake, tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.count("<p class='no-data'>") == len(report.CHARTS)
    assert "Plotly.newPlot" not in page
