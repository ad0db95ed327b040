#!/usr/bin/env bash
# The import-layers contract (setup.cfg, [importlinter]) checked with import-linter on the tree as
# it installs: `runners/` ships inside the package as `atomr.runners`, so the check runs on a copy
# laid out that way (import-linter reads the package's folder, not the install's mapping).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
tree="$(mktemp -d)"
trap 'rm -rf "$tree"' EXIT
cp -r "$repo/atomr" "$tree/atomr"
cp -r "$repo/runners" "$tree/atomr/runners"
find "$tree" -name __pycache__ -prune -exec rm -rf {} +
cd "$tree"
PYTHONPATH="$tree" lint-imports --config "$repo/setup.cfg" "$@"
