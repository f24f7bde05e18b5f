#!/usr/bin/env bash
# scripts/loadtest.sh — throughput and latency benchmark for faultline.
#
# What it measures
#   The cost of putting faultline in the request path, next to a well-known
#   reference proxy. One small nginx upstream (fixed 20-byte body, keep-alive)
#   is loaded with wrk through five targets (six with BASELINE_BIN):
#
#     direct        wrk -> nginx                       (the ceiling)
#     faultline     wrk -> faultline, no rules -> nginx (proxy overhead)
#     faultline-base
#                   wrk -> $BASELINE_BIN, set up exactly like `faultline` (no
#                   rules, one worker, its own listen and admin ports) -> nginx
#                   (A/B comparison of two builds; only when BASELINE_BIN is
#                   set)
#     faultline-1k  wrk -> faultline, 1,000 rules that match nothing -> nginx
#                   (cost of rule evaluation on the hot path)
#     haproxy       wrk -> HAProxy, 1 thread -> nginx   (the reference proxy)
#     faultline-100ms
#                   wrk -> faultline, one rule injecting a 100ms latency into
#                   every request -> nginx (accuracy of injected latency)
#     faultline-tls wrk -> HTTPS -> faultline (TLS listener), no rules ->
#                   plain nginx (the cost of terminating TLS)
#     haproxy-tls   wrk -> HTTPS -> HAProxy terminating TLS, 1 thread -> nginx
#                   (the reference for faultline-tls: the same certificate
#                   and key, ECDSA P-256, and the same cipher suite,
#                   TLS_AES_256_GCM_SHA384 on TLS 1.3; keep-alive, so the
#                   rows measure record encryption, not handshakes)
#
#   faultline-100ms is measured under light load (LIGHT_CONNS connections,
#   not CONNS), so the number is the injected delay rather than queueing. Its
#   baseline is the row faultline-light: the plain `faultline` instance (no
#   rules) under the same light load, measured in the same slot of every round
#   just before faultline-100ms. (Selecting faultline-100ms alone still
#   starts the plain faultline instance for that baseline.)
#
#   Every proxy runs with one worker thread, and every faultline instance
#   gets its own listen port and its own [admin] listen port (the admin
#   listener is always bound). Targets are interleaved (round 1 runs all of
#   them, then round 2, ...) so drift of the machine (thermal, noisy
#   neighbours) spreads over all targets alike. When both faultline and
#   faultline-base run, their order alternates to cancel position bias: odd
#   rounds measure faultline first, even rounds faultline-base first (the
#   other targets keep their slots; use an even ROUNDS for an exact balance).
#   The table reports the median over rounds of requests/sec, p50 and p99
#   latency, then the ratios faultline/haproxy, faultline/faultline-base (rps
#   and p99), faultline/direct and faultline-1k/faultline, then for
#   faultline-100ms the added p50 latency (median p50 of faultline-100ms minus
#   median p50 of faultline-light) and its raw p50 and p99.
#
#   MEMORY=1 measures memory instead of speed: RSS per idle keep-alive
#   connection (method: the shared MEASUREMENTS.md, "Memory per idle
#   keep-alive connection"). Each target runs as a fresh process, one
#   worker/thread, in front of the same nginx upstream:
#
#     nginx          a second nginx, worker_processes 1, proxy_pass with
#                    upstream keep-alive (measured: its worker process)
#     haproxy        HAProxy, nbthread 1
#     faultline      faultline, no rules, workers = 1
#     faultline-base $BASELINE_BIN set up the same way (only with BASELINE_BIN)
#     faultline-blackhole
#                    faultline with one rule holding every request in a
#                    blackhole; its connections wait for an answer instead
#                    of idling (the cost of a held request, not of an idle
#                    connection)
#
#   A round starts the target, sends 50 warm-up requests (one per
#   connection), reads VmRSS from /proc/PID/status, opens MEM_CONNS
#   connections with scripts/conns.py (each sends one GET, reads the
#   response and stays open), waits MEM_SETTLE seconds, reads VmRSS again,
#   closes them and stops the target. The report gives the median over
#   rounds of (after - before) / MEM_CONNS in KB (1 KB = 1,024 bytes, as
#   /proc counts) and the ratios to HAProxy and nginx.
#
#   This is a benchmark, not a test: nothing in the test suite runs it, and it
#   asserts nothing about speed. It exits non-zero only when something is
#   broken (a target fails to start or answer, wrk fails, or wrk sees non-2xx
#   responses or socket errors — set ALLOW_ERRORS=1 to only warn about those).
#
# How to run
#   scripts/loadtest.sh                         # builds target/release/faultline
#   FAULTLINE_BIN=/path/to/faultline scripts/loadtest.sh
#   BASELINE_BIN=/path/to/old/faultline ROUNDS=4 scripts/loadtest.sh   # A/B
#   TARGETS="direct haproxy" scripts/loadtest.sh   # subset, no faultline needed
#   PIN=1 ROUNDS=5 DURATION=20s CONNS=64 scripts/loadtest.sh
#   MEMORY=1 scripts/loadtest.sh                # KB per idle connection
#   TCP=1 scripts/loadtest.sh                   # the TCP path: scripts/tcpbench.sh
#   MEMORY=1 MEM_TARGETS="haproxy faultline" MEM_CONNS=5000 scripts/loadtest.sh
#
#   Environment (defaults in brackets):
#     TARGETS        subset of "direct faultline faultline-base faultline-1k
#                    haproxy faultline-100ms faultline-tls haproxy-tls" [all
#                    but faultline-base, which joins right after faultline
#                    when BASELINE_BIN is set]
#     ROUNDS         interleaved measurement rounds [3]
#     DURATION       wrk duration of one measured run [10s]
#     WARMUP         wrk duration of the per-target warm-up run [3s]
#     CONNS          wrk connections (always one wrk thread) [32]
#     LIGHT_CONNS    wrk connections for faultline-100ms and its baseline
#                    faultline-light [4]
#     RULES          number of non-matching rules for faultline-1k [1000]
#     PIN=1          taskset: nginx and wrk on cpu 0, proxies on cpu 1
#     FAULTLINE_BIN  use this binary instead of `cargo build --release`
#     BASELINE_BIN   a second faultline binary (e.g. an older build) to run as
#                    target faultline-base; needed by that target, and adds it
#                    to the default TARGETS [unset]
#     MEMORY=1       measure RSS per idle connection instead (see above);
#                    ROUNDS, PIN, FAULTLINE_BIN and BASELINE_BIN apply, the
#                    wrk settings do not
#     MEM_TARGETS    subset of "nginx haproxy faultline faultline-base
#                    faultline-blackhole" [all but faultline-base, plus
#                    faultline-base when BASELINE_BIN is set]
#     MEM_CONNS      connections held per round [2000]
#     MEM_SETTLE     seconds between the last connection and the second
#                    RSS reading [1]
#     KEEP_TMP=1     keep the temp dir (configs, logs, raw wrk output)
#     READY_TIMEOUT  seconds to wait for each server to answer [30]
#
#   Needs: wrk, nginx, haproxy (installed with apt-get when missing), curl,
#   openssl (for the TLS rows' certificate),
#   python3 (with MEMORY=1, scripts/conns.py beside this script), and cargo unless FAULTLINE_BIN is set. Run it on an otherwise
#   idle machine; with 2 cores, PIN=1 keeps the load generator and the proxy
#   from fighting over the same core.

