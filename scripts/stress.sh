#!/usr/bin/env bash
# scripts/stress.sh — robustness checks for a release faultline (issue #21,
# "Keep it that way"). Not run by CI: it takes a few minutes and 10,000
# sockets. Everything runs on loopback against an nginx upstream, with
# bounded counts and times, and stops by itself.
#
# Checks, one line each with its figure and PASS or FAIL:
#
#   silent      SLOW_CONNS connections that connect and send nothing are
#               closed by the proxy within 2 x header_timeout.
#   slowloris   SLOW_CONNS connections that send a request head one byte
#               every SLOW_INTERVAL seconds are closed within
#               2 x header_timeout (the timeout covers the whole head).
#               Both run against an instance whose config sets
#               `[proxy] header_timeout` (HEADER_TIMEOUT seconds); a build
#               that does not know the key refuses the config, and both
#               checks FAIL saying so.
#   reload      RELOADS rewrites of a rule file (every third one invalid,
#               alternately written in place and renamed over) while wrk
#               loads the proxy: 0 failed requests, the last valid rules
#               active afterwards.
#   soak        SOAK seconds of wrk load (keep-alive, plus a second wrk
#               opening a connection per request) through latency and error
#               faults: 0 socket errors, RSS growth after the first
#               SOAK_WARMUP seconds at most SOAK_GROWTH_KB.
#   blackhole   BLACKHOLE_CONNS requests held in a blackhole at once: none
#               answered while held, a plain request still answered in under
#               a second meanwhile, then `POST /api/halt` releases them all
#               to the upstream: every one answered 2xx within
#               RELEASE_LIMIT seconds. Also prints RSS per held request.
#               It runs last, as the halt switches every rule off.
#   alive       the proxy is still running and logged no panic.
#
# Exit status: 0 when every check passed, 1 otherwise (2 when the setup
# itself failed).
#
# How to run
#   scripts/stress.sh                           # builds target/release/faultline
#   FAULTLINE_BIN=/path/to/faultline scripts/stress.sh
#   BLACKHOLE_CONNS=2000 SOAK=20 scripts/stress.sh   # quicker
#
#   Environment (defaults in brackets):
#     FAULTLINE_BIN    use this binary instead of `cargo build --release`
#     HEADER_TIMEOUT   seconds, the header_timeout configured [2]
#     SLOW_CONNS       connections of the silent and slowloris checks [200]
#     SLOW_INTERVAL    seconds between slowloris bytes [0.5]
#     BLACKHOLE_CONNS  requests held at once [10000]
#     RELEASE_LIMIT    seconds allowed for answering them after the halt [15]
#     RELOADS          rule-file rewrites [100]
#     RELOAD_GAP       seconds between rewrites [0.05]
#     SOAK             seconds of soak load [60]
#     SOAK_WARMUP      seconds before the first RSS reading of the soak [10]
#     SOAK_GROWTH_KB   RSS growth allowed after the warm-up, in kB [4096]
#     KEEP_TMP=1       keep the temp dir (configs, logs, client output)
#
#   Needs: wrk, nginx, curl (installed with apt-get when missing), python3
#   and scripts/conns.py, and cargo unless FAULTLINE_BIN is set. Open file
#   limit: BLACKHOLE_CONNS plus as many upstream connections, plus slack.

set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
# shellcheck source=scripts/common.sh
source "$SCRIPT_DIR/common.sh"
CONNS_PY="$SCRIPT_DIR/conns.py"

HEADER_TIMEOUT="${HEADER_TIMEOUT:-2}"
SLOW_CONNS="${SLOW_CONNS:-200}"
SLOW_INTERVAL="${SLOW_INTERVAL:-0.5}"
BLACKHOLE_CONNS="${BLACKHOLE_CONNS:-10000}"
RELEASE_LIMIT="${RELEASE_LIMIT:-15}"
RELOADS="${RELOADS:-100}"
RELOAD_GAP="${RELOAD_GAP:-0.05}"
SOAK="${SOAK:-60}"
SOAK_WARMUP="${SOAK_WARMUP:-10}"
SOAK_GROWTH_KB="${SOAK_GROWTH_KB:-4096}"
KEEP_TMP="${KEEP_TMP:-0}"

log() { printf '[stress] %s\n' "$*" >&2; }
die() {
  printf '[stress] ERROR: %s\n' "$*" >&2
  exit 2
}

