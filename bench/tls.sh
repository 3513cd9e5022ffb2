#!/usr/bin/env bash
# keyward and nginx doing the benchmark job (bench/README.md) over HTTPS:
# HTTP/1.1 over TLS (wrk) and HTTP/2 (h2load), with plain HTTP/1.1 beside
# them for the cost of TLS itself. Both serve one self-signed ECDSA P-256
# certificate made with openssl in the work folder; each server's own
# defaults choose the cipher (TLS 1.3 for both, AES-128-GCM here). Prints req/s
# and the server's CPU µs per request (its process group's ticks from
# /proc, nginx's master and workers together), interleaved:
# for each round, each mode, keyward then nginx.
#   bench/tls.sh
#   DURATION=5 WARMUP=2 ROUNDS=2 CONNS=50 H2_CONNS=10 H2_STREAMS=5 bench/tls.sh
#   MODES="h1tls h2" bench/tls.sh
# Modes: h1 (plain, wrk -cCONNS), h1tls (wrk -cCONNS over TLS, no HTTP/2),
# h2 (h2load, H2_CONNS connections of H2_STREAMS concurrent streams each:
# CONNS requests in flight by default, as for h1).
# Ports: keyward 9105 (h1) and 9115 (TLS), nginx 9101 and 9111, upstream 9001.
# Installs nginx, wrk, openssl and h2load (nghttp2-client) when missing (as
# root). Results: $OUT_DIR/tls.txt (OUT_DIR=bench/results).
set -u -o pipefail
# shellcheck source=bench/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-50}
H2_CONNS=${H2_CONNS:-10}
H2_STREAMS=${H2_STREAMS:-5}
MODES=${MODES:-"h1 h1tls h2"}
OUT_DIR=${OUT_DIR:-$BENCH/results}
ORIGIN=https://app.example

need wrk ps nginx openssl
if ! command -v h2load >/dev/null 2>&1; then
	need nghttp2-client # the package's name; it installs h2load
fi
mkdir -p "$WORK/nginx/tmp" "$OUT_DIR"
build
start_upstream

# A self-signed certificate for 127.0.0.1, valid for a day.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=127.0.0.1 \
	-addext subjectAltName=IP:127.0.0.1 -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null || exit 1

# keyward: bench/keyward.yaml on 9105, and the same over TLS on 9115.
sed -e 's/127.0.0.1:9105/127.0.0.1:9115/' "$BENCH/keyward.yaml" >"$WORK/keyward-tls.yaml"
printf 'tls:\n  cert: %s\n  key: %s\n' "$WORK/cert.pem" "$WORK/key.pem" >>"$WORK/keyward-tls.yaml"
start keyward 9105 "$ROOT/bin/keyward" serve -c "$BENCH/keyward.yaml"
wait_ready keyward 9105 || exit 1
start keyward-tls 9115 "$ROOT/bin/keyward" serve -c "$WORK/keyward-tls.yaml"
wait_ready keyward-tls 9115 || exit 1
# nginx: bench/nginx/nginx.conf with a second server block, the same
# location over TLS with HTTP/2 on 9111 (nginx 1.22's syntax), TLS 1.3
# allowed as keyward allows it (nginx enables it by default only from 1.23.4).
{
	# Everything up to the closing brace of http, then the TLS server.
	sed '$d' "$BENCH/nginx/nginx.conf"
	awk '/^    server {$/ { on = 1 } on { print } on && /^    }$/ { exit }' "$BENCH/nginx/nginx.conf" |
		sed -e "s|listen 127.0.0.1:9101 backlog=4096;|listen 127.0.0.1:9111 ssl http2 backlog=4096;\n        ssl_certificate $WORK/cert.pem;\n        ssl_certificate_key $WORK/key.pem;\n        ssl_protocols TLSv1.2 TLSv1.3;|"
	echo "}"
} >"$WORK/nginx.conf"
start nginx 9101 nginx -p "$WORK/nginx/" -e stderr -c "$WORK/nginx.conf"
wait_ready nginx 9101 || exit 1
wait_ready nginx 9111 || exit 1

