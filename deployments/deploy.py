"""Create the work pools and register the deployments in prefect.yaml against the current Prefect API.

Usage: `scribeline deploy` (or PREFECT_API_URL=... python deployments/deploy.py [--pool scribeline-cpu]).
Then serve them: `scribeline worker --pool scribeline-cpu --pool scribeline-gpu` (`scribeline up` does both).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POOLS = ("scribeline-cpu", "scribeline-gpu")
# The deployments of prefect.yaml, by the pool they run on.
DEPLOYMENTS = {"scribeline-cpu": ("sweep", "retention"), "scribeline-gpu": ("process-media",)}


def prefect(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", *args], cwd=ROOT, check=check, text=True, capture_output=True)


def ensure_pool(name: str) -> None:
    if prefect("work-pool", "inspect", name, check=False).returncode != 0:
        prefect("work-pool", "create", name, "--type", "process")
        print(f"created work pool {name}")


def limit_pool(name: str, limit: int) -> None:
    """At most ``limit`` of the pool's flow runs execute at once; the server hands out no more."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    with get_client(sync_client=True) as client:
        client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=limit))


def deploy_all(pools=POOLS) -> None:
    os.environ.setdefault("SCRIBELINE_CHECKOUT", str(ROOT))
    os.environ.setdefault("SCRIBELINE_SWEEP_CRON", "* * * * *")
    from scribeline.config import Settings

    os.environ.setdefault("SCRIBELINE_RETENTION_CRON", Settings.from_env().retention_cron)
    for pool in pools:
        ensure_pool(pool)
    if "scribeline-gpu" in pools:
        limit_pool("scribeline-gpu", Settings.from_env().media_runs_at_once)
    names = [name for pool in pools for name in DEPLOYMENTS[pool]]
    args = [arg for name in names for arg in ("--name", name)]
    result = prefect("--no-prompt", "deploy", "--prefect-file", "prefect.yaml", *args, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    print(f"deployed {', '.join(names)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", choices=POOLS, action="append", help="only this pool's deployments (repeatable)")
    args = p.parse_args(argv)
    deploy_all(tuple(args.pool or POOLS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
