"""The ``scribeline`` command: up, down, deploy, worker, submit, run, demo, query, export, search, report, status."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from scribeline.config import Settings


def _prepare_env(settings: Settings) -> None:
    """Point Prefect at the embedded server when it runs, else its ephemeral API. Before importing prefect."""
    from scribeline import services

    for k, v in services.prefect_env(settings).items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    if "PREFECT_API_URL" not in os.environ and services.prefect_healthy(settings):
        os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{settings.prefect_port}/api"


def _console():
    from rich.console import Console

    # Logs and CI are not terminals: give tables room instead of rich's 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=160)


def cmd_up(settings: Settings, args) -> int:
    from scribeline import services

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    con = _console()
    if settings.embedded:
        services.start_s3(settings)
        access, _ = settings.credentials()
        con.print(f"S3 (SeaweedFS)  http://{settings.endpoint}   access key {access} "
                  f"(secret in {settings.data_dir / 's3-credentials.json'})")
    else:
        from scribeline import storage

        storage.ensure_buckets(settings)
        con.print(f"S3 (external)   {settings.endpoint}")
    if not args.no_prefect:
        services.start_prefect(settings)
        con.print(f"Prefect UI/API  http://127.0.0.1:{settings.prefect_port}  (API: /api)")
        if not args.no_workers:
            from scribeline import runtime

            os.environ.setdefault("PREFECT_API_URL", f"http://127.0.0.1:{settings.prefect_port}/api")
            runtime.deploy(settings, only_missing=True)
            svc = services.start_worker(settings, runtime.POOLS)
            con.print(f"Workers         pools {', '.join(runtime.POOLS)} in one warm worker process (log {svc.log_file})")
            con.print("Deployments     scribeline-sweep/sweep (every minute), scribeline-process-media/process-media")
    con.print(f"Warehouse       {settings.warehouse}")
    con.print(f"Buckets         {', '.join(settings.buckets)}")
    return 0


def cmd_down(settings: Settings, args) -> int:
    from scribeline import services

    for svc in (services.worker_service(settings), services.prefect_service(settings), services.s3_service(settings)):
        print(f"{svc.name}: {'stopped' if services.stop(svc) else 'was not running'}")
    return 0


def _with_s3(settings: Settings):
    """Use the configured S3, or the embedded server (started here if it is down). Returns a stop callback."""
    from scribeline import services, storage

    if settings.embedded and not services.s3_running(settings):
        svc = services.start_s3(settings)
        return lambda: services.stop(svc)
    storage.ensure_buckets(settings)
    return lambda: None


def _upload(settings: Settings, paths: list[str]) -> list:
    from scribeline import stopping, storage

    refs = []
    for path in storage.expand_paths([Path(p) for p in paths]):
        stopping.check()  # `run` stopped during its upload: the rest is not sent
        refs.append(storage.upload_file(settings, path))
        print(f"uploaded {path} -> {refs[-1].uri}")
    return refs


def cmd_submit(settings: Settings, args) -> int:
    stop = _with_s3(settings)
    try:
        _upload(settings, args.paths)
    finally:
        stop()
    return 0


# A stopped run exits as a shell reports a process ended by the signal (128 + its number); a
# cancellation from Prefect's API/UI as a worker's run process does (it gets SIGTERM).
STOP_STATUS = {"SIGINT": 130, "SIGTERM": 143, "cancelled": 143}


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM ask the run to stop (scribeline.stopping) instead of ending the process
    where it stands: the work in flight stops at its next check, nothing half-done is loaded, and
    the embedded S3 server is stopped. The same signal again acts as usual (ends the process at once).

    During the flow run Prefect's own SIGTERM handler stands in for this one (see
    flows.process_incoming); it calls this one once the flow has ended."""
    import signal

    from scribeline import stopping

    def request_stop(signum, frame):
        stopping.request(signal.Signals(signum).name)
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, request_stop)


def _stopped() -> int:
    from scribeline import stopping

    reason = stopping.reason()
    why = "the flow run was cancelled" if reason == "cancelled" else reason
    print(f"scribeline: stopped ({why}): the work in flight was abandoned and nothing of it loaded; "
          f"every object not yet processed is still in the incoming bucket for the next run", file=sys.stderr)
    return STOP_STATUS.get(reason, 1)


