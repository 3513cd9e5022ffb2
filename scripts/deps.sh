#!/usr/bin/env bash
# Installs what `make test` needs from Debian and is missing: chromium for
# the browser CORS test, redis-server for the Redis-backed tests, and
# redis-sentinel for the tests of a Sentinel failover.
#
# It installs only as root with apt-get. Otherwise it names what is missing
# and leaves the decision to the tests: they skip locally and fail when CI
# is set.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || [[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)

if ((${#missing[@]} == 0)); then
	exit 0
fi
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
	echo "deps: missing ${missing[*]}: install with 'apt-get install -y ${missing[*]}' (as root); tests that need them skip locally and fail when CI is set" >&2
	exit 0
fi

export DEBIAN_FRONTEND=noninteractive
updated=false
# A fresh machine has no package lists; a stale one may not know the
# package or may point at files the mirror no longer has. Update only then.
if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
	echo "deps: apt-get update" >&2
	apt-get update -q
	updated=true
fi
echo "deps: apt-get install -y ${missing[*]}" >&2
if ! apt-get install -y -q "${missing[@]}"; then
	if $updated; then
		exit 1
	fi
	echo "deps: install failed; retrying after apt-get update" >&2
	apt-get update -q
	apt-get install -y -q "${missing[@]}"
fi
