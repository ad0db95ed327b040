#!/usr/bin/env bash
# The test command (README.rst, "Running the tests"), from a fresh clone: makes .venv with atomr
# and its dev extras when it is missing (the ONNX Runtime GenAI engine and the remote SDKs; the
# other engines' tests skip with the reason unless they are installed, as .ci/run does), then
# runs pytest with any arguments given. pytest exits non-zero when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import atomr.runners.catalog, pytest, importlinter" >/dev/null 2>&1; then
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -e '.[dev]'
fi
exec python -m pytest "$@"
