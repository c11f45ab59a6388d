#!/usr/bin/env bash
# Quick start: installs what is missing, builds, and runs Pagoda's main job on the embedded
# single-node default (data under ./pagoda-data).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
BUILD_DIR=${PAGODA_BUILD_DIR:-build}
exec "$BUILD_DIR/kvstore/engine/pagoda_demo" --data-dir ./pagoda-data "$@"
