#!/usr/bin/env bash
# Install atomr the way users do: build the wheel, install it (not editable) with the `ort` extra
# into a fresh virtual environment, start a node from that environment in a folder outside the
# source tree on the embedded model (system_config/local.yaml's deployments), and get an answer
# from the Client (atomr-chat) and from the HTTP front. Exits non-zero on any failure.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d -t atomr-wheel.XXXXXX)"
node_pid=""
cleanup() {
  if [ -n "$node_pid" ]; then kill -TERM "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

python3 -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$repo"
wheel="$(ls "$work"/dist/atomr-*.whl)"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "${wheel}[ort]"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port="$(free_port)"
http_port="$(free_port)"
cp "$repo/system_config/local.yaml" "$work/local.yaml"
cd "$work"  # nothing of the source tree on sys.path
export XDG_STATE_HOME="$work/state" OMP_NUM_THREADS=1 ATOMR_ADDRESS="127.0.0.1:$port"
"$work/venv/bin/python" -m atomr.node --config local.yaml --port "$port" --http-port "$http_port" >node.log 2>&1 &
node_pid=$!
for _ in $(seq 1 1200); do
  grep -qx ready node.log && break
  kill -0 "$node_pid" 2>/dev/null || { cat node.log; exit 1; }
  sleep 0.1
done
grep -qx ready node.log || { echo "the node from the wheel did not get ready"; cat node.log; exit 1; }
"$work/venv/bin/python" - "$repo" <<'PY'
import sys
import atomr, atomr.runners.catalog
assert not atomr.__file__.startswith(sys.argv[1]), f"atomr imported from the source tree: {atomr.__file__}"
from pathlib import Path
models = Path(atomr.__file__).parent / "models"
for name in ("tiny-llama/onnx/genai_config.json", "tiny-embed/onnx/model.onnx", "tiny-embed/onnx/tokenizer.json",
             "tiny-embed/onnx/embedding_config.json"):
    assert (models / name).is_file(), f"the wheel lacks atomr/models/{name}"
PY
answer="$("$work/venv/bin/atomr-chat" tiny "Hello" --json)"
echo "atomr-chat: $answer"
echo "$answer" | "$work/venv/bin/python" -c 'import json, sys; r = json.load(sys.stdin); assert r["text"] and r["finish_reason"], r'
body="$(curl -sf "http://127.0.0.1:${http_port}/v1/chat/completions" \
  -d '{"model": "tiny", "messages": [{"role": "user", "content": "What is an actor?"}], "max_tokens": 16}')"
echo "http: $body"
echo "$body" | "$work/venv/bin/python" -c 'import json, sys; r = json.load(sys.stdin); assert r["choices"][0]["message"]["content"], r'
echo "wheel install: a node from the wheel answered"
