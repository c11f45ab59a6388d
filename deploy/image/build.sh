#!/usr/bin/env bash
# Builds Pagoda's image from deploy/Dockerfile without a Docker engine or a registry:
#   deploy/image/build.sh [cpu|cuda]      -> localhost/pagoda/pagodad:0.1.0[-cuda]
# buildah (vfs storage, chroot isolation: works unprivileged in containers and VMs alike) on the
# base images deploy/image/base.sh makes from Debian packages. RUN steps reach Debian's archive
# through the host's network. The cuda variant mounts this machine's CUDA toolkit
# (${PAGODA_CUDA_HOME:-/usr/local/cuda}) into the build stage. A ccache folder on the host
# (${PAGODA_IMAGE_CCACHE:-/var/cache/pagoda/image-ccache}) is mounted too, so a rebuild after a
# small change takes seconds, not minutes. Prints the image name last.
set -euo pipefail
cd "$(dirname "$0")/../.."
variant=${1:-cpu}
BUILDAH=(buildah --storage-driver "${PAGODA_BUILDAH_DRIVER:-vfs}")
for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || { echo "image: $tool is required (apt-get install $tool)" >&2; exit 1; }
done
deploy/image/base.sh

ccache_dir=${PAGODA_IMAGE_CCACHE:-/var/cache/pagoda/image-ccache}
mkdir -p "$ccache_dir"
args=(--build-arg "BUILD_JOBS=${PAGODA_JOBS:-2}" -v "$ccache_dir:/ccache")
case "$variant" in
  cpu) tag=localhost/pagoda/pagodad:0.1.0 ;;
  cuda)
    tag=localhost/pagoda/pagodad:0.1.0-cuda
    cuda=$(readlink -f "${PAGODA_CUDA_HOME:-/usr/local/cuda}")
    if [ ! -x "$cuda/bin/nvcc" ]; then
      echo "image: the cuda variant needs a CUDA toolkit; none at $cuda" >&2
      exit 1
    fi
    args+=(--build-arg PAGODA_CUDA=ON -v "$cuda:/usr/local/cuda:ro")
    ;;
  *) echo "usage: $0 [cpu|cuda]" >&2; exit 2 ;;
esac
start=$(date +%s)
"${BUILDAH[@]}" bud --isolation chroot --pull-never --layers --format docker "${args[@]}" \
  -f deploy/Dockerfile -t "$tag" . >&2
echo "image: $tag built in $(( $(date +%s) - start )) s" >&2
echo "$tag"