# The behaviour check: 200 and 2065 bytes in each mode from each server.
url_of() { # url_of TARGET MODE
	local port
	case $1/$2 in
	keyward/h1) port=9105 ;; keyward/*) port=9115 ;; nginx/h1) port=9101 ;; nginx/*) port=9111 ;;
	esac
	[[ $2 == h1 ]] && echo "http://127.0.0.1:$port/my-repos" || echo "https://127.0.0.1:$port/my-repos"
}
pid_of() { case $1/$2 in keyward/h1) echo "${PID[keyward]}" ;; keyward/*) echo "${PID[keyward-tls]}" ;; *) echo "${PID[nginx]}" ;; esac }
for t in keyward nginx; do
	for m in $MODES; do
		v=--http1.1
		[[ $m == h2 ]] && v=--http2
		got=$(curl -sk -m 5 $v -H "Origin: $ORIGIN" -o /dev/null -w '%{http_code} %{size_download} HTTP/%{http_version}' "$(url_of "$t" "$m")")
		log "check $t $m: $got"
		[[ $got == "200 2065 "* ]] || { log "$t $m does not do the job"; exit 1; }
	done
done

# ticks PGID: CPU ticks (user + system) of every process in the group.
ticks() {
	local p s=0
	for p in $(ps -e -o pid=,pgid= | awk -v g="$1" '$2 == g { print $1 }'); do
		s=$((s + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
	done
	echo "$s"
}
hz=$(getconf CLK_TCK)

# load TARGET MODE SECONDS OUT: one run; prints the requests that succeeded.
load() {
	local u
	u=$(url_of "$1" "$2")
	case $2 in
	h1 | h1tls)
		wrk -t2 -c"$CONNS" -d"${3}s" --latency -H "Origin: $ORIGIN" "$u" >"$4" 2>&1
		awk '/requests in/ { n = $1 } /Non-2xx/ { n -= $NF } END { print n + 0 }' "$4"
		;;
	h2)
		h2load -t2 -c"$H2_CONNS" -m"$H2_STREAMS" -D"$3" -H "Origin: $ORIGIN" "$u" >"$4" 2>&1
		awk '/^status codes:/ { gsub(/,/, ""); print $3 + 0 }' "$4"
		;;
	esac
}

printf 'round\ttarget\tmode\treq_s\tcpu_us_per_req\tdetail\n' >"$WORK/tls.tsv"
for ((r = 1; r <= ROUNDS; r++)); do
	for m in $MODES; do
		for t in keyward nginx; do
			load "$t" "$m" "$WARMUP" /dev/null >/dev/null
			pg=$(pid_of "$t" "$m")
			t0=$(ticks "$pg")
			s0=$(date +%s.%N)
			n=$(load "$t" "$m" "$DURATION" "$WORK/$t-$m-$r.txt")
			s1=$(date +%s.%N)
			t1=$(ticks "$pg")
			detail=$(awk '/Socket errors|Non-2xx|^requests:|TLS Protocol|Cipher:/' "$WORK/$t-$m-$r.txt" | tr -s ' \n' ' ')
			awk -v r="$r" -v t="$t" -v m="$m" -v n="$n" -v dt="$(awk -v a="$s0" -v b="$s1" 'BEGIN { print b - a }')" \
				-v ticks=$((t1 - t0)) -v hz="$hz" -v d="$detail" \
				'BEGIN { printf "%s\t%s\t%s\t%.0f\t%.0f\t%s\n", r, t, m, n / dt, (n ? ticks * 1e6 / hz / n : 0), d }' >>"$WORK/tls.tsv"
			tail -1 "$WORK/tls.tsv" >&2
		done
	done
done
{
	echo "date: $(date -u +%FT%TZ)  host: $(nproc) cores  $("$ROOT/bin/keyward" version)  nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')  $(h2load --version | head -1)"
	echo "h1/h1tls: wrk -t2 -c$CONNS; h2: h2load -t2 -c$H2_CONNS -m$H2_STREAMS; ${DURATION}s after ${WARMUP}s warm-up; req/s = requests answered 2xx / wall time"
	column -t -s $'\t' "$WORK/tls.tsv"
	echo
	echo "mean over rounds, and keyward / nginx:"
	awk -F'\t' -v modes="$MODES" 'NR > 1 { k = $2 " " $3; rps[k] += $4; cpu[k] += $5; n[k]++ }
		END { nm = split(modes, ms, " "); for (i = 1; i <= nm; i++) { m = ms[i]; a = "keyward " m; b = "nginx " m
			printf "%-6s keyward %6.0f req/s %4.0f µs/req   nginx %6.0f req/s %4.0f µs/req   req/s ratio %.2f  CPU ratio %.2f\n", m,
				rps[a] / n[a], cpu[a] / n[a], rps[b] / n[b], cpu[b] / n[b], rps[a] / rps[b], cpu[a] / cpu[b] } }' "$WORK/tls.tsv"
} | tee "$OUT_DIR/tls.txt"
