#!/usr/bin/env bash
# scripts/dnsbench.sh — DNS queries per second answered by faultline, next
# to unbound answering from a local zone, with dnsperf.
#
# What it measures
#   dnsperf (one thread, one client socket: -T 1 -c 1, its default of 100
#   queries outstanding) sends one name over and over for DURATION to:
#
#     faultline  [proxy] workers = 1, [dns] on UDP, with
#                  records   rec.bench.test A 192.0.2.1   (a `records` answer)
#                  fault     a kind = "dns" rule: fault.bench.test NXDOMAIN
#     unbound    num-threads 1, module-config "iterator", with
#                  records   local-data "rec.bench.test. 5 IN A 192.0.2.1"
#                  fault     fault.bench.test, absent from the static zone
#                            bench.test: NXDOMAIN with the zone's SOA, as
#                            faultline's answer carries one
#
#   Runs are interleaved (round 1 runs every case once, then round 2, …) so
#   drift of a shared machine spreads over all of them; the report gives the
#   median queries/s of each case and the ratio faultline/unbound. The bar
#   of issue 20 is a ratio of at least 0.9 for both answers.
#
#   This is a benchmark, not a test: it asserts nothing about speed, and
#   exits non-zero only when something is broken (a server does not start
#   or answer, dnsperf loses queries or gets answers with the wrong code).
#
# How to run
#   scripts/dnsbench.sh                          # builds the release binary
#   ROUNDS=5 DURATION=10 PIN=1 scripts/dnsbench.sh
#
#   Environment (defaults in brackets):
#     ROUNDS         interleaved rounds [3]
#     DURATION       seconds of one dnsperf run [5]
#     PIN=1          taskset: dnsperf on cpu 0, the server on cpu 1
#     FAULTLINE_BIN  use this faultline instead of `cargo build --release`
#     KEEP_TMP=1     keep the temp dir (configs, logs, raw output)
#
#   Needs: dnsperf and unbound (Debian packages; installed with apt-get
#   when missing), dig (bind9-dnsutils) for the readiness checks.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5}"
PIN="${PIN:-0}"

missing=()
command -v dnsperf >/dev/null || missing+=(dnsperf)
command -v unbound >/dev/null || missing+=(unbound)
command -v dig >/dev/null || missing+=(bind9-dnsutils)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -z "${FAULTLINE_BIN:-}" ]; then
  cargo build --release --locked --bin faultline >&2
  FAULTLINE_BIN="${CARGO_TARGET_DIR:-target}/release/faultline"
fi

tmp="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do stop_pid "$pid"; done
  if [ "${KEEP_TMP:-0}" = 1 ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

server_cpu=() client_cpu=()
if [ "$PIN" = 1 ]; then server_cpu=(taskset -c 1); client_cpu=(taskset -c 0); fi

# faultline: one worker, DNS only.
fl_port="$(free_port)"
mkdir -p "$tmp/rules"
cat > "$tmp/faultline.toml" <<TOML
[admin]
listen = "127.0.0.1:0"
[proxy]
workers = 1
rules_dir = "rules"
watch_rules = false
[dns]
listen = "127.0.0.1:$fl_port"
upstream = ["system"]
records = { "rec.bench.test" = ["192.0.2.1"] }
TOML
cat > "$tmp/rules/bench.toml" <<TOML
[[rule]]
name = "bench-nxdomain"
[rule.match]
dns = { name = "fault.bench.test" }
[rule.fault]
kind = "dns"
answer = "nxdomain"
TOML
"${server_cpu[@]}" "$FAULTLINE_BIN" run -c "$tmp/faultline.toml" > "$tmp/faultline.log" 2>&1 &
pids+=($!)

# unbound: one thread, the same answers from a local zone.
ub_port="$(free_port)"
cat > "$tmp/unbound.conf" <<CONF
server:
  interface: 127.0.0.1
  port: $ub_port
  num-threads: 1
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "$tmp"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  local-zone: "bench.test." static
  local-data: "bench.test. 5 IN SOA ns.bench.test. hostmaster.bench.test. 1 3600 600 86400 5"
  local-data: "rec.bench.test. 5 IN A 192.0.2.1"
remote-control:
  control-enable: no
CONF
"${server_cpu[@]}" unbound -d -c "$tmp/unbound.conf" > "$tmp/unbound.log" 2>&1 &
pids+=($!)

ready() {
  local port="$1" i
  for ((i = 0; i < 100; i++)); do
    if dig @127.0.0.1 -p "$port" +tries=1 +time=1 rec.bench.test A +short 2>/dev/null | grep -q 192.0.2.1; then
      return 0
    fi
    sleep 0.1
  done
  echo "the server on port $port did not answer; logs in $tmp" >&2
  KEEP_TMP=1
  exit 1
}
ready "$fl_port"
ready "$ub_port"

echo "rec.bench.test A" > "$tmp/records.q"
echo "fault.bench.test A" > "$tmp/fault.q"

# run SERVER PORT CASE EXPECTED_RCODE: one dnsperf run; prints queries/s.
run() {
  local server="$1" port="$2" case="$3" rcode="$4" out
  out="$tmp/$server-$case-$round.txt"
  "${client_cpu[@]}" dnsperf -s 127.0.0.1 -p "$port" -d "$tmp/$case.q" -l "$DURATION" -c 1 -T 1 > "$out" 2>&1
  if ! grep -q "Queries lost: *0 " "$out" || ! grep -q "$rcode" "$out"; then
    echo "$server $case: lost queries or no $rcode answers; see $out" >&2
    KEEP_TMP=1
    exit 1
  fi
  awk '/Queries per second/ {print $4}' "$out"
}

declare -A results
for ((round = 1; round <= ROUNDS; round++)); do
  for case in records fault; do
    rcode=NOERROR
    [ "$case" = fault ] && rcode=NXDOMAIN
    for server in faultline unbound; do
      port="$fl_port"
      [ "$server" = unbound ] && port="$ub_port"
      qps="$(run "$server" "$port" "$case" "$rcode")"
      results["$server-$case"]+="$qps "
      printf 'round %d  %-9s %-7s %10.0f q/s\n' "$round" "$server" "$case" "$qps" >&2
    done
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo
echo "dnsperf -T 1 -c 1, ${DURATION}s runs, median of $ROUNDS (queries/s):"
printf '%-8s %12s %12s %8s\n' case faultline unbound ratio
for case in records fault; do
  fl="$(echo "${results[faultline-$case]}" | median)"
  ub="$(echo "${results[unbound-$case]}" | median)"
  printf '%-8s %12.0f %12.0f %8.2f\n' "$case" "$fl" "$ub" "$(echo "$fl $ub" | awk '{print $1 / $2}')"
done
