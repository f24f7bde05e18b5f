#!/usr/bin/env bash
# Intercepted HTTPS through faultline vs faultline's own TLS listener (both
# in front of the same nginx over TLS, one worker), and new intercepted
# connections/s (CONNECT + a full TLS handshake + one request each, leaf
# cached) vs HAProxy's TLS handshakes/s on one thread and faultline's TLS
# listener's. The client is examples/tls_bench. Prints each run and the
# median per row:
#   ka_tls  keep-alive rps, faultline TLS listener (tls.generate) -> nginx TLS
#   ka_int  keep-alive rps, CONNECT intercepted by faultline -> nginx TLS
#   hs_int  new intercepted connections/s
#   hs_hap  new TLS connections/s, HAProxy (nbthread 1) -> nginx TLS
#   hs_tls  new TLS connections/s, faultline TLS listener
# Build first: cargo build --release --bin faultline --example tls_bench
# Needs nginx, haproxy, openssl, curl. Env: DUR [5s], CONNS [32], ROUNDS [3].
set -euo pipefail
T=$(mktemp -d)
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${BIN:-$TARGET/release/faultline}
BENCH=${BENCH:-$TARGET/release/examples/tls_bench}
BIN=$(realpath "$BIN"); BENCH=$(realpath "$BENCH")
DUR=${DUR:-5s}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-3}
cd $T
rm -rf ca up nginx.conf haproxy.cfg faultline.toml rules logs; mkdir -p up rules logs
# Upstream certificate for bench.test, signed by a test CA.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench up CA" \
  -addext basicConstraints=critical,CA:TRUE -keyout up/ca-key.pem -out up/ca.pem >/dev/null 2>&1
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=bench.test" \
  -keyout up/key.pem -out up/req.pem >/dev/null 2>&1
printf "subjectAltName=DNS:bench.test\nextendedKeyUsage=serverAuth\n" > up/ext.cnf
openssl x509 -req -in up/req.pem -CA up/ca.pem -CAkey up/ca-key.pem -CAcreateserial -days 2 \
  -extfile up/ext.cnf -out up/cert.pem >/dev/null 2>&1
cat up/cert.pem up/key.pem > up/haproxy.pem
P_NG=18443; P_TLS=18444; P_EG=18445; P_HAP=18446; P_ADM=18447
cat > nginx.conf <<NG
worker_processes 1; daemon off; pid $T/nginx.pid; error_log $T/logs/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$P_NG ssl; ssl_certificate $T/up/cert.pem; ssl_certificate_key $T/up/key.pem;
    location / { return 200 "ok"; } } }
NG
cat > haproxy.cfg <<HP
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:$P_HAP ssl crt $T/up/haproxy.pem alpn http/1.1
  default_backend be
backend be
  http-reuse always
  server ng 127.0.0.1:$P_NG ssl verify required ca-file $T/up/ca.pem sni str(bench.test)
HP
cat > faultline.toml <<FL
[admin]
listen = "127.0.0.1:$P_ADM"
[proxy]
workers = 1
watch_rules = false
[ca]
dir = "$T/ca"
[[listener]]
name = "tls"
listen = "127.0.0.1:$P_TLS"
tls = { generate = ["bench.test"] }
[[listener]]
name = "egress"
listen = "127.0.0.1:$P_EG"
mode = "forward"
intercept = ["bench.test"]
[[upstream]]
name = "nginx"
url = "https://127.0.0.1:$P_NG"
protocol = "http1"
tls = { ca = "$T/up/ca.pem", server_name = "bench.test" }
[[route]]
listener = "tls"
upstream = "nginx"
[[destination]]
name = "bench"
host = "bench.test"
connect_to = "127.0.0.1:$P_NG"
tls = { ca = "$T/up/ca.pem" }
FL
/usr/sbin/nginx -c $T/nginx.conf & NG_PID=$!
/usr/sbin/haproxy -f $T/haproxy.cfg >logs/haproxy.log 2>&1 & HAP_PID=$!
FAULTLINE_LOG=warn $BIN run -c $T/faultline.toml >logs/faultline.log 2>&1 & FL_PID=$!
trap 'kill $NG_PID $HAP_PID $FL_PID 2>/dev/null || true; rm -rf "$T"' EXIT
for i in $(seq 50); do [[ -f $T/ca/ca.pem ]] && curl -s -o /dev/null 127.0.0.1:$P_ADM/healthz && break; sleep 0.1; done
cat up/ca.pem ca/ca.pem > both-ca.pem
run() { $BENCH --duration $DUR --connections $CONNS "$@" | sed 's/.*per_sec=//'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A R
for round in $(seq $ROUNDS); do
  R[ka_tls]+="$(run --mode keepalive --addr 127.0.0.1:$P_TLS --name bench.test --ca ca/ca.pem) "
  R[ka_int]+="$(run --mode keepalive --addr 127.0.0.1:$P_EG --proxy --name bench.test --ca ca/ca.pem) "
  R[hs_int]+="$(run --mode handshake --addr 127.0.0.1:$P_EG --proxy --name bench.test --ca ca/ca.pem) "
  R[hs_hap]+="$(run --mode handshake --addr 127.0.0.1:$P_HAP --name bench.test --ca up/ca.pem) "
  R[hs_tls]+="$(run --mode handshake --addr 127.0.0.1:$P_TLS --name bench.test --ca ca/ca.pem) "
done
for k in ka_tls ka_int hs_int hs_hap hs_tls; do
  echo "$k runs: ${R[$k]} median: $(echo ${R[$k]} | tr ' ' '\n' | median)"
done
