#!/usr/bin/env bash
# Builds, tests and benchmarks ALL of Pagoda's CUDA code in one device call; prints a table last.
#
# Where it builds: on the GPU machine, which has nvcc 13, cmake, ninja and PyTorch but no Debian
# -dev packages. The CUDA code therefore builds standalone (`cmake -S bench/gpu`, which adds
# kernels/; see bench/gpu/CMakeLists.txt) against absl and GTest taken from Debian 12's own .debs
# (libabsl-dev, libabsl20220623, libgtest-dev, libgmock-dev), unpacked into .devcarry/ (ignored by
# git) on the dev machine and carried along:
#   here:   bench/gpu/run.sh --prepare
#   device: run(command="bench/gpu/run.sh", carry=[".devcarry"])
# Results: each step's log goes to $OUT/<step>.log ($OUT defaults to ./gpu-out); the table printed
# last is also written to $OUT/summary.md.
#
# Adding a step (another part's CUDA test or benchmark): write a function step_<name> that runs
# from the repository root with the build in $BUILD and returns non-zero on failure, and add
# <name> to STEPS. Targets that need only CUDA + absl + GTest can join the standalone build in
# bench/gpu/CMakeLists.txt. Environment: STEPS="build kernels_test" runs a subset;
# BUILD_TARGETS="kernels_cuda_test kernels_bench" builds only those targets.
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

# --- end to end on the CUDA DecodeBackend (issue 8): DecodeSession over an embedded Store (RocksDB),
# so built on the dev machine and carried with its libraries and two trace layers
# (bench/e2e/carry_gpu.sh fills .devcarry/e2e); skipped when that carry is absent.
E2E=$CARRY/e2e
e2e_run() { LD_LIBRARY_PATH=$E2E/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} "$@"; }
step_e2e_cuda_test() {
  [ -x "$E2E/decode_backend_cuda_test" ] || { echo "skipped: no $E2E (bench/e2e/carry_gpu.sh)"; return 0; }
  e2e_run "$E2E/decode_backend_cuda_test"
}
# Every step and trigger rows on both upload paths, E2E_RUNS times (medians: bench/RESULTS.md).
step_e2e_cuda_bench() {
  [ -x "$E2E/e2e_bench" ] || { echo "skipped: no $E2E (bench/e2e/carry_gpu.sh)"; return 0; }
  local r b bench=$E2E/e2e_bench tr=$E2E/traces
  for r in ${E2E_RUNS:-1 2 3}; do
    for b in cuda cuda-mapped; do
      echo "## run $r: --backend $b --trigger 0"
      e2e_run "$bench" --traces "$tr" --backend "$b" --trigger 0 || return 1
      echo "## run $r: --backend $b --louis-rate 0.2"
      e2e_run "$bench" --traces "$tr" --backend "$b" --louis-rate 0.2 || return 1
    done
  done
  echo "## streaming: --backend cuda --policy streaming --window-pages 31 --trigger 0"
  e2e_run "$bench" --traces "$tr" --backend cuda --policy streaming --window-pages 31 --trigger 0
}

STEPS=${STEPS:-"build kernels_test prefill_test gpu_tier_test sdpa kernels_bench transport_test transport_bench e2e_gpu_step e2e_cuda_test e2e_cuda_bench"}  # kernels_ref_test: CI runs it
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
  [ -f "$OUT/transport_bench.log" ] && { echo; grep '^[|#]' "$OUT/transport_bench.log"; }
} | tee "$OUT/summary.md"
for s in $STEPS; do [ "${STATUS[$s]:-}" = ok ] || exit 1; done
