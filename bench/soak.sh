#!/usr/bin/env bash
# Memory over a long run (issue 15, docs/OPERATIONS.md "Under load and
# faults: measured"), in two parts:
#   1. the mixed soak: keyward (bench/faults/keyward.yaml, store on a local
#      redis-server) under the checking client's steady mixed load
#      (bench/faults: plain, cached, limited and fail_closed routes, event
#      streams; RATE requests/s) for DURATION seconds (default 600), a new
#      config renamed into place every RELOAD_EVERY seconds (default 30),
#      its RSS, Go heap and goroutines sampled every INTERVAL seconds
#      (default 10). Flat: after the first minute (warm-up), the
#      least-squares trend of RSS grows by at most max(2 MB, 5%) over the
#      run. Every answer is checked as in bench/faults.sh.
#   2. IDLE idle keep-alive connections (default 10000; 0 skips) held for
#      10 s on a fresh keyward with bench/keyward.yaml (bench/idleconns):
#      its RSS, read once they are open and again at the end of the hold,
#      must stay at most IDLE_MAX_MB (default 150).
# About DURATION + 40 s; exits 1 when a figure is not met. The report is
# also written to bench/results/soak.txt, and every request of part 1 to
# soak-raw.tsv there.
#   bench/soak.sh          DURATION=600 RATE=500 INTERVAL=10 RELOAD_EVERY=30 IDLE=10000
# LOAD=wrk runs the earlier soak instead of part 1: bench/keyward.yaml's one
# route under wrk at CONNS connections (default 256), RSS printed every
# INTERVAL seconds. Installs redis-server (and wrk for LOAD=wrk) when
# missing (as root).
set -euo pipefail
DURATION=${DURATION:-600}
RATE=${RATE:-500}
INTERVAL=${INTERVAL:-10}
RELOAD_EVERY=${RELOAD_EVERY:-30}
IDLE=${IDLE:-10000}
IDLE_MAX_MB=${IDLE_MAX_MB:-150}
LOAD=${LOAD:-mixed}
CONNS=${CONNS:-256}
# shellcheck source=bench/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# report: what it reads, on stdout and appended to the report.
report() { tee -a "$WORK/report.txt"; }

# mixed_soak: part 1; its status is the checking client's.
mixed_soak() {
	build_faults
	mkdir -p "$BENCH/results"
	start_redis
	start_faults_upstream
	start_faults_keyward
	local kw=${PID[keyward]} reloads=$((DURATION / RELOAD_EVERY - 1)) reloadpid rc=0
	log "mixed soak: keyward $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo dev), pid $kw; $RATE requests/s for ${DURATION}s, $reloads reloads; work folder $WORK"
	if ((reloads > 0)); then
		reloader "$reloads" "$RELOAD_EVERY" &
		reloadpid=$!
		STARTED+=("$reloadpid")
	fi
	"$WORK/bin/faults" load -url http://127.0.0.1:9205 -rate "$RATE" -duration "${DURATION}s" \
		-pid "$kw" -sample "${INTERVAL}s" -warmup 60s -metrics http://127.0.0.1:9206/metrics \
		-upstream-log "$WORK/ids.log" -events "$WORK/events.log" -redis 127.0.0.1:9207 -raw "$BENCH/results/soak-raw.tsv" | report || rc=$?
	if [[ -n ${reloadpid:-} ]]; then
		wait "$reloadpid" || true
		forget "$reloadpid"
	fi
	if ! kill -0 "$kw" 2>/dev/null; then
		log "keyward exited during the soak:"
		tail -20 "$WORK/keyward.log" >&2
		rc=1
	fi
	printf 'keyward log: %s lines; level ERROR %s, WARN %s\n' "$(wc -l <"$WORK/keyward.log")" \
		"$(grep -c '"level":"ERROR"' "$WORK/keyward.log" || true)" "$(grep -c '"level":"WARN"' "$WORK/keyward.log" || true)" | report
	stop "$kw"
	stop "${PID[upstream]}"
	stop "${PID[redis]}"
	return "$rc"
}

# wrk_soak: the earlier single-route soak under wrk.
wrk_soak() {
	need wrk
	start_upstream
	start keyward 9105 "$ROOT/bin/keyward" serve -c "$BENCH/keyward.yaml"
	local kw=${PID[keyward]} wrkpid start
	wait_ready keyward 9105 || exit 1
	wrk -t2 -c"$CONNS" -d"${DURATION}s" -H 'Origin: https://app.example' http://127.0.0.1:9105/my-repos >"$WORK/wrk.txt" 2>&1 &
	wrkpid=$!
	STARTED+=("$wrkpid")
	start=$SECONDS
	while kill -0 "$wrkpid" 2>/dev/null; do
		printf 't=%4ds rss_MB=%s\n' $((SECONDS - start)) "$(rss_mb "$kw")" | report
		sleep "$INTERVAL"
	done
	wait "$wrkpid" || true
	forget "$wrkpid"
	grep -E 'Requests/sec|requests in|Non-2xx|Socket errors' "$WORK/wrk.txt" | report || true
	printf 'after: rss_MB=%s\n' "$(rss_mb "$kw")" | report
	stop "$kw"
	stop "${PID[upstream]}"
}

# idle_conns: part 2; fails when RSS while holding is above IDLE_MAX_MB.
idle_conns() {
	start_upstream
	start keyward 9105 "$ROOT/bin/keyward" serve -c "$BENCH/keyward.yaml"
	local kw=${PID[keyward]} held
	wait_ready keyward 9105 || exit 1
	(cd "$ROOT" && go build -o "$WORK/bin/idleconns" ./bench/idleconns) || exit 1
	log "idle connections: $IDLE held for 10 s on a fresh keyward (pid $kw)"
	"$WORK/bin/idleconns" -addr 127.0.0.1:9105 -n "$IDLE" -pid "$kw" -hold 10s | tee "$WORK/idle.txt" | report
	stop "$kw"
	stop "${PID[upstream]}"
	# The larger of the two readings while the connections are held.
	held=$(awk '$1 == "holding" || ($1 == "after" && $2 == "hold") { v = $(NF - 1); if (v + 0 > m + 0) m = v } END { print m }' "$WORK/idle.txt")
	if [[ -z $held ]] || ! grep -q "^opened $IDLE of $IDLE " "$WORK/idle.txt"; then
		printf 'NOT MET %s idle connections: not all held\n' "$IDLE" | report
		return 1
	fi
	if awk -v h="$held" -v m="$IDLE_MAX_MB" 'BEGIN { exit !(h <= m) }'; then
		printf 'met     %s idle connections ≤ %s MB: %s MB\n' "$IDLE" "$IDLE_MAX_MB" "$held" | report
		return 0
	fi
	printf 'NOT MET %s idle connections ≤ %s MB: %s MB\n' "$IDLE" "$IDLE_MAX_MB" "$held" | report
	return 1
}

need redis-server redis-cli ps
build
rc=0
if [[ $LOAD == wrk ]]; then
	wrk_soak
else
	mixed_soak || rc=1
fi
if ((IDLE > 0)); then
	idle_conns || rc=1
fi
printf 'machine: %s cores, load average %s (shared with other engineers: compare within a run)\n' \
	"$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" | report
mkdir -p "$BENCH/results"
cp "$WORK/report.txt" "$BENCH/results/soak.txt"
exit "$rc"