set -euo pipefail

# nginx and haproxy live in /usr/sbin, which is not on a normal user's PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
# shellcheck source=scripts/common.sh
source "$SCRIPT_DIR/common.sh"

# TCP=1: redis-benchmark through a tcp:// upstream next to HAProxy mode tcp.
if [[ "${TCP:-0}" == 1 ]]; then
  exec "$SCRIPT_DIR/tcpbench.sh"
fi

BASELINE_BIN="${BASELINE_BIN:-}"
# Every known target, in canonical order; the default list leaves out
# faultline-base unless BASELINE_BIN is set.
ALL_TARGETS="direct faultline faultline-base faultline-1k haproxy faultline-100ms faultline-tls haproxy-tls"
if [[ -n "$BASELINE_BIN" ]]; then
  DEFAULT_TARGETS="$ALL_TARGETS"
else
  DEFAULT_TARGETS="direct faultline faultline-1k haproxy faultline-100ms faultline-tls haproxy-tls"
fi
TARGETS="${TARGETS:-$DEFAULT_TARGETS}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-3s}"
CONNS="${CONNS:-32}"
LIGHT_CONNS="${LIGHT_CONNS:-4}"
RULES="${RULES:-1000}"
PIN="${PIN:-0}"
KEEP_TMP="${KEEP_TMP:-0}"
ALLOW_ERRORS="${ALLOW_ERRORS:-0}"
READY_TIMEOUT="${READY_TIMEOUT:-30}"
MEMORY="${MEMORY:-0}"
MEM_CONNS="${MEM_CONNS:-2000}"
MEM_SETTLE="${MEM_SETTLE:-1}"
if [[ -n "$BASELINE_BIN" ]]; then
  MEM_TARGETS="${MEM_TARGETS:-nginx haproxy faultline faultline-base faultline-blackhole}"
else
  MEM_TARGETS="${MEM_TARGETS:-nginx haproxy faultline faultline-blackhole}"
fi

log() { printf '[loadtest] %s\n' "$*" >&2; }
die() { printf '[loadtest] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- arguments
declare -A WANT=()
for t in $TARGETS; do
  case " $ALL_TARGETS " in
    *" $t "*) WANT[$t]=1 ;;
    *) die "unknown target '$t' in TARGETS (known: $ALL_TARGETS)" ;;
  esac
