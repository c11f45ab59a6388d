#!/usr/bin/env bash
# Quick start: installs what is missing, builds, and runs Pagoda's main job on the embedded
# single-node default (data under ./pagoda-data).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
BUILD_DIR=${PAGODA_BUILD_DIR:-build}
# The main job: pagodad on the embedded single-node default (free ports, data in ./pagoda-data)
# and the client demo against it (prefill puts of chained-hash pages, decode gets, prefix reuse).
# Extra arguments go to `pagoda demo` (see `pagoda demo --help`). Ctrl-C stops both cleanly.
DATA_DIR=${PAGODA_DATA_DIR:-./pagoda-data}
mkdir -p "$DATA_DIR"
rm -f "$DATA_DIR/ports.json"
# setsid: a terminal's Ctrl-C reaches the demo (which stops and summarizes), not pagodad, which
# the EXIT trap then stops with SIGTERM (drain, persist to SSD, exit 0).
setsid "$BUILD_DIR/kvstore/service/pagodad" --data-dir "$DATA_DIR" --grpc-port 0 --http-port 0 \
  --port-file "$DATA_DIR/ports.json" 2>"$DATA_DIR/pagodad.log" &
PAGODAD=$!
stop_pagodad() {
  kill -TERM "$PAGODAD" 2>/dev/null || true
  wait "$PAGODAD" 2>/dev/null || true
}
trap stop_pagodad EXIT
trap 'echo "pagoda: interrupted, stopping pagodad"' INT TERM
for _ in $(seq 600); do
  [ -f "$DATA_DIR/ports.json" ] && break
  if ! kill -0 "$PAGODAD" 2>/dev/null; then
    echo "pagoda: pagodad failed to start:" >&2
    cat "$DATA_DIR/pagodad.log" >&2
    exit 1
  fi
  sleep 0.1
done
PORT=$(sed -n 's/.*"grpc_port": *\([0-9]*\).*/\1/p' "$DATA_DIR/ports.json")
echo "pagoda: pagodad logs in $DATA_DIR/pagodad.log"
rc=0
"$BUILD_DIR/client/cli/pagoda" --target "127.0.0.1:$PORT" demo "$@" || rc=$?
exit $rc
