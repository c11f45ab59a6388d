#!/usr/bin/env bash
# Validates deploy/ offline (run by scripts/test.sh):
#  1. every kustomize overlay renders (`kubectl kustomize`, no cluster needed);
#  2. every rendered object validates against the Kubernetes API schemas (npm kubernetes-models)
#     plus cross-object checks (selectors, probe ports, ConfigMap references);
#  3. the Dockerfile passes a small lint (hadolint is not in Debian);
#  4. when a built pagodad is around, each pagodad.yaml here starts it (the config parses).
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

for dir in k8s/overlays/*/; do
  name=$(basename "$dir")
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

pagodad="${PAGODA_BUILD_DIR:-../build}/kvstore/service/pagodad"
case "$pagodad" in /*) ;; *) pagodad="$PWD/$pagodad" ;; esac
if [ -x "$pagodad" ]; then
  for cfg in $(find k8s -name pagodad.yaml | sort); do
    dir="$out/run-$(echo "$cfg" | tr '/' '_')"
    mkdir -p "$dir"
    # Ports, sizes and paths are overridden so the check runs anywhere; the rest is the file's.
    timeout 20 "$pagodad" --config "$cfg" --grpc-host 127.0.0.1 --grpc-port 0 --http-port 0 \
      --data-dir "$dir" --local-socket "$dir/s" --host-mib 16 --ssd-mib 16 \
      --port-file "$dir/ports.json" >"$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
      [ -s "$dir/ports.json" ] && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if [ ! -s "$dir/ports.json" ] && grep -qE "built without CUDA|no CUDA device" "$dir/log"; then
      echo "$cfg: parses; start skipped (its GPU tier needs a CUDA build and a GPU)"
      continue
    fi
    if [ ! -s "$dir/ports.json" ]; then
      echo "deploy: pagodad does not start with $cfg:" >&2
      cat "$dir/log" >&2
      kill "$pid" 2>/dev/null || true
      exit 1
    fi
    # The probes' path and the scrape path answer on the HTTP port.
    http_port=$(sed -n 's/.*"http_port": *\([0-9]*\).*/\1/p' "$dir/ports.json")
    for path in /healthz /metrics; do
      exec 3<>"/dev/tcp/127.0.0.1/$http_port"
      printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$path" >&3
      status=$(head -n 1 <&3 | tr -d '\r')
      exec 3<&-
      case "$status" in
        *" 200"*) ;;
        *) echo "deploy: $path answered '$status' with $cfg" >&2; kill "$pid"; exit 1 ;;
      esac
    done
    kill -TERM "$pid"
    wait "$pid"
    echo "$cfg: pagodad starts with it; /healthz and /metrics answer 200"
  done
else
  echo "deploy: no pagodad at $pagodad; config start check skipped"
fi
echo "deploy: all checks passed"
