#!/usr/bin/env bash
# Prepares .devcarry/transport: the host-staged GPU path's test (UCX + CUDA), built here against
# Debian's UCX, with the shared libraries and UCX modules it needs, for the GPU machine (which has
# no Debian -dev packages). bench/gpu/run.sh's step transport_staged runs it from there.
#   here:   cmake --build <build> --target pagoda_transport_staged_test
#           bench/transport/carry_staged_test.sh <build>
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build-transport}
BIN=$BUILD/transport/pagoda_transport_staged_test
DST=.devcarry/transport
rm -rf "$DST" && mkdir -p "$DST/lib" "$DST/ucx"
cp "$BIN" "$DST/"
# Every shared library it needs except the C runtime, the C++ runtime and CUDA's own.
ldd "$BIN" | awk '/=> \//{print $3}' |
  grep -vE '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libstdc\+\+|libgcc_s|libcuda|libcudart)\.so' |
  xargs -r -I{} cp -L {} "$DST/lib/"
# UCX loads its transports as modules, and those have their own needs (verbs, rdmacm, numa).
cp -L /usr/lib/x86_64-linux-gnu/ucx/*.so.0 "$DST/ucx/"
for m in /usr/lib/x86_64-linux-gnu/ucx/*.so.0; do
  ldd "$m" | awk '/=> \//{print $3}' |
    grep -vE '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libstdc\+\+|libgcc_s)\.so' |
    xargs -r -I{} cp -Ln {} "$DST/lib/"
done
du -sh "$DST"
