#!/usr/bin/env bash
# Type check (mypy) and import layers (import-linter, setup.cfg [importlinter]) on the package as
# it installs: `runners/` ships inside atomr as `atomr.runners` (setup.cfg package_dir), which
# neither tool can follow in the source tree, so both run on a copy laid out that way
# (build/layout, git-ignored; the copy keeps file times so mypy's cache stays warm). Paths in
# their messages are given back as the source tree's.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
tree="$repo/build/layout"
rm -rf "$tree"
mkdir -p "$tree"
cp -a "$repo/atomr" "$tree/atomr"
cp -a "$repo/runners" "$tree/atomr/runners"
find "$tree" -name __pycache__ -prune -exec rm -rf {} +
back() { sed -e "s#atomr/runners/#runners/#g"; }

status=0
(cd "$tree" && MYPYPATH="$tree:$repo" mypy --config-file "$repo/setup.cfg" --cache-dir "$repo/.mypy_cache" \
  atomr "$repo/scripts/bench") 2>&1 | back || status=1
(cd "$tree" && PYTHONPATH="$tree" lint-imports "$repo/setup.cfg") 2>&1 | back || status=1
exit "$status"
