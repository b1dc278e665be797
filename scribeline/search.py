"""Full-text search over the redacted transcripts, with DuckDB's FTS extension (BM25 ranking).

An FTS index cannot be made on the warehouse itself: ``PRAGMA create_fts_index`` writes
tables and macros into the table's catalog, and an analyst's connection to the DuckLake is
read-only (a DuckLake catalog holds no macros either). So each search copies the segments
into an in-memory DuckDB table of its own process and indexes that: a second or two for
the sizes at hand (tens of thousands of segments); a warehouse of millions of segments
would want a persisted index built by the sweep instead.

Only redacted text is in the warehouse, so a redacted value (a name, a number) is found
nowhere. The placeholders themselves (``<PERSON>``) are left out of the index, so a search
for "person" finds people who said it, not every redaction.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from scribeline import warehouse

# Words the index keeps: lower-cased letters and digits (FTS's default ignores digits too).
_IGNORE = "[^a-z0-9]+"
_PLACEHOLDER = r"<[A-Z][A-Z_]*>"


def _load_fts(con: duckdb.DuckDBPyConnection) -> None:
    """The FTS extension from its duckdb-extension-fts wheel, as warehouse._load_extensions does (no download)."""
    try:
        con.execute("LOAD fts")
    except duckdb.Error:  # not yet installed from its wheel on this machine
        import duckdb_extensions

        duckdb_extensions.import_extension("fts", con=con)
        con.execute("LOAD fts")


def search(target, words: str, limit: int = 20) -> pd.DataFrame:
    """Segments matching ``words`` (any of them; BM25, best first): source_object, media_id,
    segment_index, start_s, end_s, score, text (redacted)."""
    if not words.strip():
        raise ValueError("nothing to search for")
    con = warehouse.connect(target, read_only=True)  # autoinstall_known_extensions=False, as every connection
    try:
        _load_fts(con)
        con.execute("""
            CREATE TABLE memory.main.search_segments AS
            SELECT row_number() OVER (ORDER BY t.source_object, s.media_id, s.start_s, s.segment_index) AS id,
                   t.source_object, s.media_id, s.segment_index, s.start_s, s.end_s, s.text,
                   regexp_replace(s.text, ?, ' ', 'g') AS indexed
            FROM lake.segments s JOIN lake.transcripts t USING (media_id)""", [_PLACEHOLDER])
        con.execute("USE memory")
        con.execute("PRAGMA create_fts_index('search_segments', 'id', 'indexed', stemmer = 'porter', "
                    f"stopwords = 'english', ignore = '{_IGNORE}', strip_accents = 1, lower = 1, overwrite = 1)")
        return con.execute("""
            SELECT source_object, media_id, segment_index, start_s, end_s, score, text
            FROM (SELECT *, fts_main_search_segments.match_bm25(id, ?) AS score FROM search_segments)
            WHERE score IS NOT NULL
            ORDER BY score DESC, source_object, start_s
            LIMIT ?""", [words, limit]).fetchdf()
    finally:
        con.close()
