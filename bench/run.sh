#!/usr/bin/env bash
# Side-by-side load run: keyward and what a user might run instead (nginx,
# Caddy, HAProxy, a bare Go httputil.ReverseProxy), each configured for the
# same job (bench/README.md), against the same fake upstream, on this
# machine. Installs nginx, caddy, haproxy, wrk, curl and procps with apt-get
# when missing (as root), builds bin/keyward, the upstream and the bare Go
# proxy, checks every target's behaviour with curl, runs wrk against every
# target interleaved (A B C.., A B C..), prints a table, and stops every
# process it started, by PID (process group), on exit.
#
# Targets (all on 127.0.0.1): nginx 9101, caddy 9102, haproxy 9103,
# goproxy 9104, keyward 9105 (bench/keyward.yaml), direct 9001 (the
# upstream itself, with the credential sent by wrk).
#
# Knobs (environment):
#   DURATION=10 WARMUP=3 CONNS_LIST="50 256" ROUNDS=2 THREADS=2
#   TARGETS="nginx caddy haproxy goproxy direct"  the comparison targets, a
#       subset in any order; keyward is always added, direct always runs last
#   SECOND=limits|cache  adds a second keyward on 9106, "kw-limits" or
#       "kw-cache" (bench/keyward-limits.yaml: a memory rate limiter deciding
#       every request; bench/keyward-cache.yaml: every request a cache hit)
#   SECOND=base BASE_BIN=/path/to/keyward  adds "kw-base": another keyward
#       binary (an earlier commit's `make build`) on the same job, so a
#       change is measured against its baseline in one run
#   MAX_TOTAL=1800 (s, the whole load phase)  CHECK_ONLY=1 (checks, no load)
#   OUT_DIR=bench/results  KEEP_WORK=1 (keep the work folder and the logs)
# Results: $OUT_DIR/last-run.{txt,tsv} and the raw wrk output in $OUT_DIR/raw/.
set -u -o pipefail

# shellcheck source=bench/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
CONNS_LIST=${CONNS_LIST:-"50 256"}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
TARGETS=${TARGETS:-"nginx caddy haproxy goproxy direct"}
SECOND=${SECOND:-}
MAX_TOTAL=${MAX_TOTAL:-1800}
OUT_DIR=${OUT_DIR:-$BENCH/results}
ORIGIN=https://app.example
SECRET="Bearer bench-secret"

port_of() {
	case $1 in
	nginx) echo 9101 ;; caddy) echo 9102 ;; haproxy) echo 9103 ;; goproxy) echo 9104 ;;
	keyward) echo 9105 ;; kw-*) echo 9106 ;; direct | upstream) echo 9001 ;;
	*) return 1 ;;
	esac
}

# ---------------------------------------------------------------- targets
list=() direct=
for t in $TARGETS; do
	case $t in
	keyward | kw-*) ;; # added below, once
	direct) direct=direct ;;
	*) port_of "$t" >/dev/null || { log "unknown target $t"; exit 2; }; list+=("$t") ;;
	esac
done
list+=(keyward)
if [[ $SECOND == base ]]; then
	if [[ ! -x ${BASE_BIN:-} ]]; then
		log "SECOND=base needs BASE_BIN, an executable keyward"
		exit 2
	fi
	list+=(kw-base)
elif [[ -n $SECOND ]]; then
	if [[ ! -f $BENCH/keyward-$SECOND.yaml ]]; then
		log "SECOND=$SECOND: no bench/keyward-$SECOND.yaml"
		exit 2
	fi
	list+=("kw-$SECOND")
fi
# The upstream alone runs last in each round.
TARGETS="${list[*]} $direct"
TARGETS=${TARGETS% }

# ---------------------------------------------------------------- build / start
tools=(wrk curl ps)
for t in $TARGETS; do
	case $t in nginx | caddy | haproxy) tools+=("$t") ;; esac
done
need "${tools[@]}"
mkdir -p "$WORK/raw" "$WORK/nginx/tmp" "$WORK/xdg" "$OUT_DIR"
log "work dir $WORK; targets: $TARGETS"
build
start_upstream
PID[direct]=${PID[upstream]}
for t in $TARGETS; do
	port=$(port_of "$t")
	case $t in
	nginx) start nginx "$port" nginx -p "$WORK/nginx/" -e stderr -c "$BENCH/nginx/nginx.conf" ;;
	caddy) start caddy "$port" env XDG_CONFIG_HOME="$WORK/xdg" XDG_DATA_HOME="$WORK/xdg" \
		caddy run --config "$BENCH/caddy/Caddyfile" --adapter caddyfile ;;
	haproxy) start haproxy "$port" haproxy -db -f "$BENCH/haproxy/haproxy.cfg" ;;
	goproxy) start goproxy "$port" "$WORK/bin/goproxy" -addr 127.0.0.1:9104 -upstream 127.0.0.1:9001 ;;
	# The binary itself, not a shell or go run: the RSS is keyward's own.
	keyward) start keyward "$port" "$ROOT/bin/keyward" serve -c "$BENCH/keyward.yaml" ;;
	kw-base)
		# The same job on the second slot's port.
		sed 's/127.0.0.1:9105/127.0.0.1:9106/' "$BENCH/keyward.yaml" >"$WORK/keyward-base.yaml"
		start "$t" "$port" "$BASE_BIN" serve -c "$WORK/keyward-base.yaml"
		;;
	kw-*) start "$t" "$port" "$ROOT/bin/keyward" serve -c "$BENCH/keyward-$SECOND.yaml" ;;
	direct) continue ;;
	esac
	wait_ready "$t" "$port" || exit 1
