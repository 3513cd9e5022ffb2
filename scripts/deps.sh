#!/usr/bin/env bash
# Installs what `make test` needs and is missing: from Debian, chromium for
# the browser tests, redis-server for the Redis-backed tests,
# redis-sentinel for the tests of a Sentinel failover, curl for the
# HTTP/2 interoperability test and systemd (systemd-analyze) for the
# hardened unit's test; from the Go module proxy, kustomize for the
# Kubernetes manifests' test when there is no kubectl (Debian's kubectl,
# 1.20, is too old for them).
#
# It installs only as root with apt-get. Otherwise it names what is missing
# and leaves the decision to the tests: they skip locally and fail when CI
# is set.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || [[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)

# kustomize needs no root: go install puts it in $(go env GOPATH)/bin,
# where the test looks.
if ! command -v kubectl >/dev/null 2>&1 && ! command -v kustomize >/dev/null 2>&1 &&
	[[ ! -x "$(go env GOPATH)/bin/kustomize" ]]; then
	echo "deps: go install sigs.k8s.io/kustomize/kustomize/v5@v5.6.0" >&2
	go install sigs.k8s.io/kustomize/kustomize/v5@v5.6.0
fi

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