done
[[ ${#WANT[@]} -gt 0 ]] || die "TARGETS is empty"
if [[ -n "${WANT[faultline-base]:-}" && -z "$BASELINE_BIN" ]]; then
  die "target faultline-base needs BASELINE_BIN (the faultline binary to compare against)"
fi
# Keep the canonical order whatever order TARGETS was given in.
ORDER=()
for t in $ALL_TARGETS; do
  if [[ -n "${WANT[$t]:-}" ]]; then ORDER+=("$t"); fi
done
# What wrk measures, in order: the targets, with faultline-100ms preceded in
# its slot by faultline-light (its light-load baseline, on the plain
# faultline instance).
ROWS=()
for t in "${ORDER[@]}"; do
  if [[ "$t" == faultline-100ms ]]; then ROWS+=(faultline-light); fi
  ROWS+=("$t")
done
# Slots of faultline and faultline-base in ROWS, swapped in even rounds.
I_FL=-1
I_BASE=-1
for i in "${!ROWS[@]}"; do
  case "${ROWS[$i]}" in
    faultline) I_FL=$i ;;
    faultline-base) I_BASE=$i ;;
  esac
done

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
[[ "$CONNS" =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer (got '$CONNS')"
[[ "$LIGHT_CONNS" =~ ^[1-9][0-9]*$ ]] || die "LIGHT_CONNS must be a positive integer (got '$LIGHT_CONNS')"
[[ "$RULES" =~ ^[1-9][0-9]*$ ]] || die "RULES must be a positive integer (got '$RULES')"
[[ "$READY_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "READY_TIMEOUT must be a positive integer (got '$READY_TIMEOUT')"

need_faultline=0
if [[ -n "${WANT[faultline]:-}" || -n "${WANT[faultline-1k]:-}" || -n "${WANT[faultline-100ms]:-}" || -n "${WANT[faultline-tls]:-}" ]]; then
  need_faultline=1
fi
if [[ "$MEMORY" == 1 ]]; then
  [[ "$MEM_CONNS" =~ ^[1-9][0-9]*$ ]] || die "MEM_CONNS must be a positive integer (got '$MEM_CONNS')"
  [[ "$MEM_SETTLE" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "MEM_SETTLE must be a number of seconds (got '$MEM_SETTLE')"
  [[ -f "$SCRIPT_DIR/conns.py" ]] || die "MEMORY=1 needs $SCRIPT_DIR/conns.py"
  need_faultline=0
  for t in $MEM_TARGETS; do
    case "$t" in
      nginx | haproxy | faultline-base) ;;
      faultline | faultline-blackhole) need_faultline=1 ;;
      *) die "unknown target '$t' in MEM_TARGETS (known: nginx haproxy faultline faultline-base faultline-blackhole)" ;;
    esac
  done
  if [[ " $MEM_TARGETS " == *" faultline-base "* && -z "$BASELINE_BIN" ]]; then
    die "memory target faultline-base needs BASELINE_BIN"
  fi
  # The wrk targets are not started in this mode.
  WANT=()
  if [[ -n "$BASELINE_BIN" && " $MEM_TARGETS " == *" faultline-base "* ]]; then WANT[faultline-base]=1; fi
  if [[ " $MEM_TARGETS " == *" haproxy "* ]]; then WANT[haproxy]=1; fi
fi

# ------------------------------------------------------------- dependencies
SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="__nosudo__"; fi
fi

apt_updated=0
ensure_pkg() { # ensure_pkg COMMAND PACKAGE
  local cmd="$1" pkg="$2"
  command -v "$cmd" >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 ||
    die "'$cmd' is missing and apt-get is not available; install '$pkg' by hand"
  [[ "$SUDO" != "__nosudo__" ]] ||
    die "'$cmd' is missing, not running as root and no sudo; install '$pkg' by hand"
  log "installing $pkg (for '$cmd')"
  if [[ $apt_updated -eq 0 ]]; then
    $SUDO apt-get update -q >/dev/null || die "apt-get update failed"
    apt_updated=1
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >/dev/null ||
    die "apt-get install $pkg failed"
  command -v "$cmd" >/dev/null 2>&1 || die "installed $pkg but '$cmd' is still not on PATH"
}

ensure_pkg wrk wrk
ensure_pkg nginx nginx
if [[ -n "${WANT[haproxy]:-}${WANT[haproxy-tls]:-}" ]]; then ensure_pkg haproxy haproxy; fi
if [[ -n "${WANT[faultline-tls]:-}${WANT[haproxy-tls]:-}" ]]; then ensure_pkg openssl openssl; fi
ensure_pkg curl curl
command -v python3 >/dev/null 2>&1 || die "python3 is required for the arithmetic"

if [[ "$PIN" == 1 ]]; then
  ensure_pkg taskset util-linux
  ncpu="$(nproc)"
  if [[ "$ncpu" -lt 2 ]]; then
    log "WARNING: PIN=1 needs 2 cpus, this machine has $ncpu; not pinning"
    PIN=0
  fi
fi

# Command prefixes that pin to cpu 0 (nginx, wrk) or cpu 1 (proxies) when
# PIN=1. Arrays, not a wrapper function: a backgrounded function runs in a
# subshell, and $! would then be that subshell instead of the server (which
# the cleanup would miss). taskset execs, so $! stays the server's own pid.
CPU0=()
CPU1=()
if [[ "$PIN" == 1 ]]; then
  CPU0=(taskset -c 0)
  CPU1=(taskset -c 1)
fi

# -------------------------------------------------------------- faultline
FAULTLINE=""
if [[ $need_faultline -eq 1 ]]; then
  if [[ -n "${FAULTLINE_BIN:-}" ]]; then
    FAULTLINE="$FAULTLINE_BIN"
    [[ -x "$FAULTLINE" ]] || die "FAULTLINE_BIN=$FAULTLINE is not an executable file"
  else
    command -v cargo >/dev/null 2>&1 ||
      die "cargo not found; install Rust or set FAULTLINE_BIN to a built faultline"
    log "building faultline: cargo build --release (in $REPO_ROOT)"
    (cd "$REPO_ROOT" && cargo build --release) || die "cargo build --release failed"
    FAULTLINE="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/faultline"
    [[ -x "$FAULTLINE" ]] || die "build succeeded but $FAULTLINE does not exist"
  fi
fi
if [[ -n "${WANT[faultline-base]:-}" ]]; then
  [[ -f "$BASELINE_BIN" && -x "$BASELINE_BIN" ]] ||
    die "BASELINE_BIN=$BASELINE_BIN is not an executable file"
fi

# ------------------------------------------------------- temp dir, cleanup
TMP="$(mktemp -d "${TMPDIR:-/tmp}/faultline-loadtest.XXXXXX")"
PIDS=()

cleanup() {
  local rc=$? pid i
  trap - EXIT INT TERM
  if [[ -n "${WRK_PID:-}" ]]; then kill -TERM "$WRK_PID" 2>/dev/null || true; fi
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    stop_pid "$pid"
  done
  if [[ "$KEEP_TMP" == 1 ]]; then
    log "kept temp dir: $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Free loopback ports, all held open at once so they are distinct.
read -r P_NGINX P_FL P_FL1K P_HAPROXY P_FL100 P_FLBASE P_ADMIN1 P_ADMIN2 P_ADMIN3 P_ADMIN4 P_FLTLS P_HAPTLS P_ADMIN5 < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(13):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)

declare -A PORT=([direct]=$P_NGINX [faultline]=$P_FL [faultline-1k]=$P_FL1K [haproxy]=$P_HAPROXY
  [faultline-100ms]=$P_FL100 [faultline-light]=$P_FL [faultline-base]=$P_FLBASE
  [faultline-tls]=$P_FLTLS [haproxy-tls]=$P_HAPTLS)
# The rows spoken to over HTTPS (-k: the certificate is made for the run).
declare -A SCHEME=([faultline-tls]=https [haproxy-tls]=https)
url_of() { echo "${SCHEME[$1]:-http}://127.0.0.1:${PORT[$1]}/"; }
# Rows measured on another target's server (for liveness checks and logs).
declare -A SERVER_OF=([faultline-light]=faultline)
declare -A LOGF=()
declare -A PIDOF=()

EXPECTED_BODY="hello from upstream"

# wait_ready NAME PORT: until an HTTP response comes back (any status), the
# process is gone, or READY_TIMEOUT passes.
wait_ready() {
  local name="$1" port="$2" pid="${PIDOF[$1]}" deadline code
  deadline=$((SECONDS + READY_TIMEOUT))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      local status=0
      wait "$pid" 2>/dev/null || status=$?
      log "$name (pid $pid) exited with status $status before answering on 127.0.0.1:$port"
      show_log "$name"
      die "$name failed to start"
    fi
    code="$(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "${SCHEME[$name]:-http}://127.0.0.1:$port/" 2>/dev/null || true)"
    [[ -n "$code" && "$code" != "000" ]] && return 0
    if ((SECONDS >= deadline)); then
      log "$name did not answer on 127.0.0.1:$port within ${READY_TIMEOUT}s"
      show_log "$name"
      die "$name never became ready"
    fi
    sleep 0.2
  done
}

# check_target NAME: one request must give 200 and the upstream's body.
check_target() {
  local name="$1" port="${PORT[$1]}" out code body
  out="$(curl -sk --max-time 5 -w '\n%{http_code}' "$(url_of "$name")" || true)"
  code="${out##*$'\n'}"
  body="${out%$'\n'*}"
  body="${body%$'\n'}" # the upstream body ends with a newline
  if [[ "$code" != 200 || "$body" != "$EXPECTED_BODY" ]]; then
    log "GET $(url_of "$name") via $name: status '$code', body '$body'"
    show_log "$name"
    die "$name does not proxy to the upstream correctly (expected 200 '$EXPECTED_BODY')"
  fi
}

# ------------------------------------------------------------------ nginx
# Everything nginx would write (pid, error log, temp dirs) goes under $TMP,
# via -p (prefix), -e (the error log opened before the config is read) and
# explicit *_temp_path directives, so it never touches /etc/nginx or
# /var/lib/nginx, as root or not.
NGX="$TMP/nginx"
mkdir -p "$NGX/logs" "$NGX/tmp"
cat >"$NGX/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $NGX/nginx.pid;
error_log $NGX/logs/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $NGX/tmp/client_body;
    proxy_temp_path $NGX/tmp/proxy;
    fastcgi_temp_path $NGX/tmp/fastcgi;
    uwsgi_temp_path $NGX/tmp/uwsgi;
    scgi_temp_path $NGX/tmp/scgi;

    server {
        listen 127.0.0.1:$P_NGINX;
        location / {
            return 200 "$EXPECTED_BODY\n";
        }
    }
}
EOF
LOGF[direct]="$NGX/logs/stderr.log"
nginx -t -q -p "$NGX" -e "$NGX/logs/error.log" -c "$NGX/nginx.conf" >"${LOGF[direct]}" 2>&1 || {
  sed 's/^/    /' "${LOGF[direct]}" >&2
  die "nginx rejected its config ($NGX/nginx.conf)"
}
"${CPU0[@]}" nginx -p "$NGX" -e "$NGX/logs/error.log" -c "$NGX/nginx.conf" >>"${LOGF[direct]}" 2>&1 &
PIDOF[direct]=$!
PIDS+=("$!")
log "nginx upstream: pid ${PIDOF[direct]}, 127.0.0.1:$P_NGINX"
wait_ready direct "$P_NGINX"
check_target direct

# -------------------------------------------------------------------- TLS
# One certificate and key for both TLS rows: ECDSA P-256, self-signed for
# 127.0.0.1. Both servers are held to TLS 1.3 with the same suite, the one
# both pick first for an OpenSSL client (wrk).
TLS_SUITE="TLS_AES_256_GCM_SHA384"
TLS_DIR="$TMP/tls"
if [[ -n "${WANT[faultline-tls]:-}${WANT[haproxy-tls]:-}" ]]; then
  mkdir -p "$TLS_DIR"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
    -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" >/dev/null 2>&1 ||
    die "openssl could not make the TLS rows' certificate"
  # HAProxy takes the chain and the key in one file.
  cat "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem" >"$TLS_DIR/haproxy.pem"
fi

# -------------------------------------------------------------- faultline
# write_faultline_config FILE PORT ADMIN_PORT RULES_DIR [LISTENER_EXTRA]
write_faultline_config() {
  cat >"$1" <<EOF
[admin]
listen = "127.0.0.1:$3"

[proxy]
rules_dir = "$4"
workers = 1

[[listener]]
name = "edge"
listen = "127.0.0.1:$2"
${5:-}

[[upstream]]
name = "bench"
url = "http://127.0.0.1:$P_NGINX"
labels = { region = "us-east-1", service = "bench" }

[[route]]
listener = "edge"
upstream = "bench"
EOF
}

# start_faultline TARGET CONFIG [BINARY]: BINARY defaults to $FAULTLINE.
start_faultline() {
  local name="$1" cfg="$2" bin="${3:-$FAULTLINE}"
  LOGF[$name]="$TMP/$name.log"
  "${CPU1[@]}" "$bin" run -c "$cfg" >"${LOGF[$name]}" 2>&1 &
  PIDOF[$name]=$!
  PIDS+=("$!")
  log "$name: pid ${PIDOF[$name]}, 127.0.0.1:${PORT[$name]} (binary $bin, config $cfg)"
  wait_ready "$name" "${PORT[$name]}"
  check_target "$name"
}

# write_haproxy_config FILE PORT [MAXCONN] [BIND_SUFFIX]
write_haproxy_config() {
  cat >"$1" <<EOF
global
    nbthread 1
${3:+    maxconn $3}
    ssl-default-bind-ciphersuites $TLS_SUITE

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s
${3:+    maxconn $3}

frontend edge
    bind 127.0.0.1:$2 ${4:-}
    default_backend bench

backend bench
    http-reuse always
    server nginx 127.0.0.1:$P_NGINX
EOF
}

# ----------------------------------------------------------- MEMORY=1 mode
if [[ "$MEMORY" == 1 ]]; then
  # Every target needs a descriptor per held connection, and so does the client.
  want_fds=$((MEM_CONNS + 1024))
  if [[ "$(ulimit -n)" != unlimited && "$(ulimit -n)" -lt $want_fds ]]; then
    ulimit -n "$want_fds" 2>/dev/null ||
      die "MEM_CONNS=$MEM_CONNS needs $want_fds descriptors; ulimit -n is $(ulimit -n) (hard $(ulimit -Hn))"
  fi
  MEM_PORT="$P_FL"
  MEM_RESULTS="$TMP/memory.tsv"
  : >"$MEM_RESULTS"

  # The nginx under test: a reverse proxy like the others.
  write_nginx_proxy_config() { # FILE PREFIX
    cat >"$1" <<EOF
worker_processes 1;
worker_rlimit_nofile $want_fds;
daemon off;
pid $2/nginx.pid;
error_log $2/logs/error.log warn;

events {
    worker_connections $want_fds;
}

http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $2/tmp/client_body;
    proxy_temp_path $2/tmp/proxy;
    fastcgi_temp_path $2/tmp/fastcgi;
    uwsgi_temp_path $2/tmp/uwsgi;
    scgi_temp_path $2/tmp/scgi;

    upstream bench {
        server 127.0.0.1:$P_NGINX;
        keepalive 32;
    }

    server {
        listen 127.0.0.1:$MEM_PORT;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
  }

  # mem_start TARGET: starts a fresh TARGET on $MEM_PORT; sets MEM_PID (the
  # process to stop) and MEM_RSS_PID (the process whose RSS counts).
  mem_start() {
    local name="$1" dir="$TMP/mem-$1" bin="$FAULTLINE" i
    mkdir -p "$dir"
    LOGF[$name]="$dir/stderr.log"
    PORT[$name]="$MEM_PORT"
    case "$name" in
      nginx)
        mkdir -p "$dir/logs" "$dir/tmp"
        write_nginx_proxy_config "$dir/nginx.conf" "$dir"
        "${CPU1[@]}" nginx -p "$dir" -e "$dir/logs/error.log" -c "$dir/nginx.conf" >"${LOGF[$name]}" 2>&1 &
        ;;
      haproxy)
        write_haproxy_config "$dir/haproxy.cfg" "$MEM_PORT" "$want_fds"
        "${CPU1[@]}" haproxy -db -f "$dir/haproxy.cfg" >"${LOGF[$name]}" 2>&1 &
        ;;
      faultline | faultline-base | faultline-blackhole)
        mkdir -p "$dir/rules"
        if [[ "$name" == faultline-blackhole ]]; then
          # Held far longer than a round lasts; the round ends by closing.
          printf '[[rule]]\nname = "hold"\n\n[rule.match]\nupstreams = ["bench"]\npath = "/held/**"\n\n[rule.fault]\nkind = "unavailable"\nmode = "blackhole"\nmax_hold = "10m"\n' >"$dir/rules/hold.toml"
        fi
        write_faultline_config "$dir/faultline.toml" "$MEM_PORT" "$P_ADMIN1" "$dir/rules"
        if [[ "$name" == faultline-base ]]; then bin="$BASELINE_BIN"; fi
        "${CPU1[@]}" "$bin" run -c "$dir/faultline.toml" >"${LOGF[$name]}" 2>&1 &
        ;;
    esac
    MEM_PID=$!
    PIDS+=("$MEM_PID")
    PIDOF[$name]=$MEM_PID
    wait_ready "$name" "$MEM_PORT"
    check_target "$name"
    MEM_RSS_PID=$MEM_PID
    if [[ "$name" == nginx ]]; then
      # The worker serves the connections; the master only watches it.
      MEM_RSS_PID=""
      for ((i = 0; i < 50; i++)); do
        MEM_RSS_PID="$(pgrep -P "$MEM_PID" | head -n1 || true)"
        [[ -n "$MEM_RSS_PID" ]] && break
        sleep 0.1
      done
      [[ -n "$MEM_RSS_PID" ]] || die "no nginx worker process under pid $MEM_PID"
    fi
  }

  mem_stop() { stop_pid "$1"; }

  rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

  # mem_round TARGET ROUND: one fresh process, one reading.
  mem_round() {
    local name="$1" r="$2" before after line="" mode=idle path=/ status=0 client_pid client_in
    mem_start "$name"
    if [[ "$name" == faultline-blackhole ]]; then
      mode=pending
      path=/held/x
    fi
    "${CPU0[@]}" python3 "$SCRIPT_DIR/conns.py" "$MEM_PORT" 50 --hold 0 >/dev/null ||
      die "warm-up requests to $name failed"
    sleep 0.5
    before="$(rss_kb "$MEM_RSS_PID")"
    # The client holds the connections until its stdin closes (at most 120 s).
    coproc MEMCLIENT { "${CPU0[@]}" python3 "$SCRIPT_DIR/conns.py" "$MEM_PORT" "$MEM_CONNS" --mode "$mode" --path "$path" --hold 120; }
    client_pid=$MEMCLIENT_PID
    client_in=${MEMCLIENT[1]}
    read -r -t 120 line <&"${MEMCLIENT[0]}" || true
    sleep "$MEM_SETTLE"
    after="$(rss_kb "$MEM_RSS_PID")"
    exec {client_in}>&-
    wait "$client_pid" || status=$?
    mem_stop "$MEM_PID"
    [[ "$line" == "ready opened=$MEM_CONNS ok=$MEM_CONNS failed=0" ]] ||
      die "$name round $r: the client reported '${line:-nothing}' (status $status), expected all $MEM_CONNS connections ok"
    printf '%s\t%d\t%d\t%d\n' "$name" "$r" "$before" "$after" >>"$MEM_RESULTS"
    log "$(printf 'round %d/%d  %-20s RSS %7d kB -> %7d kB  %6.2f KB per connection' "$r" "$ROUNDS" "$name" "$before" "$after" \
      "$(awk -v a="$after" -v b="$before" -v n="$MEM_CONNS" 'BEGIN { print (a - b) / n }')")"
  }

  log "memory: targets='$MEM_TARGETS' rounds=$ROUNDS connections=$MEM_CONNS settle=${MEM_SETTLE}s pin=$PIN"
  for ((r = 1; r <= ROUNDS; r++)); do
    for t in $MEM_TARGETS; do
      mem_round "$t" "$r"
    done
  done

  echo
  python3 - "$MEM_RESULTS" "$MEM_CONNS" $MEM_TARGETS <<'EOF'
import sys
from statistics import median

path, conns, order = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rows = {}
for line in open(path):
    t, r, before, after = line.split("\t")
    rows.setdefault(t, []).append((int(before), int(after)))
per = {t: median((a - b) / conns for b, a in rs) for t, rs in rows.items()}
print(f"RSS per connection, {conns} connections, median of rounds (KB = 1,024 bytes)")
print(f"{'target':<22}{'KB/conn':>9}{'before kB':>11}{'after kB':>10}{'rounds':>8}  per round")
for t in order:
    rs = rows[t]
    each = " ".join(f"{(a - b) / conns:.2f}" for b, a in rs)
    print(f"{t:<22}{per[t]:>9.2f}{median(b for b, _ in rs):>11.0f}"
          f"{median(a for _, a in rs):>10.0f}{len(rs):>8}  {each}")
print()
print("ratios (of medians):")
for a, b in [("faultline", "haproxy"), ("faultline", "nginx"), ("faultline", "faultline-base"),
             ("faultline-blackhole", "faultline")]:
    if a in per and b in per and per[b] > 0:
        print(f"  {a + ' / ' + b:<44}{per[a] / per[b]:>8.2f}")
EOF
  exit 0
fi

# The plain instance also serves faultline-light, the baseline of
# faultline-100ms.
if [[ -n "${WANT[faultline]:-}" || -n "${WANT[faultline-100ms]:-}" ]]; then
  mkdir -p "$TMP/rules-empty"
  write_faultline_config "$TMP/faultline.toml" "$P_FL" "$P_ADMIN1" "$TMP/rules-empty"
  start_faultline faultline "$TMP/faultline.toml"
fi

# The baseline build, configured exactly like the plain instance (same empty
# rules dir, one worker) but on its own listen and admin ports.
if [[ -n "${WANT[faultline-base]:-}" ]]; then
  mkdir -p "$TMP/rules-empty"
  write_faultline_config "$TMP/faultline-base.toml" "$P_FLBASE" "$P_ADMIN4" "$TMP/rules-empty"
  start_faultline faultline-base "$TMP/faultline-base.toml" "$BASELINE_BIN"
fi

if [[ -n "${WANT[faultline-1k]:-}" ]]; then
  mkdir -p "$TMP/rules-1k"
  for ((i = 1; i <= RULES; i++)); do
    printf '[[rule]]\nname = "nomatch-%d"\n\n[rule.match]\nupstreams = ["bench"]\npath = "/nomatch-%d/**"\n\n[rule.fault]\nkind = "error"\nstatus = 500\n\n' "$i" "$i"
  done >"$TMP/rules-1k/nomatch.toml"
  write_faultline_config "$TMP/faultline-1k.toml" "$P_FL1K" "$P_ADMIN2" "$TMP/rules-1k"
  start_faultline faultline-1k "$TMP/faultline-1k.toml"
  # The rules must really be loaded, or the comparison measures nothing:
  # a path one of them matches has to get the injected 500.
  probe="/nomatch-$RULES/probe"
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$P_FL1K$probe" || true)"
  if [[ "$code" != 500 ]]; then
    show_log faultline-1k
    die "faultline-1k answered $probe with '$code', expected the injected 500: are the $RULES rules in $TMP/rules-1k loaded?"
  fi
fi

if [[ -n "${WANT[faultline-100ms]:-}" ]]; then
  mkdir -p "$TMP/rules-100ms"
  cat >"$TMP/rules-100ms/latency.toml" <<'EOF'
[[rule]]
name = "bench-latency-100ms"
[rule.match]
upstreams = ["bench"]
[rule.fault]
kind = "latency"
delay = "100ms"
EOF
  write_faultline_config "$TMP/faultline-100ms.toml" "$P_FL100" "$P_ADMIN3" "$TMP/rules-100ms"
  start_faultline faultline-100ms "$TMP/faultline-100ms.toml"
  # The rule must really apply, or the row measures nothing: a request has
  # to take at least 100ms and carry the rule's marker header.
  probe_out="$(curl -s -D - -o /dev/null --max-time 5 -w 'time_total=%{time_total}\n' "http://127.0.0.1:$P_FL100/" | tr -d '\r' || true)"
  probe_time="$(sed -n 's/^time_total=//p' <<<"$probe_out")"
  probe_rule="$(sed -n 's/^[Xx]-[Ff]aultline-[Rr]ule:[[:space:]]*//p' <<<"$probe_out")"
  if ! awk -v t="$probe_time" 'BEGIN { exit !(t != "" && t + 0 >= 0.100) }'; then
    show_log faultline-100ms
    die "faultline-100ms answered in '${probe_time:-no response}' s, expected >= 0.100 s: is the latency rule in $TMP/rules-100ms loaded?"
  fi
  if [[ "$probe_rule" != bench-latency-100ms ]]; then
    printf '%s\n' "$probe_out" | sed 's/^/    /' >&2
    show_log faultline-100ms
    die "faultline-100ms response lacks 'x-faultline-rule: bench-latency-100ms' (got '${probe_rule}'): is the latency rule in $TMP/rules-100ms loaded?"
  fi
  log "faultline-100ms probe: ${probe_time}s, x-faultline-rule: $probe_rule"
fi

if [[ -n "${WANT[faultline-tls]:-}" ]]; then
  mkdir -p "$TMP/rules-tls"
  write_faultline_config "$TMP/faultline-tls.toml" "$P_FLTLS" "$P_ADMIN5" "$TMP/rules-tls" \
    "tls = { cert = \"$TLS_DIR/cert.pem\", key = \"$TLS_DIR/key.pem\" }"
  start_faultline faultline-tls "$TMP/faultline-tls.toml"
fi

# ---------------------------------------------------------------- haproxy
if [[ -n "${WANT[haproxy-tls]:-}" ]]; then
  HAPT="$TMP/haproxy-tls"
  mkdir -p "$HAPT"
  write_haproxy_config "$HAPT/haproxy.cfg" "$P_HAPTLS" "" "ssl crt $TLS_DIR/haproxy.pem alpn http/1.1 ssl-min-ver TLSv1.3"
  LOGF[haproxy-tls]="$HAPT/haproxy.log"
  haproxy -c -q -f "$HAPT/haproxy.cfg" >"${LOGF[haproxy-tls]}" 2>&1 || {
    sed 's/^/    /' "${LOGF[haproxy-tls]}" >&2
    die "haproxy rejected its TLS config ($HAPT/haproxy.cfg)"
  }
  "${CPU1[@]}" haproxy -db -f "$HAPT/haproxy.cfg" >>"${LOGF[haproxy-tls]}" 2>&1 &
  PIDOF[haproxy-tls]=$!
  PIDS+=("$!")
  log "haproxy-tls: pid ${PIDOF[haproxy-tls]}, 127.0.0.1:$P_HAPTLS"
  wait_ready haproxy-tls "$P_HAPTLS"
  check_target haproxy-tls
fi
if [[ -n "${WANT[faultline-tls]:-}" && -n "${WANT[haproxy-tls]:-}" ]]; then
  # The two rows must encrypt alike, or the ratio compares cipher suites.
  for t in faultline-tls haproxy-tls; do
    suite="$(openssl s_client -connect "127.0.0.1:${PORT[$t]}" -tls1_3 </dev/null 2>/dev/null |
      sed -n 's/^ *Cipher *: *//p; s/^New, TLSv1.3, Cipher is //p' | head -n 1)"
    log "$t negotiates ${suite:-an unknown suite}"
    [[ "$suite" == "$TLS_SUITE" ]] || die "$t negotiated '${suite}', not $TLS_SUITE: the TLS rows would not compare alike"
  done