done

# ---------------------------------------------------------------- versions
{
	echo "date: $(date -u +%FT%TZ)  host: $(nproc) cores, $(uname -r)"
	echo "go: $(go version | awk '{print $3}')"
	"$ROOT/bin/keyward" version
	for t in $TARGETS; do
		case $t in
		nginx) echo "nginx: $(nginx -v 2>&1 | sed 's/.*nginx\///')" ;;
		caddy) echo "caddy: $(caddy version | awk '{print $1}')" ;;
		haproxy) echo "haproxy: $(haproxy -v | awk 'NR==1{print $3}')" ;;
		kw-base) echo "kw-base: $("$BASE_BIN" version)" ;;
		kw-*) echo "$t: bench/keyward-$SECOND.yaml" ;;
		esac
	done
	echo "wrk: $(wrk -v 2>&1 | awk 'NR==1{print $2}')"
} >"$WORK/versions.txt"

# ---------------------------------------------------------------- behaviour checks
url_of() { [[ $1 == direct ]] && echo "http://127.0.0.1:9001/user/repos" || echo "http://127.0.0.1:$(port_of "$1")/my-repos"; }
code() { curl -s -m 5 -o /dev/null -w '%{http_code}' "$@"; }
hdr() { # hdr NAME curl-args...: value of response header NAME, or "-"
	local name=$1
	shift
	curl -s -m 5 -o /dev/null -D - "$@" | tr -d '\r' | awk -v n="$(echo "$name" | tr '[:upper:]' '[:lower:]')" -F': ' \
		'tolower($1) == n { v = v (v ? "," : "") $2 } END { print (v == "" ? "-" : v) }'
}
check() {
	local t=$1 u base ok=(-H "Origin: $ORIGIN") evil=(-H "Origin: https://evil.example") auth=()
	u=$(url_of "$t")
	[[ $t == direct ]] && auth=(-H "Authorization: $SECRET")
	base=${u%/*}
	local get bytes acao_ok acao_evil vary pre pre_acao pre_evil post other cliauth
	get=$(code "${auth[@]}" "${ok[@]}" "$u")
	bytes=$(curl -s -m 5 "${auth[@]}" "${ok[@]}" "$u" | wc -c)
	acao_ok=$(hdr Access-Control-Allow-Origin "${auth[@]}" "${ok[@]}" "$u")
	acao_evil=$(hdr Access-Control-Allow-Origin "${auth[@]}" "${evil[@]}" "$u")
	vary=$(hdr Vary "${auth[@]}" "${ok[@]}" "$u")
	pre=$(code -X OPTIONS "${ok[@]}" -H 'Access-Control-Request-Method: GET' "$u")
	pre_acao=$(hdr Access-Control-Allow-Origin -X OPTIONS "${ok[@]}" -H 'Access-Control-Request-Method: GET' "$u")
	pre_evil=$(code -X OPTIONS "${evil[@]}" -H 'Access-Control-Request-Method: GET' "$u")
	post=$(code -X POST "${auth[@]}" "${ok[@]}" "$u")
	other=$(code "${auth[@]}" "${ok[@]}" "$base/other")
	cliauth=$(code "${ok[@]}" -H 'Authorization: Bearer client-token' "$u")
	printf '%-9s %4s %5s  %-20s %-6s %-12s %4s %-20s %4s %4s %4s %4s\n' "$t" "$get" "$bytes" "$acao_ok" \
		"$acao_evil" "$vary" "$pre" "$pre_acao" "$pre_evil" "$post" "$other" "$cliauth"
}
{
	echo "behaviour (expected: GET 200 2065B, ACAO only for app.example, Vary Origin, preflight 204/403, POST 405, /other 404,"
	echo "  cliAuth 200 = a client-sent 'Authorization: Bearer client-token' is overwritten by the injected secret)"
	printf '%-9s %4s %5s  %-20s %-6s %-12s %4s %-20s %4s %4s %4s %4s\n' target GET bytes ACAO_ok ACAO_x Vary OPT OPT_ACAO OPTx POST other cliAuth
	for t in $TARGETS; do check "$t"; done
} >"$WORK/checks.txt"
cat "$WORK/versions.txt" "$WORK/checks.txt" >&2
if [[ -n ${CHECK_ONLY:-} ]]; then exit 0; fi

# ---------------------------------------------------------------- load
# wrk latency -> ms
to_ms() {
	awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
	if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000; printf "%.2f", n }'
}

# run_wrk TARGET CONNS SECONDS OUTFILE. wrk runs in the background so that
# INT or TERM stop the run at once (bash runs a trap only after the
# foreground command ends, but interrupts wait).
run_wrk() {
	local t=$1 c=$2 d=$3 out=$4 extra=() w rc
	[[ $t == direct ]] && extra=(-H "Authorization: $SECRET")
	timeout -k 5 $((d + 30)) wrk -t"$THREADS" -c"$c" -d"${d}s" --latency -H "Origin: $ORIGIN" "${extra[@]}" "$(url_of "$t")" >"$out" 2>&1 &
	w=$!
	STARTED+=("$w")
	wait "$w"
	rc=$?
	forget "$w"
	return "$rc"
}

RES="$WORK/results.tsv"
printf 'round\ttarget\tconns\treq_s\tp50_ms\tp99_ms\tnon2xx\tsock_err\trss_mb\n' >"$RES"
start_s=$SECONDS
for ((r = 1; r <= ROUNDS; r++)); do
	for c in $CONNS_LIST; do
		for t in $TARGETS; do
			if ((SECONDS - start_s > MAX_TOTAL)); then
				log "MAX_TOTAL ${MAX_TOTAL}s reached; stopping load"
				break 3
			fi
			if ! kill -0 "${PID[$t]}" 2>/dev/null; then
				log "$t is not running; skipped"
				continue
			fi
			log "round $r conns $c target $t"
			run_wrk "$t" "$c" "$WARMUP" /dev/null
			raw="$WORK/raw/$t-c$c-r$r.txt"
			run_wrk "$t" "$c" "$DURATION" "$raw"
			rss=$(rss_mb "${PID[$t]}")
			rps=$(awk '/^Requests\/sec:/ { print $2 }' "$raw")
			p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$raw")")
			p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$raw")")
			non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$raw")
			serr=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$raw")
			printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$c" "${rps:-0}" "$p50" "$p99" \
				"${non2xx:-0}" "${serr:-0}" "$rss" >>"$RES"
		done
	done
done

# ---------------------------------------------------------------- report
{
	cat "$WORK/versions.txt"
	echo "load: wrk -t$THREADS -d${DURATION}s --latency (after ${WARMUP}s warm-up), Origin: $ORIGIN; rounds interleaved"
	echo
	cat "$WORK/checks.txt"
	echo
	printf '%-9s %5s %3s %10s %8s %8s %7s %6s %7s\n' target conns rnd req/s p50_ms p99_ms non2xx sockerr rss_MB
	awk -F'\t' -v order="$TARGETS" 'BEGIN { n = split(order, o, " "); for (i = 1; i <= n; i++) rank[o[i]] = i }
		NR > 1 { printf "%d %d %d|%-9s %5s %3s %10.0f %8s %8s %7s %6s %7s\n", $3, rank[$2], $1, $2, $3, $1, $4, $5, $6, $7, $8, $9 }' "$RES" |
		sort -k1,1n -k2,2n -k3,3n | cut -d'|' -f2-
	echo
	echo "mean over rounds, and ratio to nginx and to bare Go (goproxy) at the same connection count:"
	printf '%-9s %5s %10s %-24s %8s %8s %8s %8s\n' target conns mean_req/s "per-round req/s" p99_max vs_nginx vs_go non2xx
	awk -F'\t' -v order="$TARGETS" 'NR > 1 {
			k = $2 SUBSEP $3; sum[k] += $4; n[k]++; runs[k] = runs[k] (runs[k] == "" ? "" : "/") sprintf("%.0f", $4)
			if ($6 + 0 > p99[k]) p99[k] = $6 + 0; bad[k] += $7 + $8; conns[$3] = 1 }
		function mean(t, c) { return ((t SUBSEP c) in n) ? sum[t SUBSEP c] / n[t SUBSEP c] : 0 }
		END {
			nt = split(order, o, " ")
			for (c in conns) cl[++nc] = c + 0
			for (i = 1; i <= nc; i++) for (j = i + 1; j <= nc; j++) if (cl[j] < cl[i]) { x = cl[i]; cl[i] = cl[j]; cl[j] = x }
			for (ci = 1; ci <= nc; ci++) { c = cl[ci]; ng = mean("nginx", c); go = mean("goproxy", c)
				for (i = 1; i <= nt; i++) { k = o[i] SUBSEP c; if (!(k in n)) continue
					m = sum[k] / n[k]
					printf "%-9s %5s %10.0f %-24s %8.2f %8s %8s %8d\n", o[i], c, m, runs[k], p99[k],
						(ng ? sprintf("%.2f", m / ng) : "-"), (go ? sprintf("%.2f", m / go) : "-"), bad[k] } } }' "$RES"
	echo "(non2xx column in this summary = non-2xx + socket errors over all rounds; must be 0)"
} >"$WORK/report.txt"
cat "$WORK/report.txt"
cp "$WORK/report.txt" "$OUT_DIR/last-run.txt"
cp "$RES" "$OUT_DIR/last-run.tsv"
mkdir -p "$OUT_DIR/raw" && cp "$WORK"/raw/*.txt "$OUT_DIR/raw/" 2>/dev/null
log "report copied to $OUT_DIR/last-run.txt"
