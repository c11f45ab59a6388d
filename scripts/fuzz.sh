#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang (ASan + UBSan + coverage over the tree's
# decoding code) into build-fuzz/ and runs each for a given time:
#   scripts/fuzz.sh [SECONDS_PER_TARGET=60] [TARGET...]     (targets: config node_info npy
#                                                            ssd_records local_protocol grpc_handlers)
# Each run starts from the committed seeds (tests/fuzz/corpus/<target>) plus what earlier runs
# found (build-fuzz/corpus/<target>, not committed); a crash leaves its input in
# build-fuzz/crashes/<target>/ and fails the script. Copy a crashing input into
# tests/fuzz/corpus/<target>/ once fixed: the normal build replays it in ctest (fuzz_*_corpus).
# Prints one summary line per target (execs, execs/s, coverage edges, features, corpus size).
# PAGODA_FUZZ_ARGS adds libFuzzer flags (e.g. "-max_len=512 -len_control=0": long inputs from the
# start, for a slow target whose records need them).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(config node_info npy ssd_records local_protocol grpc_handlers)
BUILD_DIR=${PAGODA_FUZZ_BUILD_DIR:-build-fuzz}
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DPAGODA_FUZZ=ON -DPAGODA_ENABLE_CUDA=OFF -DPAGODA_COMPONENTS="kvstore;tests" >/dev/null
fi
if [ "${PAGODA_FUZZ_NO_BUILD:-0}" != 1 ]; then
  cmake --build "$BUILD_DIR" -j "${PAGODA_JOBS:-2}" --target "${targets[@]/%/_fuzz}"
fi
# malloc_context_size=0: no stack taken at each allocation (RocksDB's opens allocate thousands of
# times per input; ssd_records runs ~25% faster). A report then lacks the allocation's stack: replay
# the crashing input (the target binary with the input as argument) without it to get one.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1:malloc_context_size=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
for t in "${targets[@]}"; do
  corpus="$BUILD_DIR/corpus/$t" crashes="$BUILD_DIR/crashes/$t"
  mkdir -p "$corpus" "$crashes"
  log="$BUILD_DIR/fuzz-$t.log"
  # -rss_limit_mb: a decoder that allocates on an input's say-so is a bug too.
  if ! "$BUILD_DIR/tests/fuzz/${t}_fuzz" -max_total_time="$seconds" -rss_limit_mb=2048 \
      -timeout=20 -artifact_prefix="$crashes/" -print_final_stats=1 ${PAGODA_FUZZ_ARGS:-} \
      "$corpus" "tests/fuzz/corpus/$t" >"$log" 2>&1; then
    echo "fuzz: $t FAILED; input in $crashes/, log $log" >&2
    grep -m1 -E "ERROR|SUMMARY|deadly signal|timeout" "$log" >&2 || tail -5 "$log" >&2
    grep -A24 -m1 -E "^==[0-9]+==ERROR|runtime error|deadly signal" "$log" | grep -E "^ +#" >&2 || true
    # The input itself, so a log from a machine that is gone (CI) still reproduces it:
    # base64 -d > crash; build-fuzz/tests/fuzz/<target>_fuzz crash.
    unit=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    if [ -n "$unit" ] && [ -f "$unit" ] && [ "$(stat -c %s "$unit")" -le 65536 ]; then
      echo "fuzz: $t input $unit (base64):" >&2
      base64 -w 100 "$unit" >&2
    fi
    status=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -1 || true)
  echo "fuzz: $t ${seconds}s: ${execs:-?} execs (${rate:-?}/s), ${cov:-no coverage line}"
done
exit $status
