#!/usr/bin/env bash
# Installs the Debian 12 packages Pagoda builds and tests with. Safe to rerun: only what is missing
# is installed.
set -euo pipefail
PKGS=(
  build-essential cmake ninja-build ccache pkg-config git clang-format python3 python3-numpy
  librocksdb-dev libfaiss-dev libopenblas-dev libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev
  protobuf-compiler libabsl-dev libucx-dev ucx-utils rdma-core libibverbs-dev librdmacm-dev
  libgtest-dev libgmock-dev libbenchmark-dev etcd-server etcd-client prometheus-cpp-dev
  libyaml-cpp-dev libcli11-dev nlohmann-json3-dev libspdlog-dev libfmt-dev liburing-dev
  libxxhash-dev libnuma-dev pybind11-dev python3-dev redis-server iproute2
  libdlpack-dev python3-torch python3-venv
  libcivetweb-dev libhiredis-dev openssl clang libclang-rt-14-dev
)
# deploy/validate.sh with PAGODA_IMAGE_CHECK=1 builds the container image without a Docker engine.
if [ "${PAGODA_IMAGE_CHECK:-0}" = 1 ]; then PKGS+=(buildah debootstrap); fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "pagoda: installing ${#missing[@]} missing packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# deploy/validate.sh needs node + npm. Some images ship NodeSource's nodejs (npm included), which
# conflicts with Debian's npm package: install Debian's only when no npm is present at all.
if ! command -v npm >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
