"""`scribeline report`: one self-contained HTML file of the warehouse's metrics, with plotly charts.

Everything is inside the file (plotly.js inlined once in the page's head), so it opens offline,
from a mail attachment or a file share. Each chart reads one of the metrics views of
``scribeline/warehouse.py`` (or a table); a chart with nothing to show yet says so instead.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from scribeline import warehouse


@dataclass
class Chart:
    key: str
    title: str
    about: str
    figure: object | None = None  # a plotly Figure, or None: no data yet
    note: str = "no data yet"


def _label(model, version) -> str:
    return f"{model or '?'} (pipeline {version or '?'})"


def _frame(con: duckdb.DuckDBPyConnection, sql: str) -> pd.DataFrame | None:
    """The rows, or None when the warehouse has no such view yet (made by an older version)."""
    try:
        return con.execute(sql).fetchdf()
    except duckdb.CatalogException:
        return None


def _layout(fig, x: str, y: str):
    fig.update_layout(template="plotly_white", height=420, margin=dict(l=60, r=20, t=30, b=60),
                      xaxis_title=x, yaxis_title=y, legend=dict(orientation="h", y=-0.2))
    return fig


def latency_chart(con) -> Chart:
    import plotly.graph_objects as go

    chart = Chart("latency", "Job latency against media duration",
                  "processing_s (run start to load) of each media against its duration; view latency_by_duration")
    df = _frame(con, "SELECT source_key, duration_s, processing_s, coalesce(needs_review, false) AS needs_review "
                     "FROM media WHERE duration_s IS NOT NULL AND processing_s IS NOT NULL ORDER BY duration_s")
    if df is None or df.empty:
        return chart
    fig = go.Figure()
    for review, name in ((False, "processed"), (True, "needs review")):
        part = df[df["needs_review"] == review]
        if len(part):
            fig.add_trace(go.Scatter(x=part["duration_s"], y=part["processing_s"], mode="markers", name=name,
                                     cliponaxis=False, text=part["source_key"], hovertemplate="%{text}<br>%{x:.1f} s audio, %{y:.1f} s"))
    chart.figure = _layout(fig, "media duration (s)", "processing (s)")
    chart.figure.update_xaxes(rangemode="tozero")
    chart.figure.update_yaxes(rangemode="tozero")
    return chart


def _outcome_bars(df: pd.DataFrame, by: str, labels=None):
    import plotly.graph_objects as go

    fig = go.Figure()
    names = labels if labels is not None else df[by]
    for state, color in (("processed", "#2ca02c"), ("needs_review", "#ff7f0e"), ("quarantined", "#d62728")):
        fig.add_trace(go.Bar(x=names, y=df[state], name=state.replace("_", " "), marker_color=color,
                             customdata=df["quarantine_rate"],
                             hovertemplate="%{x}: %{y} " + state + "<br>quarantine rate %{customdata:.0%}"))
    fig.update_layout(barmode="stack")
    return fig


def codec_chart(con) -> Chart:
    chart = Chart("codec", "Errors and quarantines by codec",
                  "objects per terminal state by their media's codec ('(not recorded)': quarantined before a media "
                  "row was written); view failure_rates_by_codec")
    df = _frame(con, "SELECT * FROM failure_rates_by_codec")
    if df is None or df.empty:
        return chart
    chart.figure = _layout(_outcome_bars(df, "codec"), "codec", "objects")
    return chart


def prefix_chart(con) -> Chart:
    chart = Chart("prefix", "Errors and quarantines by source prefix",
                  "objects per terminal state by the part of their key before the first '/'; view failure_rates_by_prefix")
    df = _frame(con, "SELECT * FROM failure_rates_by_prefix")
    if df is None or df.empty:
        return chart
    labels = df["source_prefix"].replace("", "(no prefix)")
    chart.figure = _layout(_outcome_bars(df, "source_prefix", labels), "source prefix", "objects")
    return chart


def _trend_chart(con, chart: Chart, view: str, value: str, y_title: str) -> Chart:
    """A rate per day, one line per model and configuration (``view``'s ``day``, ``model``,
    ``pipeline_version``, ``media`` and ``value`` columns)."""
    import plotly.graph_objects as go

    df = _frame(con, f"SELECT * FROM {view} WHERE {value} IS NOT NULL")
    if df is None or df.empty:
        return chart
    fig = go.Figure()
    for (model, version), part in df.groupby(["model", "pipeline_version"], dropna=False, sort=True):
        fig.add_trace(go.Scatter(x=part["day"], y=part[value], mode="lines+markers", name=_label(model, version),
                                 customdata=part["media"], hovertemplate="%{x|%Y-%m-%d}: %{y:.1%} over %{customdata} media"))
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    fig.update_xaxes(type="date", tickformat="%Y-%m-%d", dtick=86_400_000)  # one tick a day
    chart.figure = _layout(fig, "day", y_title)
    return chart


def wer_chart(con) -> Chart:
    return _trend_chart(con, Chart("wer", "Word error rate against references, per model and configuration",
                                   "pooled WER (all word edits / all reference words) per day the transcripts were "
                                   "made, from <key>.ref.txt uploads; view wer_trend"), "wer_trend", "wer", "WER")


def correction_chart(con) -> Chart:
    return _trend_chart(con, Chart("corrections", "Human-correction rate",
                                   "word edits by reviewers / words of their corrected transcripts (<key>.corrected.txt), "
                                   "per day the transcripts were made; view correction_trend (per media: correction_rates)"),
                        "correction_trend", "correction_rate", "correction rate")


def pii_chart(con) -> Chart:
    import plotly.graph_objects as go

    chart = Chart("pii", "PII found, by type", "entities redacted (pii_entities), and the media they were found in")
    df = _frame(con, "SELECT entity_type, count(*) AS entities, count(DISTINCT media_id) AS media FROM pii_entities "
                     "GROUP BY entity_type ORDER BY entities DESC, entity_type")
    if df is None or df.empty:
        return chart
    fig = go.Figure([go.Bar(x=df["entity_type"], y=df["entities"], name="entities"),
                     go.Bar(x=df["entity_type"], y=df["media"], name="media")])
    chart.figure = _layout(fig, "entity type", "count")
    return chart


def quality_chart(con) -> Chart:
    import plotly.graph_objects as go

    chart = Chart("quality", "Quality failures",
                  "media marked needs_review, by each reason in review_reasons; and media failing each quality check "
                  "(quality_checks, critical and warnings)")
    reasons = _frame(con, "SELECT trim(reason) AS name, count(DISTINCT media_id) AS media "
                          "FROM (SELECT media_id, unnest(string_split(review_reasons, ',')) AS reason FROM media "
                          "WHERE needs_review AND coalesce(review_reasons, '') <> '') GROUP BY 1 ORDER BY 2 DESC, 1")
    checks = _frame(con, "SELECT table_name || '.' || coalesce(column_name, '') || ':' || expectation AS name, "
                         "any_value(severity) AS severity, count(DISTINCT media_id) AS media FROM quality_checks "
                         "WHERE NOT success GROUP BY 1 ORDER BY 3 DESC, 1")
    fig = go.Figure()
    if reasons is not None and len(reasons):
        fig.add_trace(go.Bar(y=reasons["name"], x=reasons["media"], orientation="h", name="review reason"))
    if checks is not None and len(checks):
        fig.add_trace(go.Bar(y=checks["name"], x=checks["media"], orientation="h", name="failing check",
                             customdata=checks["severity"], hovertemplate="%{y} (%{customdata}): %{x} media"))
    if not fig.data:
        chart.note = "no quality failures yet"
        return chart
    chart.figure = _layout(fig, "media", "")
    chart.figure.update_yaxes(automargin=True)
    return chart


def throughput_chart(con) -> Chart:
    import plotly.graph_objects as go

    chart = Chart("throughput", "Throughput over time",
                  "media loaded and audio minutes per hour (UTC), quarantined objects per hour; view throughput_hourly")
    df = _frame(con, "SELECT * FROM throughput_hourly")
    if df is None or df.empty:
        return chart
    fig = go.Figure([go.Bar(x=df["hour"], y=df["media"], name="media loaded"),
                     go.Bar(x=df["hour"], y=df["quarantined"], name="quarantined"),
                     go.Scatter(x=df["hour"], y=df["audio_s"] / 60, name="audio minutes", mode="lines+markers",
                                yaxis="y2")])
    fig.update_layout(yaxis2=dict(title="audio minutes", overlaying="y", side="right", rangemode="tozero"))
    chart.figure = _layout(fig, "hour (UTC)", "per hour")
    return chart


CHARTS = (latency_chart, codec_chart, prefix_chart, wer_chart, correction_chart, pii_chart, quality_chart,
          throughput_chart)


def _summary(con) -> list[tuple[str, str]]:
    out = []
    media = _frame(con, "SELECT count(*) AS n, coalesce(sum(duration_s), 0) AS s, count(*) FILTER (WHERE needs_review) "
                        "AS review FROM media")
    if media is not None:
        row = media.iloc[0]
        out += [("media loaded", f"{int(row['n'])}"), ("audio", _hours(row["s"])),
                ("needing review", f"{int(row['review'])}")]
    ledger = _frame(con, "SELECT state, count(*) AS n FROM ledger GROUP BY state ORDER BY state")
    if ledger is not None:
        out += [(f"objects {r.state.replace('_', ' ')}", str(int(r.n))) for r in ledger.itertuples()]
    return out


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
h1 { margin-bottom: 0.2em; } .when { color: #666; margin-top: 0; }
table.summary td { padding: 0.2em 1.2em 0.2em 0; } table.summary td:first-child { color: #555; }
section.chart { margin: 2em 0; border-top: 1px solid #ddd; padding-top: 0.5em; }
section.chart p.about { color: #555; font-size: 0.9em; margin-top: 0; }
p.no-data { color: #888; font-style: italic; padding: 2em; background: #f7f7f7; }
"""


