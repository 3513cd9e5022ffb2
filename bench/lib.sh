# shellcheck shell=bash
# Sourced (not run) by bench/run.sh, bench/cpu.sh, bench/soak.sh and
# bench/faults.sh: the
# paths, a work folder, the tools installed when missing, the binaries
# built, processes started in their own process group, and every process
# started stopped on exit (also on INT/TERM), by PID, never by name.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034 # used by the scripts that source this one
BENCH=$ROOT/bench
WORK=$(mktemp -d /tmp/kwbench.XXXXXX)
# nginx and haproxy are installed in /usr/sbin, which a non-login PATH may lack.
export PATH=$PATH:/usr/sbin
# The credential keyward's bench configs inject ({secret.bench}); the fake
# upstream answers 401 without it.
export KEYWARD_BENCH_SECRET=bench-secret
declare -A PID=() # name -> PID, which is also its process-group id
STARTED=()        # every PID started and not yet stopped, in order

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# stop PID: TERM its process group (nginx's workers, a shell's children),
# wait up to 5 s for it to go, then KILL what is left.
stop() {
	local pid=$1 n
	kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
	for ((n = 0; n < 50; n++)); do
		kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL -- "-$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	forget "$pid"
}
# forget PID: a process that has ended (and was waited for) is not stopped
# on exit, where its PID may by then be another program's.
forget() {
	local keep=() p
	for p in "${STARTED[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
	STARTED=("${keep[@]}")
}
cleanup() {
	local i
	for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop "${STARTED[i]}"; done
	[[ -n ${KEEP_WORK:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start NAME PORT CMD...: run CMD in its own session, so that its children
# share its process group and its PID is the group's id; output goes to
# $WORK/NAME.log. Refuses a port that something else already listens on:
# the numbers would be that program's.
start() {
	local name=$1 port=$2
	shift 2
	if port_open "$port"; then
		log "port $port is already in use; refusing to start $name"
		exit 1
	fi
	setsid "$@" >"$WORK/$name.log" 2>&1 </dev/null &
	PID[$name]=$!
	STARTED+=("$!")
}

# wait_ready NAME PORT [TIMEOUT_S]: until NAME listens on PORT (15 s by
# default); fails with the end of its log if it exits or never listens.
wait_ready() {
	local name=$1 port=$2 limit=${3:-15} n
	for ((n = 0; n < limit * 10; n++)); do
		port_open "$port" && return 0
		if ! kill -0 "${PID[$name]}" 2>/dev/null; then
			log "$name exited during start-up:"
			tail -20 "$WORK/$name.log" >&2
			return 1
		fi
		sleep 0.1
	done
	log "$name did not listen on $port within ${limit}s"
	tail -20 "$WORK/$name.log" >&2
	return 1
}

# rss_mb PGID: the resident memory of a whole process group in MB (nginx is
# a master and its workers).
rss_mb() {
	ps -e -o pgid=,rss= | awk -v pg="$1" '$1 == pg { s += $2 } END { printf "%.1f", s / 1024 }'
}

# need TOOL...: install the Debian packages of the tools that are missing,
# as root with apt-get; otherwise name them and stop.
need() {
	local tool missing=() pkgs=()
	for tool in "$@"; do
		command -v "$tool" >/dev/null 2>&1 && continue
		missing+=("$tool")
		case $tool in
		ps) pkgs+=(procps) ;;
		redis-cli) pkgs+=(redis-tools) ;;
		*) pkgs+=("$tool") ;;
		esac
	done
	((${#missing[@]} > 0)) || return 0
	if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
		log "missing ${missing[*]}: install them (apt-get install -y ${pkgs[*]}) and run again"
		exit 2
	fi
	log "installing ${pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# A fresh machine has no package lists; a stale one may name files the
	# mirror no longer has. Update only then.
	if ! apt-cache show "${pkgs[@]}" >/dev/null 2>&1 || ! apt-get install -y -qq "${pkgs[@]}" >/dev/null; then
		apt-get update -qq && apt-get install -y -qq "${pkgs[@]}" >/dev/null || exit 2
	fi
	# On a machine with systemd the packages start their services, which
	# would hold ports and cores during the run.
	local svc
	for svc in nginx caddy haproxy; do
		if [[ " ${pkgs[*]} " == *" $svc "* ]] && command -v systemctl >/dev/null 2>&1; then
			systemctl disable --now "$svc" >/dev/null 2>&1 || true
		fi
	done
}

# build: bin/keyward (make build), and the fake upstream and the bare Go
# proxy into $WORK/bin.
build() {
	make -C "$ROOT" --no-print-directory build >/dev/null || exit 1
	mkdir -p "$WORK/bin"
	(cd "$ROOT" && go build -o "$WORK/bin/upstream" ./bench/upstream && go build -o "$WORK/bin/goproxy" ./bench/goproxy) || exit 1
}

# start_upstream: the fake third-party API on 127.0.0.1:9001.
start_upstream() {
	start upstream 9001 "$WORK/bin/upstream" -addr 127.0.0.1:9001
	wait_ready upstream 9001 || exit 1
}

# The fault run and the mixed soak (bench/faults.sh, bench/soak.sh):
# keyward with bench/faults/keyward.yaml on 9205 (admin 9206), the checking
# upstream (bench/faults, verb upstream) on 9201, redis-server on 9207.
# Every fault, restart and reload is appended to $WORK/events.log as
# `UNIX_NS name`, the time line the checking client reads.

# build_faults: the checking upstream and client into $WORK/bin/faults.
build_faults() {
	mkdir -p "$WORK/bin"
	(cd "$ROOT" && go build -o "$WORK/bin/faults" ./bench/faults) || exit 1
}

# event NAME: append it to the time line, now.
event() { printf '%s %s\n' "$(date +%s%N)" "$1" >>"$WORK/events.log"; }

# start_redis: redis-server on 127.0.0.1:9207 without persistence, so that
# a restart comes back empty (the data loss of issue 15.6).
start_redis() {
	start redis 9207 redis-server --port 9207 --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" --logfile ''
	wait_redis
}

# wait_redis: until redis-server answers PING (10 s at most).
wait_redis() {
	local n
	for ((n = 0; n < 100; n++)); do
		[[ $(redis-cli -p 9207 ping 2>/dev/null) == PONG ]] && return 0
		sleep 0.1
	done
	log "redis-server did not answer on 9207 within 10s"
	tail -20 "$WORK/redis.log" >&2
	exit 1
}

# start_faults_upstream: the checking upstream; it appends upstream_up to
# the time line itself once it listens, and every request's id to
# $WORK/ids.log, across restarts.
start_faults_upstream() {
	start upstream 9201 "$WORK/bin/faults" upstream -addr 127.0.0.1:9201 -log "$WORK/ids.log" -events "$WORK/events.log"
	wait_ready upstream 9201 || exit 1
}

# faults_config GEN: generation GEN of bench/faults/keyward.yaml, written
# next to $WORK/conf/keyward.yaml and renamed over it (the write-then-rename
# docs/OPERATIONS.md recommends). Odd generations lower
# server.max_connections by one, so that each reload changes a server
# setting too.
faults_config() {
	local gen=$1 conns=10000
	((gen % 2 == 0)) || conns=9999
	mkdir -p "$WORK/conf"
	sed -e "s/^# generation: 0$/# generation: $gen/" -e "s/^  max_connections: 10000$/  max_connections: $conns/" \
		"$BENCH/faults/keyward.yaml" >"$WORK/conf/.keyward.yaml.tmp"
	mv "$WORK/conf/.keyward.yaml.tmp" "$WORK/conf/keyward.yaml"
}

# start_faults_keyward: keyward on generation 0 of the config, and its
# admin listener.
start_faults_keyward() {
	faults_config 0
	start keyward 9205 "$ROOT/bin/keyward" serve -c "$WORK/conf/keyward.yaml"
	wait_ready keyward 9205 || exit 1
	wait_ready keyward 9206 || exit 1
}

# reloader N EVERY: rename N generations of the config into place, one
# every EVERY seconds, each marked on the time line.
reloader() {
	local i
	for ((i = 1; i <= $1; i++)); do
		sleep "$2"
		faults_config "$i"
		event reload
	done
}
