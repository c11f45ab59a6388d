#!/usr/bin/env bash
# Makes the base images deploy/Dockerfile starts FROM (localhost/debian:12 and
# localhost/debian:12-slim) out of Debian packages, for machines that reach Debian's archive but
# no container registry: `debootstrap --variant=minbase bookworm` into a folder, committed with
# buildah. Does nothing when both images exist. Needs root, buildah and debootstrap.
set -euo pipefail
BUILDAH=(buildah --storage-driver "${PAGODA_BUILDAH_DRIVER:-vfs}")
have() { "${BUILDAH[@]}" inspect --type image "$1" >/dev/null 2>&1; }
if have localhost/debian:12 && have localhost/debian:12-slim; then exit 0; fi

rootfs=$(mktemp -d /var/tmp/pagoda-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "image: debootstrap --variant=minbase bookworm (about a minute)"
debootstrap --variant=minbase bookworm "$rootfs" "${PAGODA_DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
  >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"
# What a debian:12 image has: the security archive next to the main one, no apt caches.
echo "deb http://deb.debian.org/debian-security bookworm-security main" \
  >"$rootfs/etc/apt/sources.list.d/security.list"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

c=$("${BUILDAH[@]}" from scratch)
mnt=$("${BUILDAH[@]}" mount "$c")
cp -a "$rootfs"/. "$mnt"/
"${BUILDAH[@]}" umount "$c" >/dev/null
"${BUILDAH[@]}" config --cmd /bin/bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c"
"${BUILDAH[@]}" commit --quiet --rm "$c" localhost/debian:12 >/dev/null
"${BUILDAH[@]}" tag localhost/debian:12 localhost/debian:12-slim
echo "image: base images localhost/debian:12 and :12-slim committed"
