#!/usr/bin/env bash
# Installs the build ($1) into a temporary prefix, then configures, builds and runs a separate
# project that finds it with find_package(Pagoda).
set -euo pipefail
build_dir=$1
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build_dir" --prefix "$tmp/prefix" >/dev/null
cmake -S "$here" -B "$tmp/build" -G Ninja -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/build" -j 2
mkdir "$tmp/data"
"$tmp/build/consumer" "$tmp/data"
