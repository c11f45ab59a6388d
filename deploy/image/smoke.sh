#!/usr/bin/env bash
# Starts pagodad from a built image with one config and checks it serves:
#   deploy/image/smoke.sh IMAGE CONFIG.yaml [pagodad args...]
# pagodad runs inside the image (buildah run, chroot isolation, the host's network) with the
# config's own settings except ports (free ones on 127.0.0.1), paths (a scratch folder) and tier
# sizes (16 MiB: a CI machine has no 32 GiB to pin); a bearer token comes from PAGODA_TOKEN as the
# DaemonSet passes it. Checks: /healthz and /metrics answer 200; the image's `pagoda` CLI puts a
# file over the zero-copy path and reads it back over the remote path, same bytes; a call without
# the token is refused. Exit 0 when all hold; 1 with pagodad's log when any fails, including
# when pagodad cannot start with this config in this image (never a skip). Exit 3 (also a
# failure) when the only reason is that the config's GPU tier finds no GPU on this machine while
# the image has CUDA: the caller decides what that means.
set -euo pipefail
image=$1 config=$2
shift 2
BUILDAH=(buildah --storage-driver "${PAGODA_BUILDAH_DRIVER:-vfs}")
token=smoke-$RANDOM$RANDOM
dir=$(mktemp -d /tmp/pagoda-smoke.XXXXXX)
chmod 0777 "$dir"  # pagodad runs as the image's user (10001)
cp "$config" "$dir/pagodad.yaml"
chmod 0644 "$dir/pagodad.yaml"
head -c 300000 /dev/urandom >"$dir/blob"
chmod 0644 "$dir/blob"
c=$("${BUILDAH[@]}" from --pull-never --quiet "$image")
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  "${BUILDAH[@]}" rm "$c" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
run() { "${BUILDAH[@]}" run --isolation chroot --network host -v "$dir:/smoke" "$@"; }
fail() {
  echo "smoke: $image with $config: $*" >&2
  sed 's/^/  pagodad: /' "$dir/log" >&2 2>/dev/null || true
  exit 1
}

run -e "PAGODA_TOKEN=$token" "$c" -- /usr/local/bin/pagodad --config /smoke/pagodad.yaml \
  --grpc-host 127.0.0.1 --grpc-port 0 --http-host 127.0.0.1 --http-port 0 \
  --data-dir /smoke/data --local-socket /smoke/s --host-mib 16 --ssd-mib 16 \
  --port-file /smoke/ports.json "$@" >"$dir/log" 2>&1 &
runner=$!
for _ in $(seq 300); do
  [ -s "$dir/ports.json" ] && break
  kill -0 "$runner" 2>/dev/null || break
  sleep 0.1
done
if [ ! -s "$dir/ports.json" ]; then
  if grep -q "no CUDA device" "$dir/log"; then
    echo "smoke: $image has CUDA; the config's GPU tier found no GPU on this machine" >&2
    exit 3
  fi
  fail "pagodad did not start"
fi
read -r grpc_port http_port pid < <(python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
print(j["grpc_port"], j["http_port"], j["pid"])' "$dir/ports.json")

for path in /healthz /metrics; do
  code=$(python3 - "$http_port" "$path" <<'PY'
import sys, urllib.request
try:
    print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}{sys.argv[2]}", timeout=5).status)
except Exception as e:
    print(e)
PY
)
  [ "$code" = 200 ] || fail "$path answered '$code'"
done

cli=(/usr/local/bin/pagoda --target "127.0.0.1:$grpc_port" --timeout-s 20)
if run "$c" -- "${cli[@]}" stats >"$dir/noauth" 2>&1; then
  fail "a call without the token was served"
fi
run -e "PAGODA_TOKEN=$token" "$c" -- "${cli[@]}" --local put /smoke/blob --name smoke \
  >"$dir/put" 2>&1 || { cat "$dir/put" >&2; fail "CLI put (zero-copy path) failed"; }
run -e "PAGODA_TOKEN=$token" "$c" -- "${cli[@]}" --remote get smoke -o /smoke/back \
  >"$dir/get" 2>&1 || { cat "$dir/get" >&2; fail "CLI get (remote path) failed"; }
cmp -s "$dir/blob" "$dir/back" || fail "the bytes read back differ from the bytes written"

kill -TERM "$pid"
for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && fail "pagodad did not stop on SIGTERM"
wait "$runner" || fail "pagodad exited non-zero after SIGTERM"
pid=""
echo "smoke: $image with $(basename "$(dirname "$config")")/$(basename "$config"): starts;" \
  "/healthz, /metrics 200; CLI put (local) + get (remote) same bytes; no token refused"
