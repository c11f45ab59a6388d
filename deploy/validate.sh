#!/usr/bin/env bash
# Validates deploy/ offline (run by scripts/test.sh):
#  1. every kustomize overlay renders (`kubectl kustomize`, no cluster needed);
#  2. every rendered object validates against the Kubernetes API schemas (npm kubernetes-models)
#     plus cross-object checks (selectors, probe ports, ConfigMap references);
#  3. the Dockerfile passes a small lint (hadolint is not in Debian);
#  4. each overlay's pagodad starts with its config: in the image it names when
#     PAGODA_IMAGE_CHECK=1 (built with buildah, see image/), else with the tree's build (../build).
# Each checker first proves it rejects known-bad input (--self-test).
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v kubectl >/dev/null; then
  echo "deploy: kubectl is required (kustomize is built into it)" >&2
  exit 1
fi
if [ ! -d validate/node_modules ]; then
  (cd validate && npm ci --no-audit --no-fund --loglevel=error)
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

overlays=()
for dir in k8s/overlays/*/; do
  name=$(basename "$dir")
  overlays+=("$name")
  if ! kubectl kustomize "$dir" >"$out/$name.yaml" 2>"$out/$name.err"; then
    echo "deploy: kustomize failed for overlay $name:" >&2
    cat "$out/$name.err" >&2
    exit 1
  fi
done

node validate/validate.mjs --self-test
node validate/validate.mjs "$out"/*.yaml
node validate/dockerfile-lint.mjs --self-test
node validate/dockerfile-lint.mjs Dockerfile

# 4. Each overlay's pagodad starts with its own config. With PAGODA_IMAGE_CHECK=1 in the image
#    the overlay names (built here by image/build.sh, run by image/smoke.sh: /healthz, /metrics,
#    a CLI round trip, the token enforced); otherwise with the tree's own build. A config that its
#    image (or build) cannot start fails validation, never "skipped".
for name in "${overlays[@]}"; do
  node validate/validate.mjs --pagodad "$out/$name.yaml" >"$out/$name.json"
  python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
open(sys.argv[2], "w").write(j["config"] or "")
print(j["image"])' "$out/$name.json" "$out/$name-pagodad.yaml" >"$out/$name.image"
done
needs_gpu() { grep -qE '^\s*gpu_bytes:\s*[1-9]' "$1"; }
if [ "${PAGODA_IMAGE_CHECK:-0}" = 1 ]; then
  declare -A built=()
  for name in "${overlays[@]}"; do
    image=$(cat "$out/$name.image")
    variant=cpu
    case "$image" in *-cuda) variant=cuda ;; esac
    if [ -z "${built[$variant]:-}" ]; then
      built[$variant]=$(image/build.sh "$variant")
    fi
    local_image=${built[$variant]}
    # The overlay must name the tag build.sh gives this variant (what a registry push would carry).
    if [ "${local_image#localhost/}" != "$image" ]; then
      echo "deploy: overlay $name runs $image, but the $variant image is ${local_image#localhost/}" >&2
      exit 1
    fi
    rc=0
    image/smoke.sh "$local_image" "$out/$name-pagodad.yaml" || rc=$?
    if [ "$rc" = 3 ] && [ "$variant" = cuda ] && needs_gpu "$out/$name-pagodad.yaml"; then
      # The CUDA image reached the GPU probe (it was built with CUDA); this machine has no GPU.
      # Everything but the GPU tier is still checked: the same config with the GPU tier off.
      sed -E 's/^(\s*gpu_bytes:).*/\1 0/' "$out/$name-pagodad.yaml" >"$out/$name-nogpu.yaml"
      image/smoke.sh "$local_image" "$out/$name-nogpu.yaml"
      echo "deploy: $name: the GPU tier itself needs a GPU node (none here); the rest serves"
    elif [ "$rc" != 0 ]; then
      echo "deploy: overlay $name: pagodad does not start in $image with its config" >&2
      exit 1
    fi
  done
else
  pagodad="${PAGODA_BUILD_DIR:-../build}/kvstore/service/pagodad"
  case "$pagodad" in /*) ;; *) pagodad="$PWD/$pagodad" ;; esac
  if [ ! -x "$pagodad" ]; then
    echo "deploy: no pagodad at $pagodad (build first, or PAGODA_IMAGE_CHECK=1)" >&2
    exit 1
  fi
  for name in "${overlays[@]}"; do
    cfg="$out/$name-pagodad.yaml"
    dir="$out/run-$name"
    mkdir -p "$dir"
    # Ports, sizes and paths are overridden so the check runs anywhere; the rest is the file's.
    timeout 20 "$pagodad" --config "$cfg" --grpc-host 127.0.0.1 --grpc-port 0 \
      --http-host 127.0.0.1 --http-port 0 --data-port 0 --data-dir "$dir" --local-socket "$dir/s" \
      --host-mib 16 --ssd-mib 16 --port-file "$dir/ports.json" >"$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
      [ -s "$dir/ports.json" ] && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if [ ! -s "$dir/ports.json" ] && needs_gpu "$cfg" && grep -q "no CUDA device" "$dir/log"; then
      # This build has CUDA (it reached the device probe); the machine has no GPU.
      echo "deploy: $name: config parses; its GPU tier needs a GPU node (this build has CUDA)"
      continue
    fi
    if [ ! -s "$dir/ports.json" ]; then
      echo "deploy: pagodad does not start with overlay $name's config:" >&2
      cat "$dir/log" >&2
      kill "$pid" 2>/dev/null || true
      exit 1
    fi
    http_port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["http_port"])' \
      "$dir/ports.json")
    for path in /healthz /metrics; do
      status=$(python3 -c '
import sys, urllib.request
try:
    print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}{sys.argv[2]}", timeout=5).status)
except Exception as e:
    print(e)' "$http_port" "$path")
      if [ "$status" != 200 ]; then
        echo "deploy: $path answered '$status' with overlay $name" >&2
        kill "$pid"
        exit 1
      fi
    done
    kill -TERM "$pid"
    wait "$pid"
    echo "deploy: $name: pagodad starts with its config; /healthz and /metrics answer 200"
  done
fi
echo "deploy: all checks passed"
