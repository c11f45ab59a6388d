#!/usr/bin/env bash
# Fails when project C++/CUDA sources are not clang-format clean.
set -euo pipefail
cd "$(dirname "$0")/.."
files=$(git ls-files '*.h' '*.cc' '*.cpp' '*.cu' '*.cuh' | grep -v '^deploy/' || true)
[ -z "$files" ] && exit 0
bad=$(echo "$files" | xargs clang-format --dry-run 2>&1 | grep -oE '^[^:]+:[0-9]+' | cut -d: -f1 | sort -u || true)
if [ -n "$bad" ]; then
  echo "clang-format: these files need formatting (run: clang-format -i <file>):"; echo "$bad"
  exit 1
fi
echo "clang-format: clean"