fi

if [[ -n "${WANT[haproxy]:-}" ]]; then
  HAP="$TMP/haproxy"
  mkdir -p "$HAP"
  write_haproxy_config "$HAP/haproxy.cfg" "$P_HAPROXY"
  LOGF[haproxy]="$HAP/haproxy.log"
  haproxy -c -q -f "$HAP/haproxy.cfg" >"${LOGF[haproxy]}" 2>&1 || {
    sed 's/^/    /' "${LOGF[haproxy]}" >&2
    die "haproxy rejected its config ($HAP/haproxy.cfg)"
  }
  # -db: stay in the foreground (no daemon), so $! is haproxy itself.
  "${CPU1[@]}" haproxy -db -f "$HAP/haproxy.cfg" >>"${LOGF[haproxy]}" 2>&1 &
  PIDOF[haproxy]=$!
  PIDS+=("$!")
  log "haproxy: pid ${PIDOF[haproxy]}, 127.0.0.1:$P_HAPROXY"
  wait_ready haproxy "$P_HAPROXY"
  check_target haproxy
fi

# -------------------------------------------------------------------- wrk
RESULTS="$TMP/results.tsv"
: >"$RESULTS"
mkdir -p "$TMP/wrk"

# parse_wrk FILE -> "rps p50_ms p99_ms non2xx socket_errors"
parse_wrk() {
  awk '
    function ms(v,   n, u) {
      n = v; sub(/[a-z]+$/, "", n)
      u = v; sub(/^[0-9.]+/, "", u)
      if (u == "us") return n / 1000
      if (u == "ms") return n
      if (u == "s")  return n * 1000
      if (u == "m")  return n * 60000
      if (u == "h")  return n * 3600000
      if (u == "ns") return n / 1000000
      return "nan"
    }
    $1 == "50%"                 { p50 = ms($2) }
    $1 == "99%"                 { p99 = ms($2) }
    /^Requests\/sec:/           { rps = $2 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ {
      # Socket errors: connect 0, read 0, write 0, timeout 0
      for (i = 3; i <= NF; i += 2) { x = $(i + 1); sub(/,/, "", x); sock += x }
    }
    END {
      if (rps == "" || p50 == "" || p99 == "") { print "PARSE_ERROR"; exit }
      printf "%s %s %s %d %d\n", rps, p50, p99, non2xx + 0, sock + 0
    }' "$1"
}

# conns_of ROW: wrk connections for a row (light load for the latency rows).
conns_of() {
  case "$1" in
    faultline-100ms | faultline-light) echo "$LIGHT_CONNS" ;;
    *) echo "$CONNS" ;;
  esac
}