def render(target) -> str:
    """The report's HTML for the warehouse ``target``."""
    import plotly.offline

    con = warehouse.connect(target, read_only=True)
    try:
        charts = [make(con) for make in CHARTS]
        summary = _summary(con)
    finally:
        con.close()
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'><title>scribeline report</title>",
             f"<style>{_STYLE}</style>",
             f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>",
             "</head><body>", "<h1>scribeline report</h1>",
             f"<p class='when'>{html.escape(str(warehouse.Lake.of(target)))} &middot; made {now}</p>",
             "<table class='summary'>",
             *(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in summary), "</table>"]
    for chart in charts:
        parts.append(f"<section class='chart' id='{chart.key}'><h2>{html.escape(chart.title)}</h2>"
                     f"<p class='about'>{html.escape(chart.about)}</p>")
        if chart.figure is None:
            parts.append(f"<p class='no-data'>{html.escape(chart.note)}</p>")
        else:
            parts.append(chart.figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{chart.key}",
                                              config={"displaylogo": False, "responsive": True}))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(target, out: Path) -> Path:
    """Write the report to ``out`` (its folder made if missing); returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render(target)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


def _hours(seconds) -> str:
    """Audio time for the summary: hours, or minutes and seconds under an hour (14 s is not "0.00 h")."""
    seconds = float(seconds or 0)
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"
