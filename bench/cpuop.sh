#!/usr/bin/env bash
# CPU time per operation of Go benchmarks, for a machine shared with other
# busy processes, where a benchmark's ns/op (wall time) counts the time it
# waited for a core. Runs each benchmark as a test binary twice, -benchtime
# 2x and Nx, and divides the difference in the process's user + system CPU
# time (GNU time) by N-2: set-up and process start cancel out (a benchmark
# on b.N runs its function for N=1 first in both, one on b.Loop once). The CPU of
# every goroutine counts, so for a benchmark with a loopback server it is
# client, server and runtime together (a gateway's CPU per request, plus its
# client's). Each round measures the base tree (if BASE is set), then this
# one, so both see the same stretch of the machine. Prints benchstat's
# summary of the cpu-ns/op values (old = BASE, new = here).
#   bench/cpuop.sh ./internal/scrub/ 20000 'Scrub2KiB/on/writer' 'ScrubString'
#   BASE=/tmp/kw-13bccf2 ROUNDS=6 bench/cpuop.sh PKG N REGEXP...
# Each REGEXP is a -bench pattern that must select exactly one benchmark
# (every level of a sub-benchmark named, e.g. 'Proxy$/upstream/handler').
# N is the iterations per measurement: pick it so that one takes a second
# or more of CPU (GNU time counts in 10 ms steps).
# Results: $OUT_DIR/cpuop-{old,new}.txt (OUT_DIR=bench/results).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-6}
OUT_DIR=${OUT_DIR:-$ROOT/bench/results}
pkg=${1:?package, e.g. ./internal/scrub/}
n=${2:?iterations per measurement}
shift 2
(($# > 0)) || { echo "name at least one benchmark regexp" >&2; exit 2; }
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (apt-get install -y time)" >&2; exit 2; }
work=$(mktemp -d /tmp/kwcpuop.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT_DIR"
trees=(new)
[[ -n ${BASE:-} ]] && trees=(old new)
declare -A dir=([old]=${BASE:-} [new]=$ROOT)
for t in "${trees[@]}"; do
	(cd "${dir[$t]}" && go test -c -o "$work/$t.test" "$pkg")
	: >"$OUT_DIR/cpuop-$t.txt"
done

# cpu TREE REGEXP ITERATIONS: CPU seconds (user + system) of one run; the
# benchmark's own output line goes to $work/line.
cpu() {
	(cd "${dir[$1]}/$pkg" && /usr/bin/time -f '%U %S' -o "$work/time" "$work/$1.test" \
		-test.run '^$' -test.bench "$2" -test.benchtime "${3}x" -test.benchmem >"$work/out")
	grep '^Benchmark' "$work/out" >"$work/line" || { cat "$work/out" >&2; exit 1; }
	if (($(wc -l <"$work/line") != 1)); then
		echo "$2 selects $(wc -l <"$work/line") benchmarks in the $1 tree, not one:" >&2
		cat "$work/line" >&2
		exit 1
	fi
	awk '{ print $1 + $2 }' "$work/time"
}

for ((r = 1; r <= ROUNDS; r++)); do
	for re in "$@"; do
		for t in "${trees[@]}"; do
			c1=$(cpu "$t" "$re" 2)
			cn=$(cpu "$t" "$re" "$n")
			# The benchmark's line, its wall ns/op replaced by CPU ns/op.
			awk -v c1="$c1" -v cn="$cn" -v n="$n" -v t="$t" -v r="$r" -v load="$(cut -d' ' -f1 /proc/loadavg)" \
				'{ printf "%s\t%d\t%.1f cpu-ns/op\t%s wall-ns/op\n", $1, n, (cn - c1) * 1e9 / (n - 2), $3 }
				END { printf "round %d %s %s: %.1f cpu-ns/op, load %s\n", r, t, $1, (cn - c1) * 1e9 / (n - 2), load > "/dev/stderr" }' "$work/line" >>"$OUT_DIR/cpuop-$t.txt"
		done
	done
done
files=()
for t in "${trees[@]}"; do files+=("$OUT_DIR/cpuop-$t.txt"); done
go run golang.org/x/perf/cmd/benchstat@latest "${files[@]}"
