#!/usr/bin/env bash
# Go micro-benchmarks of this tree against another checkout of keyward (an
# earlier commit), interleaved: each of COUNT rounds runs the benchmark once
# in the base tree, then once here, so that both see the same stretch of a
# shared machine. Prints benchstat's comparison (old = BASE, new = here).
#   BASE=/tmp/kw-13bccf2 bench/compare.sh ./internal/scrub/ 'Scrub'
#   BASE=... COUNT=6 BENCHTIME=1s bench/compare.sh PKG REGEXP
# The base tree is any directory with keyward's go.mod, e.g. made with
#   mkdir /tmp/kw-13bccf2 && git archive 13bccf2 | tar -x -C /tmp/kw-13bccf2
# A benchmark missing from one tree shows as a row with one column empty.
# Results: $OUT_DIR/compare-{old,new}.txt (OUT_DIR=bench/results).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE=${BASE:?set BASE to the other tree}
COUNT=${COUNT:-6}
BENCHTIME=${BENCHTIME:-1s}
OUT_DIR=${OUT_DIR:-$ROOT/bench/results}
pkg=${1:?package, e.g. ./internal/scrub/}
re=${2:?benchmark regexp}
mkdir -p "$OUT_DIR"
old=$OUT_DIR/compare-old.txt new=$OUT_DIR/compare-new.txt
: >"$old"
: >"$new"
# Compile both first, so that no round pays for a build.
(cd "$BASE" && go test -c -o /dev/null "$pkg") && (cd "$ROOT" && go test -c -o /dev/null "$pkg")
for ((i = 1; i <= COUNT; i++)); do
	echo "round $i/$COUNT, load $(cut -d' ' -f1 /proc/loadavg)" >&2
	(cd "$BASE" && go test -run '^$' -bench "$re" -benchmem -benchtime "$BENCHTIME" -count 1 "$pkg") >>"$old"
	(cd "$ROOT" && go test -run '^$' -bench "$re" -benchmem -benchtime "$BENCHTIME" -count 1 "$pkg") >>"$new"
done
go run golang.org/x/perf/cmd/benchstat@latest "$old" "$new"
