#!/usr/bin/env bash
# Memory over a long run: keyward (bench/keyward.yaml) under wrk for
# DURATION seconds (default 600) at CONNS connections (default 256),
# printing its RSS every INTERVAL seconds (default 30). A gateway whose RSS
# keeps climbing leaks; a flat line after warm-up is the goal.
#   bench/soak.sh          DURATION=600 CONNS=256 INTERVAL=30
# Installs wrk when missing (as root).
set -euo pipefail
DURATION=${DURATION:-600}
CONNS=${CONNS:-256}
INTERVAL=${INTERVAL:-30}
# shellcheck source=bench/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need wrk ps
build
start_upstream
start keyward 9105 "$ROOT/bin/keyward" serve -c "$BENCH/keyward.yaml"
kw=${PID[keyward]}
wait_ready keyward 9105
wrk -t2 -c"$CONNS" -d"${DURATION}s" -H 'Origin: https://app.example' http://127.0.0.1:9105/my-repos >"$WORK/wrk.txt" 2>&1 &
wrkpid=$!
STARTED+=("$wrkpid")
start=$SECONDS
while kill -0 "$wrkpid" 2>/dev/null; do
	printf 't=%4ds rss_MB=%s\n' $((SECONDS - start)) "$(rss_mb "$kw")"
	sleep "$INTERVAL"
done
wait "$wrkpid" || true
forget "$wrkpid"
grep -E 'Requests/sec|requests in|Non-2xx|Socket errors' "$WORK/wrk.txt" || true
printf 'after: rss_MB=%s\n' "$(rss_mb "$kw")"
