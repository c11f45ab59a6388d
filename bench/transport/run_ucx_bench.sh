#!/usr/bin/env bash
# UCX loopback page batches through pagoda::Transport vs ucx_perftest, same UCX_TLS, same run.
# Usage: bench/transport/run_ucx_bench.sh [BUILD_DIR] [RUNS]
# Prints per-run numbers and the median ratio (Pagoda / ucx_perftest) per case; goal >= 0.9.
set -euo pipefail
BUILD=${1:-build-transport}
RUNS=${2:-3}
BENCH=$BUILD/bench/transport/pagoda_ucx_page_bench
[ -x "$BENCH" ] || { echo "build $BENCH first (cmake --build $BUILD --target pagoda_ucx_page_bench)"; exit 1; }
command -v ucx_perftest >/dev/null || { echo "ucx_perftest missing (apt-get install ucx-utils)"; exit 1; }
PAGE=65536; BATCH=64; PAGES=8000; LATN=10000
port=$((20000 + RANDOM % 20000))

perftest() {  # perftest TLS TEST SIZE N OUTSTANDING -> prints MB/s (bw) or 50%ile usec (lat)
  local tls=$1 test=$2 size=$3 n=$4 out=$5 field=$6
  port=$((port + 1))
  UCX_TLS=$tls ucx_perftest -p $port >/dev/null 2>&1 &
  local srv=$!
  sleep 0.3
  local line
  line=$(UCX_TLS=$tls timeout 120 ucx_perftest 127.0.0.1 -p $port -t "$test" -s "$size" -n "$n" \
           -w 1000 -O "$out" 2>/dev/null | grep '^Final:' || true)
  wait $srv 2>/dev/null || true
  echo "$line" | awk -v f="$field" '{print $f}'
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo "# $(date -u +%FT%TZ) $(uname -n) $(nproc) cores; page=$PAGE batch=$BATCH; MB = 2^20 B"
# tcp with peer-failure detection (the default); shared memory needs it off (see TransportOptions).
for tls in "tcp" "tcp,sm,self"; do
  detect=$([ "$tls" = tcp ] && echo 1 || echo 0)
  for op in get get1 put lat; do
    ours=(); base=(); ratios=()
    for r in $(seq 1 "$RUNS"); do
      case $op in
        get) b=$(perftest "$tls" ucp_get $PAGE $PAGES $BATCH 6)
             o=$($BENCH --tls "$tls" --detect $detect --op get --page $PAGE --batch $BATCH --pages $PAGES | sed 's/.*MBps=//') ;;
        # get1: every op reads the same remote page, the footprint ucx_perftest uses (cache-resident).
        get1) b=$(perftest "$tls" ucp_get $PAGE $PAGES $BATCH 6)
             o=$($BENCH --tls "$tls" --detect $detect --op get --region-pages 1 --page $PAGE --batch $BATCH --pages $PAGES | sed 's/.*MBps=//') ;;
        put) b=$(perftest "$tls" ucp_put_bw $PAGE $PAGES $BATCH 6)
             o=$($BENCH --tls "$tls" --detect $detect --op put --page $PAGE --batch $BATCH --pages $PAGES | sed 's/.*MBps=//') ;;
        lat) b=$(perftest "$tls" ucp_get 8 $LATN 1 3)
             o=$($BENCH --tls "$tls" --detect $detect --op lat --pages $LATN | sed 's/.*median_usec=\([0-9.]*\).*/\1/') ;;
      esac
      if [ "$op" = lat ]; then ratio=$(awk -v a="$b" -v o="$o" 'BEGIN{printf "%.3f", a/o}')
      else ratio=$(awk -v a="$b" -v o="$o" 'BEGIN{printf "%.3f", o/a}'); fi
      echo "tls=$tls detect=$detect op=$op run=$r pagoda=$o ucx_perftest=$b ratio=$ratio"
      ratios+=("$ratio")
    done
    unit=$([ "$op" = lat ] && echo "usec (ratio = perftest/pagoda)" || echo "MB/s")
    echo "SUMMARY tls=$tls op=$op median_ratio=$(printf '%s\n' "${ratios[@]}" | median) [$unit]"
  done
done
