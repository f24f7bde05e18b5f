#!/usr/bin/env bash
# scripts/grpcbench.sh — unary gRPC calls per second through faultline,
# next to HAProxy, both speaking h2c on both sides.
#
# What it measures
#   One gRPC backend (examples/grpc_echo_server.rs: tonic's server side
#   under hyper, h2c, one thread) is loaded with unary calls by
#   examples/grpc_bench.rs (a tonic client: CONCURRENCY callers over
#   CONNECTIONS h2c connections, one call at a time each) through:
#
#     direct          grpc_bench -> backend                     (the ceiling)
#     faultline       grpc_bench -> faultline (workers = 1, no rules,
#                     upstream protocol = "h2c") -> backend
#     faultline-base  grpc_bench -> $BASELINE_BIN set up exactly like
#                     faultline (only when BASELINE_BIN is set: A/B of two
#                     builds)
#     haproxy         grpc_bench -> HAProxy (nbthread 1, mode http,
#                     `bind ... proto h2`, `server ... proto h2`) -> backend
#
#   Targets are interleaved (round 1 runs each once, then round 2, ...) so
#   drift of the machine spreads over all of them alike; with
#   faultline-base, odd rounds measure faultline first and even rounds
#   faultline-base first. The report gives, per target, the median over
#   rounds of calls/s, p50 and p99 (each measured by grpc_bench over all the
#   calls of a run) and of the CPU time the target's own process spent per
#   call (user + system from /proc/PID/stat; for direct, the backend's),
#   then the ratios faultline/haproxy (calls/s, p99, CPU per call),
#   faultline/faultline-base and each proxy / direct. On a machine shared
#   with other work calls/s and p99 swing from round to round; CPU per call
#   moves much less, and says which proxy does more work for a call.
#
#   This is a benchmark, not a test: nothing in the test suite runs it, and
#   it asserts nothing about speed. It exits non-zero only when something
#   is broken (a server fails to start or answer a checked call, or a run
#   has failed calls — ALLOW_ERRORS=1 only warns about those).
#
# How to run
#   scripts/grpcbench.sh                          # builds the release binaries
#   PIN=1 ROUNDS=5 DURATION=10s scripts/grpcbench.sh
#   BASELINE_BIN=/path/to/old/faultline ROUNDS=4 scripts/grpcbench.sh   # A/B
#   TARGETS="faultline haproxy" scripts/grpcbench.sh
#
#   Environment (defaults in brackets):
#     TARGETS        subset of "direct faultline faultline-base haproxy"
#                    [all but faultline-base, which joins when BASELINE_BIN
#                    is set]
#     ROUNDS         interleaved measurement rounds [4]
#     DURATION       length of one measured run [10s]
#     WARMUP         length of the per-target warm-up run [2s]
#     CONCURRENCY    callers, one call in flight each [32]
#     CONNECTIONS    h2c connections from the client [1]
#     PIN=1          taskset: backend and client on cpu 0, proxies on cpu 1
#     FAULTLINE_BIN  use this faultline instead of `cargo build --release`
#     EXAMPLES_DIR   where grpc_bench and grpc_echo_server are already
#                    built (skips building them) [the cargo target dir]
#     BASELINE_BIN   a second faultline binary to run as faultline-base
#     KEEP_TMP=1     keep the temp dir (configs, logs, raw output)
#     READY_TIMEOUT  seconds to wait for each server to answer [30]
#
#   Needs: haproxy (installed with apt-get when missing), python3 (for the
#   arithmetic), and cargo unless FAULTLINE_BIN and EXAMPLES_DIR are set.
#   Run it on an otherwise idle machine, and note its load (`uptime`) with
#   the figures.

set -euo pipefail

# haproxy lives in /usr/sbin, which is not on a normal user's PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
# shellcheck source=scripts/common.sh
source "$SCRIPT_DIR/common.sh"

BASELINE_BIN="${BASELINE_BIN:-}"
ALL_TARGETS="direct faultline faultline-base haproxy"
if [[ -n "$BASELINE_BIN" ]]; then
  DEFAULT_TARGETS="$ALL_TARGETS"
else
  DEFAULT_TARGETS="direct faultline haproxy"
fi
TARGETS="${TARGETS:-$DEFAULT_TARGETS}"
ROUNDS="${ROUNDS:-4}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONCURRENCY="${CONCURRENCY:-32}"
CONNECTIONS="${CONNECTIONS:-1}"
PIN="${PIN:-0}"
KEEP_TMP="${KEEP_TMP:-0}"
ALLOW_ERRORS="${ALLOW_ERRORS:-0}"
READY_TIMEOUT="${READY_TIMEOUT:-30}"

