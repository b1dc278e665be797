#!/usr/bin/env bash
# Installs what scribeline needs on a Debian machine: ffmpeg, espeak-ng, sox and chromium from
# Debian, and a virtual environment in .venv with the project and its pinned packages.
# Safe to run again: it skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v sox >/dev/null 2>&1 || missing+=(sox)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]} from Debian"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Headless Chromium renders the HTML report and Prefect's UI in the tests (they are skipped without it):
# wanted, not required, so a machine that cannot install it still sets up.
if ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing chromium from Debian (for the report and UI tests)"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
    || echo "setup: chromium could not be installed; the browser tests will be skipped"
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  if ! "$PY" -m venv .venv >/dev/null 2>&1; then
    # Debian ships venv's pip bootstrap separately.
    rm -rf .venv
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    "$PY" -m venv .venv
  fi
fi

# Reinstall only when the dependency list changed.
stamp=".venv/.scribeline-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned: an unpinned torch pulls several GB of CUDA packages.
  # SCRIBELINE_TORCH_INDEX_URL (e.g. PyTorch's CPU index) picks where torch comes from.
  .venv/bin/python -m pip install -q ${SCRIBELINE_TORCH_INDEX_URL:+--index-url "$SCRIBELINE_TORCH_INDEX_URL"} "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
