#!/usr/bin/env bash
# Sanitizer runs of the test suite (CUDA off: no GPU test runs on a CI machine anyway).
#   scripts/sanitize.sh asan   ASan + UBSan build of the whole tree (build-asan/), every test
#   scripts/sanitize.sh tsan   TSan build (build-tsan/) of store, service, client and cluster,
#                              and their tests
#   scripts/sanitize.sh        both
# PAGODA_SANITIZE_TESTS=REGEX narrows the tests run. Exit non-zero on any report: ASan/UBSan
# abort the test (halt_on_error), TSan exits 66. Leak checking is on for ASan.
set -euo pipefail
cd "$(dirname "$0")/.."
modes=("$@")
[ ${#modes[@]} -eq 0 ] && modes=(asan tsan)
jobs=${PAGODA_JOBS:-2}
for mode in "${modes[@]}"; do
  case "$mode" in
    asan)
      dir=build-asan san=address,undefined components="kernels;transport;kvstore;retriever;client;tests"
      tests=${PAGODA_SANITIZE_TESTS:-.}
      # The Python binding test loads an ASan-built module into an uninstrumented interpreter.
      exclude=python_cli
      ;;
    tsan)
      dir=build-tsan san=thread components="transport;kvstore;client;tests"
      tests=${PAGODA_SANITIZE_TESTS:-store|service|client|cluster|local|grpc|http}
      exclude=python_cli
      ;;
    *) echo "usage: $0 [asan|tsan]..." >&2; exit 2 ;;
  esac
  if [ ! -f "$dir/build.ninja" ]; then
    cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPAGODA_ENABLE_CUDA=OFF \
      -DPAGODA_SANITIZE="$san" -DPAGODA_COMPONENTS="$components" >/dev/null
  fi
  start=$(date +%s)
  cmake --build "$dir" -j "$jobs"
  echo "sanitize: $mode build took $(( $(date +%s) - start )) s"
  export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:abort_on_error=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
  export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/scripts/sanitizers/lsan.supp}
  export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/scripts/sanitizers/tsan.supp}
  start=$(date +%s)
  ctest --test-dir "$dir" --output-on-failure -j "${PAGODA_TEST_JOBS:-2}" --timeout 1800 \
    -R "$tests" -E "$exclude"
  echo "sanitize: $mode tests took $(( $(date +%s) - start )) s"
done