def cmd_run(settings: Settings, args) -> int:
    from scribeline import stopping

    _stop_on_signals()
    from scribeline.startup import ColdStart, timeline

    # S3, Prefect's API and (with media to process) the engines start side by side: see scribeline.startup.
    cold = ColdStart(settings, warm=bool(args.paths))
    stop = cold.s3()
    try:
        if args.paths:
            timeline.span("upload", _upload, settings, args.paths)
        elif cold.any_waiting():
            cold.warm()
        timeline.start("import flow")
        from flows.process_incoming import process_incoming
        from scribeline import services

        timeline.end("import flow")
        try:
            cold.api()
            with services.ephemeral_flow_runs():
                outcomes = timeline.span("flow", process_incoming, max_objects=args.max_objects)
        except BaseException as exc:
            # A stop surfaces as Stopped, as Prefect's TerminationSignal (its SIGTERM handler during
            # a flow run), or as whatever failed while the run was stopping.
            if stopping.requested():
                return _stopped()
            if not isinstance(exc, Exception):
                raise
            print(f"scribeline: the run failed, nothing was moved out of the incoming bucket: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    except stopping.Stopped:  # during the upload
        return _stopped()
    finally:
        stop()
    _print_outcomes(outcomes)
    return 0


def cmd_demo(settings: Settings, args) -> int:
    from scribeline import samples, stopping

    paths = args.paths or [str(p) for p in samples.synthesize(settings.data_dir / "samples")]
    args.paths, args.max_objects = paths, 0
    status = cmd_run(settings, args)
    if stopping.requested():
        return status
    print("\n$ scribeline query \"select source_object, language, round(duration_s, 1) as duration_s, text from transcripts\"")
    return cmd_query(settings, argparse.Namespace(
        sql="select source_object, language, round(duration_s, 1) as duration_s, text from transcripts order by source_object",
        csv=False, json=False))


def _print_outcomes(outcomes: list[dict]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="scribeline run")
    for col in ("object", "state", "duration s", "language", "words", "PII", "seconds", "reason / note"):
        table.add_column(col, overflow="fold")
    for o in outcomes:
        reason = f"{o.get('stage')}: {o.get('reason')}" if o["state"] == "quarantined" else o.get("note", "")
        table.add_row(escape(o["key"]), o["state"], _fmt(o.get("duration_s")), o.get("language") or "", _fmt(o.get("words")),
                      _fmt(o.get("pii")), _fmt(o.get("seconds")), escape(reason))
    if not outcomes:
        print("nothing waiting in the incoming bucket")
        return
    _console().print(table)


def _fmt(v) -> str:
    return "" if v is None else str(v)


def cmd_query(settings: Settings, args) -> int:
    from scribeline import warehouse

    df = warehouse.query(settings.warehouse, args.sql)
    if args.csv:
        df.to_csv(sys.stdout, index=False)
    elif args.json:
        print(df.to_json(orient="records", date_format="iso", force_ascii=False))
    else:
        from rich.markup import escape
        from rich.table import Table

        table = Table(show_lines=False)
        for c in df.columns:
            table.add_column(str(c), overflow="fold")
        for row in df.itertuples(index=False):
            table.add_row(*("" if v is None else escape(str(v)) for v in row))
        _console().print(table)
        print(f"({len(df)} row{'s' if len(df) != 1 else ''})")
    return 0


def cmd_export(settings: Settings, args) -> int:
    from scribeline import export

    text = export.get_writer(args.format).render(export.fetch(settings.warehouse, args.media_id))
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_search(settings: Settings, args) -> int:
    from scribeline import search

    df = search.search(settings.warehouse, " ".join(args.words), args.limit)
    if args.json:
        print(df.to_json(orient="records", force_ascii=False))
        return 0
    if df.empty:
        print("no matching segment")
        return 0
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"search: {escape(' '.join(args.words))}")
    for col in ("media", "from", "to", "score", "text (redacted)"):
        table.add_column(col, overflow="fold")
    for r in df.itertuples(index=False):
        table.add_row(escape(r.source_object), _clock(r.start_s), _clock(r.end_s), f"{r.score:.3f}", escape(r.text))
    _console().print(table)
    return 0


