#!/usr/bin/env bash
# Side-by-side load run with keyward in it: builds bin/keyward, then runs the
# shared harness (../shared/bench/run.sh beside this repo, or SHARED_BENCH)
# with GATEWAY_CMD starting keyward on 127.0.0.1:9105 (bench/keyward.yaml).
# Installs nginx, caddy, haproxy, wrk and curl with apt-get when missing (as
# root). Results: bench/results/last-run.{txt,tsv} and raw/ (gitignored).
#
# Every knob of the shared harness passes through (DURATION, WARMUP,
# CONNS_LIST, ROUNDS, TARGETS, ...), e.g. a short run:
#   DURATION=5 WARMUP=2 ROUNDS=2 bench/run.sh
# SECOND=limits or SECOND=cache adds a second keyward (bench/keyward-limits.yaml:
# a memory rate limiter deciding every request; bench/keyward-cache.yaml:
# every request a cache hit) on 127.0.0.1:9106 to the same interleaved run;
# the harness's table calls it "krakend" (the slot it uses).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$ROOT/../shared/bench}
export OUT_DIR=${OUT_DIR:-$ROOT/bench/results}

if [[ ! -x $SHARED_BENCH/run.sh ]]; then
	echo "bench/run.sh: no shared harness at $SHARED_BENCH/run.sh (set SHARED_BENCH)" >&2
	exit 2
fi

missing=()
for tool in nginx caddy haproxy wrk curl; do
	command -v "$tool" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]} > 0)); then
	if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
		echo "bench/run.sh: missing ${missing[*]}; install them (apt-get install -y ${missing[*]}) and run again" >&2
		exit 2
	fi
	echo "bench/run.sh: installing ${missing[*]}" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	# The Debian packages start their services; the harness needs the ports.
	for svc in nginx caddy haproxy; do
		if [[ " ${missing[*]} " == *" $svc "* ]] && command -v systemctl >/dev/null; then
			systemctl disable --now "$svc" >/dev/null 2>&1 || true
		fi
	done
fi
export PATH=$PATH:/usr/sbin

make -C "$ROOT" --no-print-directory build
mkdir -p "$OUT_DIR"
export KEYWARD_BENCH_SECRET=bench-secret
# exec: the harness measures RSS over the process group; without bash in it,
# the number is keyward's own.
export GATEWAY_CMD="exec '$ROOT/bin/keyward' serve -c '$ROOT/bench/keyward.yaml'"
if [[ -n ${SECOND:-} ]]; then
	export KEYWARD_SECOND=$SECOND KRAKEND_BIN=$ROOT/bench/second.sh
fi
"$SHARED_BENCH/run.sh"
