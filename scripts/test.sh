#!/usr/bin/env bash
# Builds Pagoda and runs every test (unit, integration, format). This is the command CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/check-format.sh
./scripts/build.sh
BUILD_DIR=${PAGODA_BUILD_DIR:-build}
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "${PAGODA_TEST_JOBS:-2}" --timeout 900
if [ -x deploy/validate.sh ]; then deploy/validate.sh; fi