# run_wrk ROW DURATION OUTFILE
# wrk runs in the background and is waited for, so a SIGTERM/SIGINT to the
# script is handled at once (bash defers traps until a foreground command
# ends) and the cleanup can stop wrk too.
WRK_PID=""
run_wrk() {
  local name="$1" dur="$2" out="$3" status=0 conns server
  conns="$(conns_of "$name")"
  server="${SERVER_OF[$name]:-$name}"
  "${CPU0[@]}" wrk -t1 -c"$conns" -d"$dur" --latency "$(url_of "$name")" >"$out" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID" || status=$?
  WRK_PID=""
  if ((status != 0)); then
    sed 's/^/    /' "$out" >&2
    die "wrk failed (status $status) against $name (127.0.0.1:${PORT[$name]})"
  fi
  if ! kill -0 "${PIDOF[$server]}" 2>/dev/null; then
    show_log "$server"
    die "$server died during the wrk run ($name)"
  fi
}

log "config: targets='${ORDER[*]}' rows='${ROWS[*]}' rounds=$ROUNDS duration=$DURATION warmup=$WARMUP conns=$CONNS light_conns=$LIGHT_CONNS pin=$PIN cpus=$(nproc)"
if ((I_FL >= 0 && I_BASE >= 0)); then
  log "A/B: faultline=$FAULTLINE faultline-base=$BASELINE_BIN; order alternates (odd rounds faultline first, even rounds faultline-base first)"
  if ((ROUNDS % 2 != 0)); then
    log "note: ROUNDS=$ROUNDS is odd, so faultline goes first in one round more than faultline-base"
  fi
