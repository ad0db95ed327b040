#!/usr/bin/env bash
# Only the import layers (import-linter): see check_static.sh.
exec "$(dirname "$0")/check_static.sh" --layers-only