for v in SLOW_CONNS BLACKHOLE_CONNS RELEASE_LIMIT RELOADS SOAK SOAK_WARMUP SOAK_GROWTH_KB HEADER_TIMEOUT; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
((SOAK > SOAK_WARMUP)) || die "SOAK ($SOAK) must be longer than SOAK_WARMUP ($SOAK_WARMUP)"
[[ -f "$CONNS_PY" ]] || die "missing $CONNS_PY"

# ------------------------------------------------------------- dependencies
apt_updated=0
ensure_pkg() { # ensure_pkg COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || die "'$1' is missing; install '$2'"
  local sudo=""
  if [[ "$(id -u)" -ne 0 ]]; then sudo=sudo; fi
  log "installing $2"
  if ((apt_updated == 0)); then
    $sudo apt-get update -q >/dev/null || die "apt-get update failed"
    apt_updated=1
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null ||
    die "apt-get install $2 failed"
}
ensure_pkg wrk wrk
ensure_pkg nginx nginx
ensure_pkg curl curl
command -v python3 >/dev/null 2>&1 || die "python3 is required"

# Each held request has a client socket in the proxy, and on release an
# upstream socket too.
want_fds=$((2 * BLACKHOLE_CONNS + 1024))
if [[ "$(ulimit -n)" != unlimited && "$(ulimit -n)" -lt $want_fds ]]; then
  ulimit -n "$want_fds" 2>/dev/null || {
    log "WARNING: ulimit -n is $(ulimit -n) (hard $(ulimit -Hn)); $want_fds wanted for BLACKHOLE_CONNS=$BLACKHOLE_CONNS"
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  }
fi

if [[ -n "${FAULTLINE_BIN:-}" ]]; then
  FAULTLINE="$FAULTLINE_BIN"
else
  log "building faultline: cargo build --release"
  (cd "$REPO_ROOT" && cargo build --release) || die "cargo build --release failed"
  FAULTLINE="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/faultline"
fi
[[ -x "$FAULTLINE" ]] || die "$FAULTLINE is not an executable file"

# ------------------------------------------------------- temp dir, cleanup
TMP="$(mktemp -d "${TMPDIR:-/tmp}/faultline-stress.XXXXXX")"
PIDS=()
cleanup() {
  local rc=$? pid i
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [[ "$KEEP_TMP" == 1 ]]; then log "kept temp dir: $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

read -r P_NGINX P_MAIN P_ADMIN P_HT P_HT_ADMIN < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)
ADMIN="http://127.0.0.1:$P_ADMIN"

RESULTS=()
FAILED=0
# record NAME PASS|FAIL FIGURE
record() {
  RESULTS+=("$(printf '%-10s %-4s  %s' "$1" "$2" "$3")")
  [[ "$2" == PASS ]] || FAILED=1
  log "$(printf '%-10s %-4s  %s' "$1" "$2" "$3")"
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time "${2:-5}" "$1" || true; }

# wait_http URL PID: until any HTTP answer, or the process is gone (1), or 30 s (1).
wait_http() {
  local i code
  for ((i = 0; i < 150; i++)); do
    kill -0 "$2" 2>/dev/null || return 1
    code="$(http_code "$1" 1)"
    [[ -n "$code" && "$code" != 000 ]] && return 0
    sleep 0.2
  done
  return 1
}

# ------------------------------------------------------------------ nginx
NGX="$TMP/nginx"
mkdir -p "$NGX/logs" "$NGX/tmp"
cat >"$NGX/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $want_fds;
daemon off;
pid $NGX/nginx.pid;
error_log $NGX/logs/error.log warn;
events { worker_connections $want_fds; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $NGX/tmp/client_body;
    proxy_temp_path $NGX/tmp/proxy;
    fastcgi_temp_path $NGX/tmp/fastcgi;
    uwsgi_temp_path $NGX/tmp/uwsgi;
    scgi_temp_path $NGX/tmp/scgi;
    server {
        listen 127.0.0.1:$P_NGINX backlog=8192;
        location / { return 200 "hello from upstream\n"; }
    }
}
EOF
nginx -p "$NGX" -e "$NGX/logs/error.log" -c "$NGX/nginx.conf" >"$NGX/logs/stderr.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_http "http://127.0.0.1:$P_NGINX/" "$NGINX_PID" || die "nginx did not start (see $NGX/logs)"