fi
for t in "${ROWS[@]}"; do
  log "warm-up: $t ($WARMUP)"
  run_wrk "$t" "$WARMUP" "$TMP/wrk/warmup-$t.txt"
done

errors_seen=0
for ((r = 1; r <= ROUNDS; r++)); do
  round_rows=("${ROWS[@]}")
  if ((r % 2 == 0 && I_FL >= 0 && I_BASE >= 0)); then
    # Even round: faultline-base takes the earlier of the two slots.
    round_rows[I_FL]=faultline-base
    round_rows[I_BASE]=faultline
  fi
  for t in "${round_rows[@]}"; do
    out="$TMP/wrk/round$r-$t.txt"
    run_wrk "$t" "$DURATION" "$out"
    parsed="$(parse_wrk "$out")"
    if [[ "$parsed" == PARSE_ERROR ]]; then
      sed 's/^/    /' "$out" >&2
      die "could not parse wrk output for $t (round $r)"
    fi
    read -r rps p50 p99 non2xx sockerr <<<"$parsed"
    printf '%s\t%d\t%s\t%s\t%s\t%d\t%d\n' "$t" "$r" "$rps" "$p50" "$p99" "$non2xx" "$sockerr" >>"$RESULTS"
    log "$(printf 'round %d/%d  %-15s %12s req/s  p50 %8.3f ms  p99 %8.3f ms  (c=%s)' "$r" "$ROUNDS" "$t" "$rps" "$p50" "$p99" "$(conns_of "$t")")"
    if ((non2xx > 0 || sockerr > 0)); then
      errors_seen=1
      log "WARNING: $t round $r: $non2xx non-2xx/3xx responses, $sockerr socket errors (raw output below)"
      grep -E 'Non-2xx|Socket errors' "$out" | sed 's/^/    /' >&2 || true
    fi
  done
