# Shared by bench/cpu.sh and bench/soak.sh (sourced, not run): a work
# folder, clean-up of every process started, keyward and the shared fake
# upstream built and the upstream started on 127.0.0.1:9001.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$ROOT/../shared/bench}
WORK=$(mktemp -d /tmp/kwbench.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

# wait_port PORT: until something listens on 127.0.0.1:PORT (10 s at most).
wait_port() {
	for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
	return 1
}

# rss_mb PID: the process's resident memory in MB.
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

make -C "$ROOT" --no-print-directory build >/dev/null
(cd "$SHARED_BENCH/upstream" && go build -buildvcs=false -o "$WORK/upstream" .)
setsid "$WORK/upstream" -addr 127.0.0.1:9001 >/dev/null 2>&1 &
PIDS+=($!)
wait_port 9001
