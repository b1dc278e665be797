"""Create the work pools and register the deployments in prefect.yaml against the current Prefect API.

Usage: PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/deploy.py [--pool scribeline-cpu]
Then run a worker: prefect worker start --pool scribeline-cpu
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POOLS = ("scribeline-cpu", "scribeline-gpu")


def prefect(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", *args], cwd=ROOT, check=check, text=True, capture_output=True)


def ensure_pool(name: str) -> None:
    if prefect("work-pool", "inspect", name, check=False).returncode != 0:
        prefect("work-pool", "create", name, "--type", "process")
        print(f"created work pool {name}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", choices=POOLS, action="append", help="only this pool's deployment (repeatable)")
    args = p.parse_args(argv)
    os.environ.setdefault("SCRIBELINE_CHECKOUT", str(ROOT))
    pools = args.pool or list(POOLS)
    for pool in pools:
        ensure_pool(pool)
    names = {"scribeline-cpu": "incoming-cpu", "scribeline-gpu": "incoming-gpu"}
    for pool in pools:
        result = prefect("--no-prompt", "deploy", "--prefect-file", "prefect.yaml", "--name", names[pool], check=False)
        if result.returncode != 0:
            print(result.stdout[-2000:], result.stderr[-2000:], file=sys.stderr)
            return result.returncode
        print(f"deployed scribeline-process-incoming/{names[pool]} to {pool}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