done

# ------------------------------------------------------------------ report
echo
python3 - "$RESULTS" "$CONNS" "$LIGHT_CONNS" "${ROWS[@]}" <<'EOF'
import sys
from statistics import median

path, conns, light_conns, order = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
light = {"faultline-100ms", "faultline-light"}
runs = {}
for line in open(path):
    t, r, rps, p50, p99, non2xx, sock = line.rstrip("\n").split("\t")
    runs.setdefault(t, []).append(
        (float(rps), float(p50), float(p99), int(non2xx), int(sock)))

med = {}
print(f"{'target':<16}{'conns':>6}{'rps (median)':>14}{'p50 ms':>10}{'p99 ms':>10}{'rounds':>8}  errors")
for t in order:
    rs = runs[t]
    m = tuple(median(x[i] for x in rs) for i in range(3))
    med[t] = m
    non2xx = sum(x[3] for x in rs)
    sock = sum(x[4] for x in rs)
    err = "-" if non2xx == 0 and sock == 0 else f"WARNING non2xx={non2xx} socket={sock}"
    c = light_conns if t in light else conns
    print(f"{t:<16}{c:>6}{m[0]:>14.0f}{m[1]:>10.3f}{m[2]:>10.3f}{len(rs):>8}  {err}")

def ratio(label, a, b, idx):
    if a in med and b in med and med[b][idx] > 0:
        print(f"  {label:<44}{med[a][idx] / med[b][idx]:>8.3f}")
    else:
        print(f"  {label:<44}{'n/a':>8}")

