#!/usr/bin/env bash
# Builds, tests and benchmarks ALL of Pagoda's CUDA code in one device call; prints a table last.
#
# Where it builds: on the GPU machine, which has nvcc 13, cmake, ninja and PyTorch but no Debian
# -dev packages. The CUDA code therefore builds standalone (`cmake -S bench/gpu`, which adds
# kernels/; see bench/gpu/CMakeLists.txt) against absl and GTest taken from Debian 12's own .debs
# (libabsl-dev, libabsl20220623, libgtest-dev, libgmock-dev), unpacked into .devcarry/ (ignored by
# git) on the dev machine and carried along:
#   here:   bench/gpu/run.sh --prepare   (then bench/e2e/carry_gpu.sh, bench/transport/
#                                          carry_staged_test.sh for the steps that need them)
#           bench/gpu/run.sh --pack      (one compressed file: the carries together exceed the
#                                          device tool's 64 MiB)
#   device: run(command="bench/gpu/run.sh", carry=[".devcarry/pack.tar.xz"])
# Results: each step's log goes to $OUT/<step>.log ($OUT defaults to ./gpu-out); the table printed
# last is also written to $OUT/summary.md.
#
# Adding a step (another part's CUDA test or benchmark): write a function step_<name> that runs
# from the repository root with the build in $BUILD and returns non-zero on failure, and add
# <name> to STEPS. Targets that need only CUDA + absl + GTest can join the standalone build in
# bench/gpu/CMakeLists.txt. Environment: STEPS="build kernels_test" runs a subset;
# BUILD_TARGETS="kernels_cuda_test kernels_bench" builds only those targets. The prefill benchmark
# alone: STEPS="build sdpa_prefill prefill_bench" BUILD_TARGETS=prefill_bench bench/gpu/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CARRY=$ROOT/.devcarry

