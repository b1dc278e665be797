#!/usr/bin/env bash
# Set up, then run the test suite (real S3 server, Prefect API, ffmpeg, whisper, DuckDB).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
