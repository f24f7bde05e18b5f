#!/usr/bin/env bash
# scripts/tcpbench.sh — the TCP path (SPEC §9) next to HAProxy `mode tcp`.
# Also run by `TCP=1 scripts/loadtest.sh`.
#
# What it measures
#   One redis-server, loaded with redis-benchmark (PING_INLINE, SET, GET;
#   CONNS clients, REQUESTS requests per test, one benchmark thread) through
#   three targets, interleaved over ROUNDS rounds:
#
#     direct     redis-benchmark -> redis                      (the ceiling)
#     faultline  redis-benchmark -> faultline tcp:// upstream, one worker,
#                no rules -> redis
#     haproxy    redis-benchmark -> HAProxy mode tcp, nbthread 1 -> redis
#
#   The table gives, per test, the median over rounds of requests/sec and
#   p99 latency, and the ratios faultline/haproxy. Then the memory of an
#   idle held TCP connection: MEM_CONNS connections opened to each proxy,
#   one PING answered on each, held; (RSS after - RSS before) / MEM_CONNS in
#   KB (1 KB = 1,024 bytes, as /proc counts).
#
#   A benchmark, not a test: it asserts nothing about speed, and exits
#   non-zero only when something is broken.
#
# How to run
#   scripts/tcpbench.sh                      # builds target/release/faultline
#   FAULTLINE_BIN=/path/to/faultline ROUNDS=5 PIN=1 scripts/tcpbench.sh
#
#   Environment (defaults in brackets): ROUNDS [3], CONNS [50],
#   REQUESTS [200000], MEM_CONNS [2000], PIN=1 (redis and redis-benchmark on
#   cpu 0, the proxies on cpu 1), FAULTLINE_BIN, KEEP_TMP=1.
#
#   Needs: redis-server and redis-benchmark (Debian redis-server,
#   redis-tools), haproxy, python3, and cargo unless FAULTLINE_BIN is set.

set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
# shellcheck source=scripts/common.sh
source "$SCRIPT_DIR/common.sh"

ROUNDS="${ROUNDS:-3}"
CONNS="${CONNS:-50}"
REQUESTS="${REQUESTS:-200000}"
MEM_CONNS="${MEM_CONNS:-2000}"
PIN="${PIN:-0}"
KEEP_TMP="${KEEP_TMP:-0}"

log() { printf '[tcpbench] %s\n' "$*" >&2; }
die() { printf '[tcpbench] ERROR: %s\n' "$*" >&2; exit 1; }

for tool in redis-server redis-benchmark haproxy python3; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install redis-server redis-tools haproxy python3)"
done

if [[ -n "${FAULTLINE_BIN:-}" ]]; then
  FAULTLINE="$FAULTLINE_BIN"
else
  log "building faultline: cargo build --release"
  (cd "$REPO_ROOT" && cargo build --release --bin faultline) || die "cargo build failed"
  FAULTLINE="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/faultline"
fi
[[ -x "$FAULTLINE" ]] || die "$FAULTLINE is not an executable file"