def _clock(seconds: float) -> str:
    minutes, s = divmod(float(seconds), 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{s:06.3f}"


def cmd_report(settings: Settings, args) -> int:
    from scribeline import report

    out = report.write(settings.warehouse, Path(args.out) if args.out else settings.data_dir / "report.html")
    print(f"report written to {out}")
    return 0


def cmd_deploy(settings: Settings, args) -> int:
    from scribeline import runtime

    runtime.deploy(settings, tuple(args.pool or runtime.POOLS))
    return 0


def cmd_automations(settings: Settings, args) -> int:
    from scribeline import runtime

    runtime.apply_automations()
    return 0


def cmd_worker(settings: Settings, args) -> int:
    import faulthandler

    from scribeline import runtime

    faulthandler.enable()  # a crash in native code leaves its stack in the worker's log
    if not args.once:
        argv = [sys.executable, "-m", "scribeline.cli", "worker", "--once", "--limit", str(args.limit),
                *[a for pool in args.pool or [] for a in ("--pool", pool)], *(["--no-preload"] if args.no_preload else [])]
        return runtime.supervise(argv, settings.data_dir / "run" / "worker-process.pid")
    return runtime.worker(settings, args.pool or list(runtime.POOLS), args.limit, preload=not args.no_preload)


def cmd_status(settings: Settings, args) -> int:
    from scribeline import allocator, services, warehouse

    lake = settings.warehouse
    status = {
        "data_dir": str(settings.data_dir), "s3_endpoint": settings.endpoint, "embedded_s3_running": services.s3_running(settings),
        "prefect_api": os.environ.get("PREFECT_API_URL") or ("embedded" if services.prefect_healthy(settings) else "ephemeral"),
        "workers_running": services.worker_service(settings).pid() is not None,
        "warehouse": str(lake), "model": settings.model, "device": settings.device,
        "allocator": allocator.describe(), "ledger": {}, "latest_failures": [],
    }
    if lake.exists():
        counts = warehouse.query(lake, "SELECT state, count(*) AS n FROM ledger GROUP BY state ORDER BY state")
        status["ledger"] = {r.state: int(r.n) for r in counts.itertuples()}
        failures = warehouse.query(lake, "SELECT key, stage, reason, attempts, finished FROM ledger "
                                         "WHERE state = 'quarantined' ORDER BY finished DESC LIMIT ?", [args.failures])
        status["latest_failures"] = json.loads(failures.to_json(orient="records", date_format="iso"))
    print(json.dumps(status, indent=2, ensure_ascii=False))
    return 0


def cmd_retention(settings: Settings, args) -> int:
    """Delete (or with --dry-run, list) what is past its retention age; the retention deployment does this daily."""
    from dataclasses import asdict

    from scribeline import retention

    found = retention.due(settings) if args.dry_run else retention.apply(settings)
    print(json.dumps({"dry_run": args.dry_run, "count": len(found), "objects": [asdict(d) for d in found]}, indent=2))
    return 0


def cmd_data_docs(settings: Settings, args) -> int:
    """Great Expectations Data Docs of the latest media's stored quality checks (scribeline/data_docs.py)."""
    from scribeline import data_docs

    print(data_docs.build(settings, args.limit))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scribeline", description="Media in S3 -> validated, redacted transcripts in DuckDB.")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the embedded S3 server and the Prefect server/UI in the background")
    up.add_argument("--no-prefect", action="store_true", help="start only the S3 server")
    up.add_argument("--no-workers", action="store_true", help="no deployments and no workers (the one-shot `run` needs none)")
    sub.add_parser("down", help="stop the embedded services")
    s = sub.add_parser("submit", help="upload files (or a folder's media files) to the incoming bucket")
    s.add_argument("paths", nargs="+")
    r = sub.add_parser("run", help="upload PATHs if given, then process everything in the incoming bucket")
    r.add_argument("paths", nargs="*")
    r.add_argument("--max-objects", type=int, default=0, help="process at most this many objects (0: all)")
    d = sub.add_parser("demo", help="synthesize sample speech (unless PATHs are given), run, and query")
    d.add_argument("paths", nargs="*")
    q = sub.add_parser("query", help="read-only SQL against the warehouse")
    q.add_argument("sql")
    fmt = q.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true")
    fmt.add_argument("--json", action="store_true")
    e = sub.add_parser("export", help="write a media's redacted transcript")
    e.add_argument("media_id", help="media id (or a unique prefix of it)")
    e.add_argument("--format", "-f", default="txt", choices=["srt", "vtt", "json", "txt"])
    e.add_argument("--output", "-o", help="file to write (default: standard output)")
    se = sub.add_parser("search", help="full-text search of the redacted transcripts (BM25, best first)")
    se.add_argument("words", nargs="+", help="words to look for (any of them)")
    se.add_argument("--limit", type=int, default=20, help="at most this many segments")
    se.add_argument("--json", action="store_true")
    rp = sub.add_parser("report", help="an HTML report of the warehouse's metrics with charts (self-contained)")
    rp.add_argument("--out", "-o", help="file to write (default: <data dir>/report.html)")
    st = sub.add_parser("status", help="where things are; the ledger's counts by state and the latest failures")
    st.add_argument("--failures", type=int, default=10, help="how many of the latest quarantined objects to show")
    dp = sub.add_parser("deploy", help="create the buckets, work pools and deployments (prefect.yaml) on the Prefect API")
    dp.add_argument("--pool", action="append", help="only this pool's deployments (repeatable)")
    sub.add_parser("automations", help="create or update the Prefect automations of deployments/automations.yaml "
                                       "(notifications through the block in SCRIBELINE_NOTIFY_BLOCK)")
    dd = sub.add_parser("data-docs", help="build Great Expectations Data Docs of the latest media's quality checks")
    dd.add_argument("--limit", type=int, default=100, help="how many of the latest media")
    rt = sub.add_parser("retention", help="delete originals, audio and unredacted transcripts past their data class's age")
    rt.add_argument("--dry-run", action="store_true", help="list what is due, delete nothing")
    w = sub.add_parser("worker", help="serve work pools' flow runs in this process (model kept loaded) until stopped")
    w.add_argument("--pool", action="append", help="a work pool to serve (repeatable; default: both)")
    w.add_argument("--limit", type=int, default=16, help="flow runs at once per pool on this worker (their windows batch together)")
    w.add_argument("--no-preload", action="store_true", help="load the model and engines at the first run, not at start (a CPU-pool-only worker)")
    w.add_argument("--once", action="store_true", help="no supervisor: do not start the worker again when it ends")
    return p