log() { printf '[grpcbench] %s\n' "$*" >&2; }
die() { printf '[grpcbench] ERROR: %s\n' "$*" >&2; exit 1; }

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
ORDER=()
for t in $ALL_TARGETS; do
  if [[ -n "${WANT[$t]:-}" ]]; then ORDER+=("$t"); fi
done
I_FL=-1
I_BASE=-1
for i in "${!ORDER[@]}"; do
  case "${ORDER[$i]}" in
    faultline) I_FL=$i ;;
    faultline-base) I_BASE=$i ;;
  esac
done
for v in ROUNDS CONCURRENCY CONNECTIONS READY_TIMEOUT; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
for v in DURATION WARMUP; do
  [[ "${!v}" =~ ^[0-9]+(ms|s|m)$ ]] || die "$v must be a duration such as 10s or 500ms (got '${!v}')"
done

# ------------------------------------------------------------- dependencies
SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="__nosudo__"; fi
fi
ensure_pkg() { # ensure_pkg COMMAND PACKAGE
  local cmd="$1" pkg="$2"
  command -v "$cmd" >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 ||
    die "'$cmd' is missing and apt-get is not available; install '$pkg' by hand"
  [[ "$SUDO" != "__nosudo__" ]] ||
    die "'$cmd' is missing, not running as root and no sudo; install '$pkg' by hand"
  log "installing $pkg (for '$cmd')"
  $SUDO apt-get update -q >/dev/null || die "apt-get update failed"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >/dev/null ||
    die "apt-get install $pkg failed"
  command -v "$cmd" >/dev/null 2>&1 || die "installed $pkg but '$cmd' is still not on PATH"
}
if [[ -n "${WANT[haproxy]:-}" ]]; then ensure_pkg haproxy haproxy; fi
command -v python3 >/dev/null 2>&1 || die "python3 is required for the arithmetic"

CPU0=()
CPU1=()
if [[ "$PIN" == 1 ]]; then
  ensure_pkg taskset util-linux
  if [[ "$(nproc)" -lt 2 ]]; then
    log "WARNING: PIN=1 needs 2 cpus, this machine has $(nproc); not pinning"
    PIN=0
  else
    CPU0=(taskset -c 0)
    CPU1=(taskset -c 1)
  fi
fi