# -------------------------------------------------------------- faultline
# write_config FILE PORT ADMIN_PORT RULES_DIR [EXTRA_PROXY_LINES]
write_config() {
  mkdir -p "$4"
  cat >"$1" <<EOF
[admin]
listen = "127.0.0.1:$3"

[proxy]
rules_dir = "$4"
workers = 2
max_active_faults = $((BLACKHOLE_CONNS + 1000))
pool_idle_timeout = "10s"
${5:-}

[[listener]]
name = "edge"
listen = "127.0.0.1:$2"

[[upstream]]
name = "bench"
url = "http://127.0.0.1:$P_NGINX"

[[route]]
listener = "edge"
upstream = "bench"
EOF
}

# start_faultline NAME CONFIG PORT: sets STARTED_PID; returns 1 when it
# does not come up (its log says why).
start_faultline() {
  "$FAULTLINE" run -c "$2" >"$TMP/$1.log" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
  wait_http "http://127.0.0.1:$3/" "$STARTED_PID"
}

MAIN_RULES="$TMP/rules-main"
write_config "$TMP/main.toml" "$P_MAIN" "$P_ADMIN" "$MAIN_RULES"
cat >"$MAIN_RULES/10-hold.toml" <<'EOF'
[[rule]]
name = "hold"
[rule.match]
path = "/held/**"
[rule.fault]
kind = "unavailable"
mode = "blackhole"
max_hold = "2m"
EOF
cat >"$MAIN_RULES/20-soak.toml" <<'EOF'
[[rule]]
name = "soak-latency"
probability = 0.3
[rule.match]
path = "/soak/**"
[rule.fault]
kind = "latency"
delay = "2ms"
jitter = "1ms"

[[rule]]
name = "soak-error"
probability = 0.05
[rule.match]
path = "/soak/**"
[rule.fault]
kind = "error"
status = 503
EOF
start_faultline main "$TMP/main.toml" "$P_MAIN" || {
  sed 's/^/    /' "$TMP/main.log" >&2
  die "faultline did not start"
}
MAIN_PID=$STARTED_PID
log "faultline $FAULTLINE: pid $MAIN_PID on 127.0.0.1:$P_MAIN, admin $ADMIN"

# ------------------------------------------------- silent and slowloris
HT_OK=1
write_config "$TMP/header-timeout.toml" "$P_HT" "$P_HT_ADMIN" "$TMP/rules-empty" \
  "header_timeout = \"${HEADER_TIMEOUT}s\""
if start_faultline header-timeout "$TMP/header-timeout.toml" "$P_HT"; then
  HT_PID=$STARTED_PID
else
  HT_OK=0
  why="$(grep -m1 -iE 'error|header_timeout' "$TMP/header-timeout.log" | tr -s ' ' | cut -c1-150 || true)"
  for check in silent slowloris; do
    record "$check" FAIL "faultline refused a config with header_timeout = \"${HEADER_TIMEOUT}s\": ${why:-see log}"
  done
fi

# slow_check NAME MODE: SLOW_CONNS connections in MODE must all be closed
# within 2 x HEADER_TIMEOUT, while a plain request is still served.
slow_check() {
  local name="$1" mode="$2" limit=$((2 * HEADER_TIMEOUT)) out ready done last code
  out="$TMP/$name.out"
  python3 "$CONNS_PY" "$P_HT" "$SLOW_CONNS" --mode "$mode" --interval "$SLOW_INTERVAL" \
    --watch --hold $((limit + 6)) </dev/null >"$out" 2>"$TMP/$name.err" &
  local client=$!
  sleep 0.5
  code="$(http_code "http://127.0.0.1:$P_HT/" 2)"
  wait "$client" || true
  ready="$(sed -n 's/^ready //p' "$out")"
  done="$(sed -n 's/^done=\([0-9]*\) .*/\1/p' "$out")"
  last="$(sed -n 's/.* last_after=\([0-9.]*\)s$/\1/p' "$out")"
  if [[ -z "$done" ]]; then
    record "$name" FAIL "the client did not finish (${ready:-no connections}; see $TMP/$name.err)"
  elif [[ "$done" == "$SLOW_CONNS" ]] && awk -v t="$last" -v l="$limit" 'BEGIN { exit !(t <= l) }' && [[ "$code" == 200 ]]; then
    record "$name" PASS "$done/$SLOW_CONNS closed, the last after ${last}s (limit ${limit}s); plain request meanwhile: $code"
  else
    record "$name" FAIL "$done/$SLOW_CONNS closed within ${last}s (limit ${limit}s); plain request meanwhile: $code"
  fi
}
if ((HT_OK)); then
  slow_check silent silent
  slow_check slowloris slowloris
  kill -TERM "$HT_PID" 2>/dev/null || true