if [ "${1:-}" = "--prepare" ]; then
  set -e
  rm -rf "$CARRY" && mkdir -p "$CARRY/debs"
  (cd "$CARRY/debs" && apt-get download libabsl-dev libabsl20220623 libgtest-dev libgmock-dev)
  for f in "$CARRY"/debs/*.deb; do dpkg -x "$f" "$CARRY/root"; done
  rm -rf "$CARRY/debs" "$CARRY"/root/usr/lib/x86_64-linux-gnu/libabsl*.a "$CARRY/root/usr/share"
  du -sh "$CARRY"
  exit 0
fi

if [ "${1:-}" = "--pack" ]; then
  set -e
  parts=$(cd "$CARRY" && ls -d root e2e transport 2>/dev/null || true)  # the carries present
  tar -C "$CARRY" -cf - $parts | xz -T2 -6 >"$CARRY/pack.tar.xz"
  ls -la "$CARRY/pack.tar.xz"
  exit 0
fi
if [ -f "$CARRY/pack.tar.xz" ] && [ ! -d "$CARRY/root" ]; then
  tar -C "$CARRY" -xJf "$CARRY/pack.tar.xz" ||
    python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
      "$CARRY/pack.tar.xz" "$CARRY"
fi

OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
BUILD=${BUILD:-$ROOT/build-gpu}
PREFIX=$CARRY/root/usr
LIBDIR=$PREFIX/lib/x86_64-linux-gnu
export LD_LIBRARY_PATH=$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

step_build() {
  [ -d "$PREFIX" ] || { echo "no $PREFIX: run bench/gpu/run.sh --prepare and carry .devcarry"; return 1; }
  cmake -S bench/gpu -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" \
    -DCMAKE_PREFIX_PATH="$PREFIX" -Dabsl_DIR="$LIBDIR/cmake/absl" -DGTest_DIR="$LIBDIR/cmake/GTest" &&
    cmake --build "$BUILD" -j "$(nproc)" ${BUILD_TARGETS:+--target $BUILD_TARGETS}
}
step_kernels_ref_test() { "$BUILD/kernels/kernels_ref_test"; }
step_kernels_test() { "$BUILD/kernels/kernels_cuda_test"; }
# Block-sparse prefill (issue 12): the tensor-core kernel against its CPU reference.
step_prefill_test() { "$BUILD/kernels/kernels_prefill_cuda_test"; }
step_sdpa() { python3 bench/gpu/sdpa_baseline.py | tee "$OUT/sdpa.txt"; }
step_kernels_bench() {
  local bin=$BUILD/kernels_bench
  [ -x "$bin" ] || bin=$BUILD/bench/gpu/kernels_bench  # inside the project build
  "$bin" "$OUT/sdpa.txt"
}
# Block-sparse prefill (issue 12) vs torch SDPA causal attention: 32K / 128K prompts, 0% / 50%
# streaming heads, with and without page selection (sdpa_prefill first: its baselines).
step_sdpa_prefill() { python3 bench/gpu/sdpa_prefill.py | tee "$OUT/sdpa_prefill.txt"; }
step_prefill_bench() {
  local bin=$BUILD/prefill_bench
  [ -x "$bin" ] || bin=$BUILD/bench/gpu/prefill_bench  # inside the project build
  "$bin" "$OUT/sdpa_prefill.txt"
}

# The decode worker's fetch paths (issue 16): the verified gather kernel against a contiguous copy
# and cudaMemcpyBatchAsync, over arenas allocated as the store does and otherwise.
step_gather_paths() {
  local bin=$BUILD/gather_paths_bench
  [ -x "$bin" ] || bin=$BUILD/bench/gpu/gather_paths_bench
  "$bin" "${GATHER_ARENA_GIB:-12}"
}

# --- transport (issue 6): GPU tests of transport's CUDA paths, then its benchmark (host<->GPU page
# batches, peer copies, prefill -> decode over CUDA IPC; two GPUs for the last two).
step_transport_test() { "$BUILD/pagoda_transport_cuda_test"; }
step_transport_bench() { "$BUILD/bench/transport/gpu_transport_bench"; }
# The host-staged path needs UCX: built on the dev machine and carried with its libraries
# (bench/transport/carry_staged_test.sh fills .devcarry/transport).
step_transport_staged() {
  local d=$CARRY/transport
  [ -x "$d/pagoda_transport_staged_test" ] || { echo "no $d: run bench/transport/carry_staged_test.sh"; return 1; }
  LD_LIBRARY_PATH=$d/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} UCX_MODULE_DIR=$d/ucx \
    "$d/pagoda_transport_staged_test"
}

# --- kvstore engine (issue 2): the GPU tier (cudaMalloc'd fixed-slot pool) against real device memory.
step_gpu_tier_test() { "$BUILD/pagoda_kvstore_gpu_tier_test"; }

# --- end to end (issue 8): a synthetic 32K/128K decode step (select + batched fetch + sparse decode).
step_e2e_gpu_step() { "$BUILD/bench/e2e/e2e_gpu_step_bench"; }

# --- binaries built on the dev machine against its Debian libraries and carried with them and two
# trace layers (bench/e2e/carry_gpu.sh fills .devcarry/e2e).
E2E=$CARRY/e2e
e2e_run() { LD_LIBRARY_PATH=$E2E/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} "$@"; }
# --- the decode worker (issue 16): its CUDA backend against its CPU backend through the same
# worker steps, then worker_bench over the carried traces on both backends (same error expected).
step_worker_cuda_test() {
  [ -x "$E2E/worker_backend_cuda_test" ] || { echo "no $E2E (bench/e2e/carry_gpu.sh)"; return 1; }
  e2e_run "$E2E/worker_backend_cuda_test"
}
step_worker_cuda_bench() {
  [ -x "$E2E/worker_bench" ] || { echo "no $E2E (bench/e2e/carry_gpu.sh)"; return 1; }
  local b
  for b in cpu cuda; do
    echo "## --backend $b --policy quest --budget-den 16"
    e2e_run "$E2E/worker_bench" --traces "$E2E/traces" --backend $b --policy quest \
      --budget-den 16 --steps 200 || return 1
  done
}

# The worker per layer at Llama-3-8B shapes (after sdpa: its baselines), every step's selection
# fresh, with the boundary trigger, and louiskv.
step_worker_layer() {
  [ -x "$E2E/worker_layer_bench" ] || { echo "no $E2E (bench/e2e/carry_gpu.sh)"; return 1; }
  e2e_run "$E2E/worker_layer_bench" --backend cuda --sdpa "$OUT/sdpa.txt" \
    --cases "${LAYER_CASES:-32768x1,32768x8,32768x32,131072x1,131072x8}" || return 1
  e2e_run "$E2E/worker_layer_bench" --backend cuda --sdpa "$OUT/sdpa.txt" --trigger --drift 0.2 \
    --cases "${TRIGGER_CASES:-131072x1,131072x8}" || return 1
  # louiskv: k-means on the device at prefill, selection on the host (LOUIS_CASES= skips it).
  [ -z "${LOUIS_CASES-32768x1,32768x4}" ] && return 0
  e2e_run "$E2E/worker_layer_bench" --backend cuda --sdpa "$OUT/sdpa.txt" --policy louiskv \
    --cases "${LOUIS_CASES-32768x1,32768x4}"
}
# Prefill with attention through the worker (PrefillAttend: K/V writes, commits and the chunk's
# block-sparse attention over the pool) at Llama-3-8B shapes, 0% and 50% streaming heads, against
# torch SDPA causal (after sdpa_prefill: its baselines).
step_worker_prefill() {
  [ -x "$E2E/worker_layer_bench" ] || { echo "no $E2E (bench/e2e/carry_gpu.sh)"; return 1; }
  local h
  for h in 0 4; do
    e2e_run "$E2E/worker_layer_bench" --backend cuda --sdpa "$OUT/sdpa.txt" --prefill-attend \
      --streaming-heads $h --sdpa-prefill "$OUT/sdpa_prefill.txt" --steps 5 --warmup 1 \
      --cases "${PREFILL_CASES:-32768x1,131072x1}" || return 1
  done
}
# The store with its host tier mapped for the GPU (what the worker's gather reads), and the GPU tier.
step_kvstore_gpu_test() {
  [ -x "$E2E/pagoda_kvstore_gpu_test" ] || { echo "no $E2E (bench/e2e/carry_gpu.sh)"; return 1; }
  e2e_run "$E2E/pagoda_kvstore_gpu_test"
}

# The PyTorch face on the device (carried `pagoda` package for the machine's Python): the Python
# CUDA tests, then model decode throughput at 128K against dense (bench/e2e/llama_throughput.py).
py_run() {
  PYTHONPATH=$E2E/python:$ROOT/bench/e2e LD_LIBRARY_PATH=$E2E/lib:${LD_LIBRARY_PATH:-} \
    PYTHONUNBUFFERED=1 python3 "$@"
}
step_python_cuda_test() {
  [ -d "$E2E/python/pagoda" ] || { echo "no $E2E/python (bench/e2e/carry_gpu.sh with a python build)"; return 1; }
  (cd client/python/tests && py_run -m unittest -v test_decode_worker)
}
step_llama_throughput() {
  [ -d "$E2E/python/pagoda" ] || { echo "no $E2E/python (bench/e2e/carry_gpu.sh with a python build)"; return 1; }
  py_run bench/e2e/llama_throughput.py --context "${TP_CONTEXT:-131072}" \
    --runs "${TP_RUNS:-quest:3,quest+trigger:3}"
}

STEPS=${STEPS:-"build kernels_test prefill_test gpu_tier_test sdpa kernels_bench gather_paths sdpa_prefill prefill_bench transport_test transport_staged transport_bench e2e_gpu_step kvstore_gpu_test worker_cuda_test worker_cuda_bench worker_layer worker_prefill python_cuda_test llama_throughput"}  # kernels_ref_test: CI runs it
declare -A STATUS SECS
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader 2>&1 |
  tee "$OUT/device.txt"
for s in $STEPS; do
  echo "=== step $s"
  t0=$(date +%s)
  if "step_$s" >"$OUT/$s.log" 2>&1; then STATUS[$s]=ok; else STATUS[$s]="FAILED ($?)"; fi
  SECS[$s]=$(($(date +%s) - t0))
  grep -v "^\[ \+\(RUN\|OK\) \+\]" "$OUT/$s.log" | tail -n 15
  if [ "$s" = build ] && [ "${STATUS[$s]}" != ok ]; then break; fi
done
{
  echo "## bench/gpu/run.sh on $(head -1 "$OUT/device.txt"), $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| step | status | seconds |"
  echo "|---|---|---|"
  for s in $STEPS; do echo "| $s | ${STATUS[$s]:-not run} | ${SECS[$s]:-} |"; done
  echo
  [ -f "$OUT/kernels_bench.log" ] && sed -n '/^| measurement/,$p' "$OUT/kernels_bench.log"
  [ -f "$OUT/prefill_bench.log" ] && { echo; sed -n '/^| T |/,$p' "$OUT/prefill_bench.log"; }
  [ -f "$OUT/gather_paths.log" ] && { echo; grep '^[|g]' "$OUT/gather_paths.log"; }
  [ -f "$OUT/transport_bench.log" ] && { echo; grep '^[|#]' "$OUT/transport_bench.log"; }
  [ -f "$OUT/worker_prefill.log" ] && { echo; grep '^prefill through' "$OUT/worker_prefill.log"; }
} | tee "$OUT/summary.md"
for s in $STEPS; do [ "${STATUS[$s]:-}" = ok ] || exit 1; done