COMMANDS = {"up": cmd_up, "down": cmd_down, "deploy": cmd_deploy, "automations": cmd_automations, "worker": cmd_worker, "submit": cmd_submit, "run": cmd_run, "demo": cmd_demo,
            "query": cmd_query, "export": cmd_export, "status": cmd_status, "retention": cmd_retention,
            "data-docs": cmd_data_docs}

COMMANDS.update({"search": cmd_search, "report": cmd_report})  # the analysts' commands


def duckdb_error():
    import duckdb

    return duckdb.Error


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    _prepare_env(settings)
    try:
        return COMMANDS[args.command](settings, args)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError, duckdb_error()) as exc:
        print(f"scribeline: {exc}", file=sys.stderr)
        return 2


_exit_status: int | None = None


def _end_without_teardown() -> None:
    """The last exit handler: once the command has returned, its threads are joined and every
    other exit handler has run (Prefect's logs and events sent, services stopped or asked to,
    temporary files removed), the process ends without tearing the interpreter down. That
    teardown frees torch, Great Expectations, Prefect and their objects one by one: 2.1 s of a
    cold ``scribeline run`` (measured), with nothing left to write. Not after an uncaught error."""
    if _exit_status is None:
        return
    import logging

    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(_exit_status)


def entry() -> None:
    """The installed command (and ``python -m scribeline.cli``): restarted once with the model's
    malloc settings (see scribeline.allocator), which glibc reads only at start."""
    import atexit

    from scribeline import allocator

    global _exit_status
    allocator.restart_with_tunables()
    atexit.register(_end_without_teardown)  # registered first, so it runs last
    _exit_status = int(main() or 0)
    sys.exit(_exit_status)


if __name__ == "__main__":
    entry()
