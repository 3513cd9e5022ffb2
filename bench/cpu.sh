#!/usr/bin/env bash
# CPU microseconds per request and RSS of keyward alone, for the benchmark
# job (bench/README.md): builds bin/keyward and the fake upstream, then for
# each config (default: bench/keyward.yaml) and each connection count runs
# wrk and reads keyward's CPU ticks from /proc before and after.
#   bench/cpu.sh                                  # bench/keyward.yaml
#   CONFIGS="keyward keyward-limits" bench/cpu.sh # several (9106 ones too)
#   CONFIGS="keyward base" BASE_BIN=/tmp/kw-old bench/cpu.sh
#                                                 # "base": another keyward binary
#                                                 # (an earlier commit) on keyward.yaml
#   DURATION=6 CONNS_LIST="50 256" ROUNDS=2
# Installs wrk when missing (as root). Prints one line per measurement.
set -euo pipefail
CONFIGS=${CONFIGS:-keyward}
DURATION=${DURATION:-6}
CONNS_LIST=${CONNS_LIST:-"50 256"}
ROUNDS=${ROUNDS:-2}
# shellcheck source=bench/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

need wrk ps
build
start_upstream
for round in $(seq "$ROUNDS"); do
	for cfg in $CONFIGS; do
		bin=$ROOT/bin/keyward file=$BENCH/$cfg.yaml
		if [[ $cfg == base ]]; then
			bin=${BASE_BIN:?CONFIGS has base: set BASE_BIN to a keyward binary} file=$BENCH/keyward.yaml
		fi
		port=$(awk -F'[:"]' '/^listen:/ {print $(NF-1)}' "$file")
		start "$cfg" "$port" "$bin" serve -c "$file"
		kw=${PID[$cfg]}
		wait_ready "$cfg" "$port"
		for c in $CONNS_LIST; do
			url=http://127.0.0.1:$port/my-repos
			wrk -t2 -c"$c" -d2s -H 'Origin: https://app.example' "$url" >/dev/null 2>&1
			t0=$(ticks "$kw")
			out=$(wrk -t2 -c"$c" -d"${DURATION}s" --latency -H 'Origin: https://app.example' "$url" 2>&1)
			t1=$(ticks "$kw")
			reqs=$(awk '/requests in/ {print $1}' <<<"$out")
			rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
			p99=$(awk '$1=="99%" {print $2}' <<<"$out")
			rss=$(rss_mb "$kw")
			cpu=$(awk -v t=$((t1 - t0)) -v n="$reqs" -v hz="$hz" 'BEGIN {printf "%.0f", t * 1e6 / hz / n}')
			echo "round=$round config=$cfg conns=$c req/s=$rps p99=$p99 rss_MB=$rss cpu_us_per_req=$cpu"
		done
		stop "$kw"
	done
done
