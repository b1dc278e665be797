#!/usr/bin/env bash
# The main job on the embedded defaults: set up, synthesize sample speech (or take
# the media paths given), run the pipeline, print the result table and a query.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/scribeline demo "$@"
