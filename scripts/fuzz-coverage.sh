#!/usr/bin/env bash
# Which lines of the code under test a fuzz target's corpus reaches: builds the target's replay
# binary with clang's source-based coverage into build-fuzzcov/ (CUDA off, kvstore + tests), runs
# it over the corpus and prints llvm-cov's per-file report for the project's own sources (not the
# harnesses, not third-party headers).
#   scripts/fuzz-coverage.sh TARGET [FILE_OR_DIR...]
# Without inputs it replays what scripts/fuzz.sh keeps: build-fuzz/corpus/TARGET plus the committed
# seeds tests/fuzz/corpus/TARGET. Line coverage does not depend on thread timing the way
# libFuzzer's edge count does, so two corpora (before and after a long run) compare by it.
# Every line with its count (0: never reached) goes to build-fuzzcov/TARGET-lines.txt ("$cov" show).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 TARGET [FILE_OR_DIR...]" >&2; exit 2; }
target=$1
shift
inputs=("$@")
[ ${#inputs[@]} -eq 0 ] && inputs=("build-fuzz/corpus/$target" "tests/fuzz/corpus/$target")
BUILD_DIR=${PAGODA_FUZZCOV_BUILD_DIR:-build-fuzzcov}
cov=$(command -v llvm-cov-14 || command -v llvm-cov || true)
profdata=$(command -v llvm-profdata-14 || command -v llvm-profdata || true)
if [ -z "$cov" ] || [ -z "$profdata" ]; then
  echo "fuzz-coverage: needs llvm-cov and llvm-profdata (apt-get install llvm-14)" >&2
  exit 2
fi
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
    -DPAGODA_FUZZ_COVERAGE=ON -DPAGODA_ENABLE_CUDA=OFF -DPAGODA_COMPONENTS="kvstore;tests" \
    >/dev/null
fi
cmake --build "$BUILD_DIR" -j "${PAGODA_JOBS:-2}" --target "${target}_fuzz"
bin="$BUILD_DIR/tests/fuzz/${target}_fuzz"
profiles="$BUILD_DIR/profiles/$target"
rm -rf "$profiles"
mkdir -p "$profiles"
existing=()
for i in "${inputs[@]}"; do [ -e "$i" ] && existing+=("$i"); done
[ ${#existing[@]} -gt 0 ] || { echo "fuzz-coverage: no inputs among ${inputs[*]}" >&2; exit 2; }
# %p: the target's own child processes (none today) would each write their own profile.
LLVM_PROFILE_FILE="$profiles/%p.profraw" "$bin" "${existing[@]}"
"$profdata" merge -sparse "$profiles"/*.profraw -o "$profiles/merged.profdata"
# Sources show up as build-fuzzcov/../<path>; generated code as build-fuzzcov/<path>.
ignore='(^/usr/|/build[^/]*/[^.]|/tests/)'
"$cov" show "$bin" -instr-profile="$profiles/merged.profdata" -ignore-filename-regex="$ignore" \
  -show-line-counts-or-regions >"$BUILD_DIR/$target-lines.txt"
"$cov" report "$bin" -instr-profile="$profiles/merged.profdata" -ignore-filename-regex="$ignore"