TMP="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [[ "$KEEP_TMP" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
pin() { # pin CPU COMMAND...: run on one cpu with PIN=1; exec, so that a
  # backgrounded call's $! is the program's own PID (its RSS is read)
  local cpu="$1"; shift
  if [[ "$PIN" == 1 ]]; then exec taskset -c "$cpu" "$@"; else exec "$@"; fi
}
wait_port() {
  local port="$1" i
  for ((i = 0; i < 300; i++)); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "nothing answers PING on port $port"
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

REDIS_PORT="$(free_port)"
pin 0 redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
  --maxclients 20000 >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$REDIS_PORT"

FAULTLINE_PORT="$(free_port)"
mkdir -p "$TMP/rules"
cat >"$TMP/faultline.toml" <<EOF
[admin]
listen = "127.0.0.1:$(free_port)"

[proxy]
workers = 1
rules_dir = "$TMP/rules"
watch_rules = false

[[upstream]]
name = "redis"
url = "tcp://127.0.0.1:$REDIS_PORT"
listen = "127.0.0.1:$FAULTLINE_PORT"
EOF
ulimit -n 65536 2>/dev/null || true
pin 1 "$FAULTLINE" run -c "$TMP/faultline.toml" >"$TMP/faultline.log" 2>&1 &
FAULTLINE_PID=$!
PIDS+=("$FAULTLINE_PID")

HAPROXY_PORT="$(free_port)"
cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend redis
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend redis
backend redis
    server redis 127.0.0.1:$REDIS_PORT
EOF
pin 1 haproxy -f "$TMP/haproxy.cfg" -db >"$TMP/haproxy.log" 2>&1 &
HAPROXY_PID=$!
PIDS+=("$HAPROXY_PID")
wait_port "$FAULTLINE_PORT"
wait_port "$HAPROXY_PORT"

declare -A PORT=([direct]="$REDIS_PORT" [faultline]="$FAULTLINE_PORT" [haproxy]="$HAPROXY_PORT")
TARGETS="direct faultline haproxy"
for ((round = 1; round <= ROUNDS; round++)); do
  for target in $TARGETS; do
    log "round $round/$ROUNDS: $target"
    (pin 0 redis-benchmark -h 127.0.0.1 -p "${PORT[$target]}" -c "$CONNS" -n "$REQUESTS" \
      -t ping_inline,set,get --csv) >"$TMP/$target.$round.csv" 2>/dev/null \
      || die "redis-benchmark failed against $target"
  done
done

python3 - "$TMP" "$ROUNDS" <<'EOF'
import csv, statistics, sys
tmp, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
for target in ("direct", "faultline", "haproxy"):
    for r in range(1, rounds + 1):
        with open(f"{tmp}/{target}.{r}.csv") as f:
            for row in csv.DictReader(f):
                rows.setdefault((row["test"], target), []).append(
                    (float(row["rps"]), float(row["p99_latency_ms"])))
tests = sorted({test for test, _ in rows})
print(f"{'test':<12} {'target':<10} {'req/s':>12} {'p99 ms':>8}")
for test in tests:
    med = {}
    for target in ("direct", "faultline", "haproxy"):
        samples = rows[(test, target)]
        rps = statistics.median(s[0] for s in samples)
        p99 = statistics.median(s[1] for s in samples)
        med[target] = (rps, p99)
        print(f"{test:<12} {target:<10} {rps:>12.0f} {p99:>8.3f}")
    f, h = med["faultline"], med["haproxy"]
    print(f"{test:<12} faultline/haproxy: req/s x{f[0] / h[0]:.2f}, p99 x{f[1] / h[1]:.2f}")
EOF

# The holder's script: given with -c, so that its stdin is the pipe whose
# closing lets the connections go.
HOLD_PY='
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"PING\r\n")
    assert s.recv(16) == b"+PONG\r\n"
    held.append(s)
print("held", flush=True)
sys.stdin.read()
'
hold() { # hold PORT: open MEM_CONNS connections, one PING each, keep them until stdin closes
  python3 -c "$HOLD_PY" "$1" "$MEM_CONNS"
}
for target in faultline haproxy; do
  pid="$FAULTLINE_PID"; [[ "$target" == haproxy ]] && pid="$HAPROXY_PID"
  before="$(rss_kb "$pid")"
  exec 3> >(hold "${PORT[$target]}" >"$TMP/hold.$target")
  for ((i = 0; i < 600; i++)); do grep -q held "$TMP/hold.$target" 2>/dev/null && break; sleep 0.1; done
  sleep 1
  after="$(rss_kb "$pid")"
  exec 3>&-
  python3 -c "print(f'memory per idle held connection, $target: {($after - $before) / $MEM_CONNS:.1f} KB ($MEM_CONNS connections; RSS $before KB before, $after KB after)')"
  sleep 1
done
