#!/usr/bin/env bash
# `pip install ./client/python` into a fresh venv, offline (--no-index), reusing the CMake build
# dir given ($1) for the native module; then the installed package imports and runs a worker.
set -euo pipefail
build_dir=$1
python=$2
src=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m venv --system-site-packages "$tmp/venv" || exit 77  # no venv module: skipped
PAGODA_PIP_BUILD_DIR=$build_dir PAGODA_JOBS=2 \
  "$tmp/venv/bin/pip" install --no-index --no-build-isolation -q "$src"
cd "$tmp"
"$tmp/venv/bin/python" - "$tmp/venv" <<'PY'
import os, sys, tempfile
import pagoda
venv = sys.argv[1]
assert pagoda.__file__.startswith(venv), pagoda.__file__
here = os.path.dirname(pagoda.__file__)
for f in ("_pagoda.pyi", "py.typed"):
    assert os.path.exists(os.path.join(here, f)), f
with tempfile.TemporaryDirectory() as d:
    store = pagoda.Store(host_capacity_bytes=1 << 20, data_dir=d,
                         layouts=[pagoda.layout_id("fp16", 2, 16, 4)])
    w = pagoda.DecodeWorker(store, num_layers=1, q_heads=4, kv_heads=2, head_dim=16,
                            page_tokens=4, pool_slots_per_head=16)
    assert w.open([1, 2, 3]).cached_tokens == 0
print("installed:", pagoda.__file__)
PY
