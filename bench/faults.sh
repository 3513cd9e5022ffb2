#!/usr/bin/env bash
# The fault run (issue 15, docs/OPERATIONS.md "Under load and faults:
# measured"): keyward (bench/faults/keyward.yaml, store on a local
# redis-server) in front of the checking upstream, under a steady mixed load
# from the checking client (bench/faults: plain, cached, limited and
# fail_closed routes, event streams; RATE requests/s, every request with its
# own id), while this script
#   - renames RELOADS new configs into place, one every 2 s (default 30);
#   - kills the upstream (SIGKILL) KILLS times (default 7), 1 s down each;
#   - kills redis-server, 3 s down, and restarts it empty;
#   - freezes redis-server (SIGSTOP) for FREEZE seconds (default 5).
# The client then reports requests lost, duplicated (the upstream saw an id
# twice), cut and wrong, the recovery after each upstream restart, and the
# latency during each Redis fault against store_timeout; it exits 1 when a
# figure is not met. About 75 s.
#   bench/faults.sh          RATE=500 RELOADS=30 KILLS=7 FREEZE=5 KEEP_WORK=
# The report is also written to bench/results/faults.txt, every request to
# faults-raw.tsv, the time line to faults-events.log and keyward's log
# without its request lines to faults-keyward.log there. Installs
# redis-server when missing (as root).
set -euo pipefail
RATE=${RATE:-500}
RELOADS=${RELOADS:-30}
KILLS=${KILLS:-7}
FREEZE=${FREEZE:-5}
# shellcheck source=bench/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need redis-server redis-cli ps
build
build_faults
start_redis
start_faults_upstream
start_faults_keyward
kw=${PID[keyward]}
log "keyward $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo dev), pid $kw; work folder $WORK"

"$WORK/bin/faults" load -url http://127.0.0.1:9205 -rate "$RATE" -store-timeout 50ms -recovery 50ms \
	-upstream-log "$WORK/ids.log" -events "$WORK/events.log" -metrics http://127.0.0.1:9206/metrics -raw "$WORK/raw.tsv" -pid "$kw" -redis 127.0.0.1:9207 \
	>"$WORK/load.txt" 2>&1 &
loadpid=$!
STARTED+=("$loadpid")
log "load: $RATE requests/s; a baseline of 10 s"
reloader "$RELOADS" 2 &
reloadpid=$!
STARTED+=("$reloadpid")
sleep 10

for ((i = 1; i <= KILLS; i++)); do
	log "upstream: kill $i of $KILLS, 1 s down"
	up=${PID[upstream]}
	event upstream_kill
	kill -KILL "$up"
	wait "$up" 2>/dev/null || true
	forget "$up"
	sleep 1
	start_faults_upstream
	sleep 3
done

log "redis-server: killed, 3 s down, restarted empty"
rd=${PID[redis]}
event redis_kill
kill -KILL "$rd"
wait "$rd" 2>/dev/null || true
forget "$rd"
sleep 3
start_redis
event redis_up
sleep 5

log "redis-server: frozen (SIGSTOP) for ${FREEZE} s"
rd=${PID[redis]}
event redis_stop
kill -STOP "$rd"
sleep "$FREEZE"
kill -CONT "$rd"
event redis_cont
sleep 5

log "waiting for the last of $RELOADS reloads"
wait "$reloadpid"
forget "$reloadpid"
sleep 3
kill -INT "$loadpid"
rc=0
wait "$loadpid" || rc=$?
forget "$loadpid"

if ! kill -0 "$kw" 2>/dev/null; then
	log "keyward exited during the run:"
	tail -20 "$WORK/keyward.log" >&2
	rc=1
fi
{
	cat "$WORK/load.txt"
	printf '\nkeyward log: %s lines; level ERROR %s, WARN %s; panics %s\n' "$(wc -l <"$WORK/keyward.log")" \
		"$(grep -c '"level":"ERROR"' "$WORK/keyward.log" || true)" "$(grep -c '"level":"WARN"' "$WORK/keyward.log" || true)" \
		"$(grep -c '^panic\|goroutine .* \[running\]' "$WORK/keyward.log" || true)"
	printf 'machine: %s cores, load average %s (shared with other engineers: compare within a run)\n' \
		"$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$WORK/report.txt"
mkdir -p "$BENCH/results"
cp "$WORK/report.txt" "$BENCH/results/faults.txt"
cp "$WORK/raw.tsv" "$BENCH/results/faults-raw.tsv" 2>/dev/null || true
cp "$WORK/events.log" "$BENCH/results/faults-events.log"
grep -v '"msg":"request"' "$WORK/keyward.log" >"$BENCH/results/faults-keyward.log" || true
exit "$rc"