fi

# ------------------------------------------------------------ reload storm
# parse_wrk FILE -> "requests non2xx socket_errors"
parse_wrk() {
  awk '
    / requests in /             { req = $1 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ {
      for (i = 3; i <= NF; i += 2) { x = $(i + 1); sub(/,/, "", x); sock += x }
    }
    END { printf "%d %d %d\n", req + 0, non2xx + 0, sock + 0 }' "$1"
}

reload_check() {
  local file="$MAIN_RULES/30-storm.toml" i invalid=0 wrk_out="$TMP/reload-wrk.txt" dur
  # wrk runs a little longer than the storm: RELOADS x (RELOAD_GAP + write time).
  dur="$(awk -v n="$RELOADS" -v g="$RELOAD_GAP" 'BEGIN { printf "%d", n * (g + 0.01) + 3 }')"
  wrk -t1 -c16 -d"${dur}s" "http://127.0.0.1:$P_MAIN/" >"$wrk_out" 2>&1 &
  local wrk_pid=$!
  sleep 1
  for ((i = 1; i <= RELOADS; i++)); do
    local body
    if ((i % 3 == 0 && i != RELOADS)); then
      invalid=$((invalid + 1))
      # Alternately unparsable TOML and a rule that does not validate.
      if ((i % 2 == 0)); then
        body="[[rule]]\nname = \"storm-$i\"\n[rule.match\npath = \"/storm/**\"\n"
      else
        body="[[rule]]\nname = \"storm-$i\"\n[rule.match]\npath = \"/storm/**\"\n[rule.fault]\nkind = \"no-such-kind\"\n"
      fi
    else
      local name="storm-$i"
      if ((i == RELOADS)); then name=storm-final; fi
      body="[[rule]]\nname = \"$name\"\n[rule.match]\npath = \"/$name/**\"\n[rule.fault]\nkind = \"error\"\nstatus = 500\n"
    fi
    if ((i % 2 == 0)); then
      printf "$body" >"$file"
    else
      printf "$body" >"$file.tmp"
      mv -f "$file.tmp" "$file"
    fi
    sleep "$RELOAD_GAP"
  done
  wait "$wrk_pid" || true
  sleep 1.5 # the watcher debounces
  local probe plain api req non2xx sock
  probe="$(http_code "http://127.0.0.1:$P_MAIN/storm-final/x" 5)"
  plain="$(http_code "http://127.0.0.1:$P_MAIN/" 5)"
  api="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X POST "$ADMIN/api/reload" || true)"
  read -r req non2xx sock <<<"$(parse_wrk "$wrk_out")"
  local figure="$RELOADS rewrites ($invalid invalid) under load: $req requests, $non2xx non-2xx, $sock socket errors; afterwards the last rule answers $probe (want 500), / answers $plain, POST /api/reload $api"
  if ((req > 0 && non2xx == 0 && sock == 0)) && [[ "$probe" == 500 && "$plain" == 200 && "$api" == 200 ]]; then
    record reload PASS "$figure"
  else
    record reload FAIL "$figure"
  fi
  rm -f "$file"
}
reload_check

# -------------------------------------------------------------------- soak
soak_check() {
  local keep="$TMP/soak-keepalive.txt" churn="$TMP/soak-churn.txt" first last peak=0 rss t
  wrk -t1 -c32 -d"${SOAK}s" "http://127.0.0.1:$P_MAIN/soak/x" >"$keep" 2>&1 &
  local w1=$!
  wrk -t1 -c4 -d"${SOAK}s" -H "Connection: close" "http://127.0.0.1:$P_MAIN/soak/y" >"$churn" 2>&1 &
  local w2=$!
  sleep "$SOAK_WARMUP"
  first="$(rss_kb "$MAIN_PID")"
  for ((t = SOAK_WARMUP; t < SOAK; t += 5)); do
    rss="$(rss_kb "$MAIN_PID")"
    ((rss > peak)) && peak=$rss
    sleep 5
  done
  wait "$w1" || true
  wait "$w2" || true
  last="$(rss_kb "$MAIN_PID")"
  local r1 n1 s1 r2 n2 s2
  read -r r1 n1 s1 <<<"$(parse_wrk "$keep")"
  read -r r2 n2 s2 <<<"$(parse_wrk "$churn")"
  local growth=$((last - first))
  local figure="${SOAK}s: $r1 keep-alive + $r2 one-per-connection requests ($((n1 + n2)) injected non-2xx), $((s1 + s2)) socket errors; RSS ${first} kB at ${SOAK_WARMUP}s -> ${last} kB at the end (${growth} kB, limit ${SOAK_GROWTH_KB} kB; peak ${peak} kB)"
  if ((r1 > 0 && r2 > 0 && s1 + s2 == 0 && growth <= SOAK_GROWTH_KB)); then
    record soak PASS "$figure"
  else
    record soak FAIL "$figure"
  fi
}
soak_check

# --------------------------------------------------------------- blackhole
blackhole_check() {
  local out="$TMP/blackhole.out" line ready before held code t0 t1 plain_ms marked done ok last
  before="$(rss_kb "$MAIN_PID")"
  coproc HOLD { python3 "$CONNS_PY" "$P_MAIN" "$BLACKHOLE_CONNS" --mode pending --path /held/x \
    --watch --hold $((RELEASE_LIMIT + 150)) 2>"$TMP/blackhole.err"; }
  local client=$HOLD_PID client_in=${HOLD[1]} client_out=${HOLD[0]}
  read -r -t 150 ready <&"$client_out" || ready=""
  if [[ "$ready" != "ready opened=$BLACKHOLE_CONNS ok=$BLACKHOLE_CONNS failed=0" ]]; then
    exec {client_in}>&-
    wait "$client" || true
    record blackhole FAIL "could not hold $BLACKHOLE_CONNS requests: '${ready:-no answer}' (see $TMP/blackhole.err)"
    return
  fi
  sleep 1
  held="$(rss_kb "$MAIN_PID")"
  t0="$(date +%s%N)"
  code="$(http_code "http://127.0.0.1:$P_MAIN/" 5)"
  t1="$(date +%s%N)"
  plain_ms=$(((t1 - t0) / 1000000))
  echo mark >&"$client_in"
  read -r -t 30 marked <&"$client_out" || marked=""
  curl -s -o /dev/null --max-time 10 -X POST "$ADMIN/api/halt" || true
  exec {client_in}>&-
  read -r -t $((RELEASE_LIMIT + 150)) line <&"$client_out" || line=""
  wait "$client" || true
  curl -s -o /dev/null --max-time 10 -X POST "$ADMIN/api/resume" || true
  marked="${marked#mark done=}"
  done="$(sed -n 's/^done=\([0-9]*\) .*/\1/p' <<<"$line")"
  ok="$(sed -n 's/.* answered_2xx=\([0-9]*\) .*/\1/p' <<<"$line")"
  last="$(sed -n 's/.* last_after=\([0-9.]*\)s$/\1/p' <<<"$line")"
  local per_kb
  per_kb="$(awk -v a="$held" -v b="$before" -v n="$BLACKHOLE_CONNS" 'BEGIN { printf "%.1f", (a - b) / n }')"
  local figure="held $BLACKHOLE_CONNS (RSS +${per_kb} KB each), ${marked:-?} answered while held, plain request ${code} in ${plain_ms} ms; after halt ${ok:-?}/$BLACKHOLE_CONNS answered 2xx, the last after ${last:-?}s (limit ${RELEASE_LIMIT}s)"
  if [[ "$marked" == 0 && "$code" == 200 && "$plain_ms" -lt 1000 && "$ok" == "$BLACKHOLE_CONNS" ]] &&
    awk -v t="$last" -v l="$RELEASE_LIMIT" 'BEGIN { exit !(t <= l) }'; then
    record blackhole PASS "$figure"
  else
    record blackhole FAIL "$figure"
  fi
}
# Last: the halt switches every rule off.
blackhole_check

# ------------------------------------------------------------------- alive
if kill -0 "$MAIN_PID" 2>/dev/null && ! grep -q 'panicked' "$TMP/main.log"; then
  record alive PASS "faultline pid $MAIN_PID still running, no panic in its log"
else
  record alive FAIL "faultline exited or panicked (log: $TMP/main.log)"
  KEEP_TMP=1
fi

echo
for line in "${RESULTS[@]}"; do echo "$line"; done
if ((FAILED)); then
  echo "stress: FAIL"
  exit 1
fi
echo "stress: PASS"
