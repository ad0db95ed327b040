#!/usr/bin/env bash
# One command from a fresh clone: set up a virtual environment with atomr and ONNX Runtime GenAI,
# start a node on the embedded tiny model (system_config/local.yaml), and ask it one question.
# With --serve the node keeps running in the foreground afterwards (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e '.[ort]'

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
port="${ATOMR_PORT:-19500}"
http_port="${ATOMR_HTTP_PORT:-8080}"
export ATOMR_ADDRESS="127.0.0.1:${port}"
log="$(mktemp -t atomr-node.XXXXXX.log)"
python -m atomr.node --config system_config/local.yaml --port "$port" --http-port "$http_port" >"$log" 2>&1 &
node_pid=$!
trap 'kill -TERM "$node_pid" 2>/dev/null; wait "$node_pid" 2>/dev/null || true' EXIT

for _ in $(seq 1 600); do
  grep -qx ready "$log" && break
  if ! kill -0 "$node_pid" 2>/dev/null; then cat "$log"; exit 1; fi
  sleep 0.1
done
grep -qx ready "$log" || { cat "$log"; exit 1; }

echo "atomr node ready on ${ATOMR_ADDRESS} (log: $log)"
echo "> Hello"
atomr-chat tiny "Hello"
echo "> (over HTTP) What is an actor?"
curl -s "http://127.0.0.1:${http_port}/v1/chat/completions" \
  -d '{"model": "tiny", "messages": [{"role": "user", "content": "What is an actor?"}], "max_tokens": 48}'
echo
if [ "${1:-}" = "--serve" ]; then
  echo "serving; try: ATOMR_ADDRESS=${ATOMR_ADDRESS} .venv/bin/atomr-chat tiny 'What is an actor?'  (Ctrl-C stops)"
  echo "or any OpenAI SDK with base_url http://127.0.0.1:${http_port}/v1"
  wait "$node_pid"
fi
