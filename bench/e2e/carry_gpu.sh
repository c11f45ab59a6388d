#!/usr/bin/env bash
# Prepares .devcarry/e2e for the GPU machine (which has no Debian -dev packages): the decode
# worker's CUDA test, the GPU tier test and the worker benches, built here (nvcc, sm_90) against
# Debian's RocksDB / absl / gRPC, with every shared library they need, plus a subset of the
# attention traces. bench/gpu/run.sh's worker_cuda_test, worker_cuda_bench and worker_layer steps
# run them from there; `bench/gpu/run.sh --pack` compresses every carry into one file.
#   here:   cmake --build <build> --target worker_backend_cuda_test \
#                   pagoda_kvstore_gpu_test worker_bench worker_layer_bench \
#                   pagoda_kernel_trace
#           bench/e2e/carry_gpu.sh <build> [trace dir] [python build]
#   [python build]: a build configured for the GPU machine's Python (3.12 there:
#   -DPython3_EXECUTABLE=<a python3.12 with its headers>) whose target pagoda_python is built:
#   its package `pagoda` goes to .devcarry/e2e/python for the PyTorch steps (python_cuda_test,
#   llama_throughput).
#           bench/gpu/run.sh --pack
#   device: run(command="bench/gpu/run.sh", carry=[".devcarry/pack.tar.xz"])
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build-cuda}
TRACES=${2:-../shared/data/traces}
PY_BUILD=${3:-}
DST=.devcarry/e2e
rm -rf "$DST" && mkdir -p "$DST/lib" "$DST/traces"
for bin in "$BUILD/client/worker_backend_cuda_test" "$BUILD/kernels/kernels_cuda_test" \
           "$BUILD/kvstore/engine/pagoda_kvstore_gpu_test" "$BUILD/bench/e2e/worker_bench" \
           "$BUILD/bench/e2e/worker_layer_bench"; do
  strip --strip-all -o "$DST/$(basename "$bin")" "$bin"
  # Every shared library it needs except the C runtime, the C++ runtime and CUDA's own (the GPU
  # machine has a matching driver and runtime).
  ldd "$bin" | awk '/=> \//{print $3}' |
    grep -vE '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libstdc\+\+|libgcc_s|libcuda|libcudart)\.so' |
    xargs -r -I{} cp -Ln {} "$DST/lib/"
done
if [ -n "$PY_BUILD" ]; then
  mkdir -p "$DST/python/pagoda"
  src=$PY_BUILD/client/python/pagoda
  cp "$src"/*.py "$src"/*.pyi "$DST/python/pagoda/"
  for so in "$src"/_pagoda*.so; do
    strip --strip-all -o "$DST/python/pagoda/$(basename "$so")" "$so"
    ldd "$so" | awk '/=> \//{print $3}' |
      grep -vE '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libstdc\+\+|libgcc_s|libcuda|libcudart|libpython[^/]*)\.so' |
      xargs -r -I{} cp -Ln {} "$DST/lib/"
  done
fi
# The device-timeline recorder (bench/gpu/kernel_trace.cc) and the CUPTI it needs.
if [ -f "$BUILD/bench/gpu/libpagoda_kernel_trace.so" ]; then
  cp "$BUILD/bench/gpu/libpagoda_kernel_trace.so" "$DST/lib/"
  cp -L "$(ldd "$BUILD/bench/gpu/libpagoda_kernel_trace.so" | awk '/libcupti/{print $3}')" "$DST/lib/"
fi
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