print()
print("ratios (of medians):")
ratio("faultline / haproxy  rps", "faultline", "haproxy", 0)
ratio("faultline / haproxy  p99", "faultline", "haproxy", 2)
ratio("faultline / faultline-base  rps", "faultline", "faultline-base", 0)
ratio("faultline / faultline-base  p99", "faultline", "faultline-base", 2)
ratio("faultline-1k / faultline  rps", "faultline-1k", "faultline", 0)
ratio("faultline / direct  rps", "faultline", "direct", 0)
ratio("haproxy / direct  rps", "haproxy", "direct", 0)
ratio("faultline-tls / haproxy-tls  rps", "faultline-tls", "haproxy-tls", 0)
ratio("faultline-tls / haproxy-tls  p99", "faultline-tls", "haproxy-tls", 2)

def value(label, v):
    print(f"  {label:<44}{'n/a' if v is None else format(v, '.3f'):>8}")

fl100 = med.get("faultline-100ms")
base = med.get("faultline-light")
print()
print(f"injected latency (delay 100ms, {light_conns} conns, medians):")
value("faultline-100ms added latency p50 (ms)",
      fl100[1] - base[1] if fl100 and base else None)
value("faultline-100ms p50 (ms)", fl100[1] if fl100 else None)
value("faultline-100ms p99 (ms)", fl100[2] if fl100 else None)
EOF

if ((errors_seen)); then
  if [[ "$ALLOW_ERRORS" == 1 ]]; then
    log "WARNING: some runs saw non-2xx responses or socket errors (ALLOW_ERRORS=1, not failing)"
  else
    die "some runs saw non-2xx responses or socket errors (see WARNING lines and the errors column; ALLOW_ERRORS=1 to only warn)"
  fi
fi
