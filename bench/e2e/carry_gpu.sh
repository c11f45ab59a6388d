#!/usr/bin/env bash
# Prepares .devcarry/e2e for the GPU machine (which has no Debian -dev packages): the CUDA decode
# backend's test and e2e_bench, built here (nvcc, sm_90) against Debian's RocksDB / absl / gRPC,
# with every shared library they need, plus a subset of the attention traces. bench/gpu/run.sh's
# steps e2e_cuda_test and e2e_cuda_bench run them from there.
#   here:   cmake --build <build> --target decode_backend_cuda_test e2e_bench
#           bench/e2e/carry_gpu.sh <build> [trace dir]
#   device: run(command="STEPS='e2e_cuda_test e2e_cuda_bench' bench/gpu/run.sh",
#               carry=[".devcarry/e2e"])
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build-cuda}
TRACES=${2:-../shared/data/traces}
DST=.devcarry/e2e
rm -rf "$DST" && mkdir -p "$DST/lib" "$DST/traces"
for bin in "$BUILD/client/decode_backend_cuda_test" "$BUILD/bench/e2e/e2e_bench"; do
  strip --strip-debug -o "$DST/$(basename "$bin")" "$bin"
  # Every shared library it needs except the C runtime, the C++ runtime and CUDA's own (the GPU
  # machine has a matching driver and runtime).
  ldd "$bin" | awk '/=> \//{print $3}' |
    grep -vE '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libstdc\+\+|libgcc_s|libcuda|libcudart)\.so' |
    xargs -r -I{} cp -Ln {} "$DST/lib/"
done
# BLAS / LAPACK (needed by FAISS, linked through the retriever): Debian's reference builds instead
# of OpenBLAS (36 MiB would not fit the 64 MiB carry; the test and the bench never call BLAS).
rm -f "$DST"/lib/libopenblas.so.* "$DST/lib/libblas.so.3" "$DST/lib/liblapack.so.3"
cp -L /usr/lib/x86_64-linux-gnu/blas/libblas.so.3 /usr/lib/x86_64-linux-gnu/lapack/liblapack.so.3 \
  "$DST/lib/"
# Two (doc, layer) pairs of the traces (their README: q for the last 1024 positions, k / v for all).
for f in doccode_dev_L04_q doccode_dev_L04_k doccode_dev_L04_v doccode_dev_ids \
         docprose_dev_L08_q docprose_dev_L08_k docprose_dev_L08_v docprose_dev_ids; do
  cp "$TRACES/$f.npy" "$DST/traces/"
done
du -sh "$DST"