# ----------------------------------------------------------------- binaries
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
need_faultline=0
if [[ -n "${WANT[faultline]:-}" ]]; then need_faultline=1; fi
build=()
if [[ $need_faultline -eq 1 && -z "${FAULTLINE_BIN:-}" ]]; then build+=(--bin faultline); fi
if [[ -z "${EXAMPLES_DIR:-}" ]]; then build+=(--example grpc_bench --example grpc_echo_server); fi
if [[ ${#build[@]} -gt 0 ]]; then
  command -v cargo >/dev/null 2>&1 ||
    die "cargo not found; install Rust or set FAULTLINE_BIN and EXAMPLES_DIR"
  log "building: cargo build --release ${build[*]} (in $REPO_ROOT)"
  (cd "$REPO_ROOT" && cargo build --release "${build[@]}") || die "cargo build --release failed"
fi
FAULTLINE="${FAULTLINE_BIN:-$TARGET_DIR/release/faultline}"
EXAMPLES_DIR="${EXAMPLES_DIR:-$TARGET_DIR/release/examples}"
BENCH="$EXAMPLES_DIR/grpc_bench"
BACKEND="$EXAMPLES_DIR/grpc_echo_server"
if [[ $need_faultline -eq 1 ]]; then
  [[ -x "$FAULTLINE" ]] || die "$FAULTLINE is not an executable file"
fi
[[ -x "$BENCH" ]] || die "$BENCH is not an executable file"
[[ -x "$BACKEND" ]] || die "$BACKEND is not an executable file"
if [[ -n "${WANT[faultline-base]:-}" ]]; then
  [[ -f "$BASELINE_BIN" && -x "$BASELINE_BIN" ]] ||
    die "BASELINE_BIN=$BASELINE_BIN is not an executable file"
fi

# ------------------------------------------------------- temp dir, cleanup
TMP="$(mktemp -d "${TMPDIR:-/tmp}/faultline-grpcbench.XXXXXX")"
PIDS=()
BENCH_PID=""
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  if [[ -n "$BENCH_PID" ]]; then kill -TERM "$BENCH_PID" 2>/dev/null || true; fi
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
read -r P_BACKEND P_FL P_FLBASE P_HAPROXY P_ADMIN1 P_ADMIN2 < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(6):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)
declare -A PORT=([direct]=$P_BACKEND [faultline]=$P_FL [faultline-base]=$P_FLBASE [haproxy]=$P_HAPROXY)
declare -A LOGF=()
declare -A PIDOF=()
url_of() { echo "http://127.0.0.1:${PORT[$1]}"; }

# start NAME COMMAND...: runs a server in the background (pinned to cpu 1
# for the proxies, cpu 0 for the backend when PIN=1), waits until a checked
# call goes through it.
start() {
  local name="$1" deadline status
  shift
  LOGF[$name]="$TMP/$name.log"
  "$@" >"${LOGF[$name]}" 2>&1 &
  PIDOF[$name]=$!
  PIDS+=("$!")
  log "$name: pid ${PIDOF[$name]}, $(url_of "$name")"
  deadline=$((SECONDS + READY_TIMEOUT))
  until "$BENCH" --target "$(url_of "$name")" --check >"$TMP/check-$name.txt" 2>&1; do
    if ! kill -0 "${PIDOF[$name]}" 2>/dev/null; then
      status=0
      wait "${PIDOF[$name]}" 2>/dev/null || status=$?
      show_log "$name"
      die "$name exited with status $status before answering"
    fi
    if ((SECONDS >= deadline)); then
      sed 's/^/    /' "$TMP/check-$name.txt" >&2
      show_log "$name"
      die "$name did not answer a checked call within ${READY_TIMEOUT}s"
    fi
    sleep 0.2
  done
}

# ------------------------------------------------------------------ servers
start direct "${CPU0[@]}" "$BACKEND" --listen "127.0.0.1:$P_BACKEND"

# write_faultline_config FILE PORT ADMIN_PORT RULES_DIR
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

[[upstream]]
name = "echo"
url = "http://127.0.0.1:$P_BACKEND"
protocol = "h2c"
labels = { region = "us-east-1", service = "echo" }

[[route]]
listener = "edge"
upstream = "echo"
EOF
}
mkdir -p "$TMP/rules-empty"
if [[ -n "${WANT[faultline]:-}" ]]; then
  write_faultline_config "$TMP/faultline.toml" "$P_FL" "$P_ADMIN1" "$TMP/rules-empty"
  start faultline "${CPU1[@]}" "$FAULTLINE" run -c "$TMP/faultline.toml"
fi
if [[ -n "${WANT[faultline-base]:-}" ]]; then
  write_faultline_config "$TMP/faultline-base.toml" "$P_FLBASE" "$P_ADMIN2" "$TMP/rules-empty"
  start faultline-base "${CPU1[@]}" "$BASELINE_BIN" run -c "$TMP/faultline-base.toml"
fi

if [[ -n "${WANT[haproxy]:-}" ]]; then
  cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend edge
    bind 127.0.0.1:$P_HAPROXY proto h2
    default_backend echo

backend echo
    http-reuse always
    server echo 127.0.0.1:$P_BACKEND proto h2
EOF
  haproxy -c -q -f "$TMP/haproxy.cfg" >"$TMP/haproxy-check.log" 2>&1 || {
    sed 's/^/    /' "$TMP/haproxy-check.log" >&2
    die "haproxy rejected its config ($TMP/haproxy.cfg)"
  }
  # -db: stay in the foreground, so $! is haproxy itself.
  start haproxy "${CPU1[@]}" haproxy -db -f "$TMP/haproxy.cfg"
fi

# ------------------------------------------------------------------- runs
RESULTS="$TMP/results.tsv"
: >"$RESULTS"
mkdir -p "$TMP/runs"

# cpu_ticks PID: user + system CPU time of PID so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
CLK_TCK="$(getconf CLK_TCK)"

# run_bench TARGET DURATION OUTFILE: grpc_bench in the background, waited
# for, so a signal to the script is handled at once. Sets RUN_CPU_S to the
# CPU seconds the target's server process (the backend for direct) used.
run_bench() {
  local name="$1" dur="$2" out="$3" status=0 before
  before="$(cpu_ticks "${PIDOF[$name]}")"
  "${CPU0[@]}" "$BENCH" --target "$(url_of "$name")" --concurrency "$CONCURRENCY" \
    --connections "$CONNECTIONS" --duration "$dur" >"$out" 2>&1 &
  BENCH_PID=$!
  wait "$BENCH_PID" || status=$?
  BENCH_PID=""
  if ((status != 0)); then
    sed 's/^/    /' "$out" >&2
    die "grpc_bench failed (status $status) against $name"
  fi
  if ! kill -0 "${PIDOF[$name]}" 2>/dev/null; then
    show_log "$name"
    die "$name died during the run"
  fi
  RUN_CPU_S="$(awk -v a="$before" -v b="$(cpu_ticks "${PIDOF[$name]}")" -v t="$CLK_TCK" 'BEGIN { print (b - a) / t }')"
}

log "config: targets='${ORDER[*]}' rounds=$ROUNDS duration=$DURATION warmup=$WARMUP concurrency=$CONCURRENCY connections=$CONNECTIONS pin=$PIN cpus=$(nproc)"
log "load before: $(uptime)"
for t in "${ORDER[@]}"; do
  log "warm-up: $t ($WARMUP)"
  run_bench "$t" "$WARMUP" "$TMP/runs/warmup-$t.txt"
done

errors_seen=0
for ((r = 1; r <= ROUNDS; r++)); do
  round=("${ORDER[@]}")
  if ((r % 2 == 0 && I_FL >= 0 && I_BASE >= 0)); then
    round[I_FL]=faultline-base
    round[I_BASE]=faultline
  fi
  for t in "${round[@]}"; do
    out="$TMP/runs/round$r-$t.txt"
    run_bench "$t" "$DURATION" "$out"
    line="$(grep '^calls=' "$out" || true)"
    [[ -n "$line" ]] || { sed 's/^/    /' "$out" >&2; die "no result line from grpc_bench ($t, round $r)"; }
    # calls=N errors=E seconds=S calls_per_sec=X p50_ms=Y p99_ms=Z
    declare -A f=()
    for kv in $line; do f[${kv%%=*}]=${kv#*=}; done
    cpu_us="$(awk -v c="$RUN_CPU_S" -v n="${f[calls]}" 'BEGIN { printf "%.2f", (n > 0 ? c * 1e6 / n : 0) }')"
    printf '%s\t%d\t%s\t%s\t%s\t%s\t%s\n' "$t" "$r" "${f[calls_per_sec]}" "${f[p50_ms]}" "${f[p99_ms]}" "${f[errors]}" "$cpu_us" >>"$RESULTS"
    log "$(printf 'round %d/%d  %-15s %10s calls/s  p50 %7s ms  p99 %7s ms  cpu %6s us/call  errors %s' "$r" "$ROUNDS" "$t" "${f[calls_per_sec]}" "${f[p50_ms]}" "${f[p99_ms]}" "$cpu_us" "${f[errors]}")"
    if [[ "${f[errors]}" != 0 ]]; then
      errors_seen=1
      log "WARNING: $t round $r: ${f[errors]} failed calls"
      grep -v '^calls=' "$out" | sed 's/^/    /' >&2 || true
    fi
    unset f
  done
done
log "load after: $(uptime)"

# ------------------------------------------------------------------ report
echo
python3 - "$RESULTS" "$CONCURRENCY" "$CONNECTIONS" "${ORDER[@]}" <<'EOF'
import sys
from statistics import median

path, concurrency, connections, order = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
runs = {}
for line in open(path):
    t, r, cps, p50, p99, errors, cpu = line.rstrip("\n").split("\t")
    runs.setdefault(t, []).append((float(cps), float(p50), float(p99), float(cpu), int(errors)))

med = {}
print(f"unary gRPC, {concurrency} callers over {connections} h2c connection(s), medians of rounds")
print("(cpu: CPU time of the target's own process per call; for direct, the backend's)")
print(f"{'target':<16}{'calls/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'cpu us':>9}{'rounds':>8}  errors  calls/s per round")
for t in order:
    rs = runs[t]
    med[t] = tuple(median(x[i] for x in rs) for i in range(4))
    errors = sum(x[4] for x in rs)
    each = " ".join(f"{x[0]:.0f}" for x in rs)
    print(f"{t:<16}{med[t][0]:>10.0f}{med[t][1]:>10.3f}{med[t][2]:>10.3f}{med[t][3]:>9.2f}{len(rs):>8}  {errors:>6}  {each}")

def ratio(label, a, b, idx):
    if a in med and b in med and med[b][idx] > 0:
        print(f"  {label:<40}{med[a][idx] / med[b][idx]:>8.3f}")

print()
print("ratios (of medians):")
ratio("faultline / haproxy  calls/s", "faultline", "haproxy", 0)
ratio("faultline / haproxy  p99", "faultline", "haproxy", 2)
ratio("faultline / haproxy  cpu per call", "faultline", "haproxy", 3)
ratio("faultline / faultline-base  calls/s", "faultline", "faultline-base", 0)
ratio("faultline / faultline-base  p99", "faultline", "faultline-base", 2)
ratio("faultline / faultline-base  cpu per call", "faultline", "faultline-base", 3)
ratio("faultline / direct  calls/s", "faultline", "direct", 0)
ratio("haproxy / direct  calls/s", "haproxy", "direct", 0)
EOF

if ((errors_seen)); then
  if [[ "$ALLOW_ERRORS" == 1 ]]; then
    log "WARNING: some runs had failed calls (ALLOW_ERRORS=1, not failing)"
  else
    die "some runs had failed calls (see the WARNING lines; ALLOW_ERRORS=1 to only warn)"
  fi
fi
