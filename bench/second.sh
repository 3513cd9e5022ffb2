#!/usr/bin/env bash
# Starts a second keyward on 127.0.0.1:9106 with bench/keyward-$KEYWARD_SECOND.yaml,
# in the shared harness's second gateway slot (the one it names "krakend";
# it passes krakend's arguments, which this ignores). bench/run.sh sets it
# up when SECOND=limits or SECOND=cache.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ ${1:-} == version ]]; then
	echo "KrakenD Version: keyward-$KEYWARD_SECOND"
	exit 0
fi
exec "$ROOT/bin/keyward" serve -c "$ROOT/bench/keyward-$KEYWARD_SECOND.yaml"
