#!/usr/bin/env bash
# Memory over a long run: keyward (bench/keyward.yaml) under wrk for
# DURATION seconds (default 600) at CONNS connections (default 256),
# printing its RSS every INTERVAL seconds (default 30). A gateway whose RSS
# keeps climbing leaks; a flat line after warm-up is the goal.
#   bench/soak.sh          DURATION=600 CONNS=256 INTERVAL=30
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$ROOT/../shared/bench}
DURATION=${DURATION:-600}
CONNS=${CONNS:-256}
INTERVAL=${INTERVAL:-30}
WORK=$(mktemp -d /tmp/kwsoak.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
make -C "$ROOT" --no-print-directory build >/dev/null
(cd "$SHARED_BENCH/upstream" && go build -buildvcs=false -o "$WORK/upstream" .)
setsid "$WORK/upstream" -addr 127.0.0.1:9001 >/dev/null 2>&1 &
PIDS+=($!)
KEYWARD_BENCH_SECRET=bench-secret setsid "$ROOT/bin/keyward" serve -c "$ROOT/bench/keyward.yaml" 2>/dev/null &
kw=$!
PIDS+=($kw)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/9105) 2>/dev/null && break; sleep 0.1; done
wrk -t2 -c"$CONNS" -d"${DURATION}s" -H 'Origin: https://app.example' http://127.0.0.1:9105/my-repos >"$WORK/wrk.txt" 2>&1 &
wrkpid=$!
PIDS+=($wrkpid)
start=$SECONDS
while kill -0 "$wrkpid" 2>/dev/null; do
	printf 't=%4ds rss_MB=%s\n' $((SECONDS - start)) "$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$kw/status")"
	sleep "$INTERVAL"
done
wait "$wrkpid" || true
grep -E 'Requests/sec|requests in|Non-2xx|Socket errors' "$WORK/wrk.txt" || true
printf 'after: rss_MB=%s\n' "$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$kw/status")"
