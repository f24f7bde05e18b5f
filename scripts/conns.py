#!/usr/bin/env python3
"""Open many HTTP/1.1 keep-alive connections to one server and hold them.

Used by scripts/loadtest.sh (MEMORY=1) and scripts/stress.sh. Each
connection sends one `GET PATH`; in `idle` mode it reads the whole response
(Content-Length framing) and then stays open and silent, a keep-alive
connection between requests; in `pending` mode it does not wait for an
answer (a request held in a blackhole). Other modes hold connections that
misbehave: `silent` connects and sends nothing, `slowloris` sends a
request head one byte every SECONDS.

Once every connection is set up it prints one line to stdout,

    ready opened=N ok=K failed=F

then holds them until its stdin closes (or `--hold` seconds pass). In
`--watch` mode it also watches for the server to act on each connection
(answer or close it), keeps watching after stdin closes until all are done
or `--hold` passes, and reports

    done=D answered=A answered_2xx=K of N last_after=S.SSs

where S is when the last connection was done (or, if some never were, the
time watched), counted from `ready` or from the last `mark` line on stdin
(answered with `mark done=D`, how many were done before it).

Everything is bounded: a per-socket timeout, a hold deadline, and the
count of connections given on the command line.
"""

import argparse
import errno
import os
import resource
import select
import socket
import sys
import time


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, need + 64))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < need + 16:
        sys.exit(f"conns.py: need {need} descriptors, the hard limit is {hard}")


def read_response(sock):
    """Reads one Content-Length framed response; returns its status code."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside the response body")
        body += chunk
    return status


def open_all(args):
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.host_header}\r\n"
        "User-Agent: faultline-conns\r\n\r\n"
    ).encode()
    socks, ok, failed = [], 0, 0
    for _ in range(args.count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(args.timeout)
        try:
            sock.connect((args.host, args.port))
            if args.mode == "idle":
                sock.sendall(request)
                if 200 <= read_response(sock) < 300:
                    ok += 1
                else:
                    failed += 1
            elif args.mode == "pending":
                sock.sendall(request)
                ok += 1
            elif args.mode == "slowloris":
                sock.sendall(request[:1])
                ok += 1
            else:  # silent
                ok += 1
            socks.append(sock)
        except OSError as e:
            failed += 1
            sock.close()
            if failed <= 3:
                print(f"conns.py: connection failed: {e}", file=sys.stderr)
    return socks, ok, failed, request


def poll_peer(sock):
    """What the server did on `sock` so far, never blocking: None (nothing
    yet), b"" (closed) or the first bytes it sent."""
    try:
        return sock.recv(65536, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError as e:
        return None if e.errno == errno.EAGAIN else b""


def hold(args, socks, request):
    """Holds the connections until stdin closes or `--hold` passes.

    In `--watch` mode it also notes, per connection, when the server first
    did something (answered or closed), and keeps going after stdin closes
    until every connection is done or `--hold` passes. A line `mark` on
    stdin restarts the clock the times are measured from.
    Returns (done, answered, answered_2xx, seconds until the last was done)."""
    # Non-blocking from here on: a socket with a timeout would wait for it
    # in every recv, MSG_DONTWAIT or not.
    for sock in socks:
        sock.setblocking(False)
    start = time.monotonic()
    deadline = start + args.hold
    done = {}  # index -> (seconds since the mark, status or None)
    next_byte = start + args.interval
    sent = 1
    stdin_open = True
    while time.monotonic() < deadline:
        wait = min(0.05, max(0.0, deadline - time.monotonic()))
        if stdin_open:
            readable, _, _ = select.select([sys.stdin], [], [], wait)
            if readable:
                line = sys.stdin.readline()
                if not line:
                    stdin_open = False
                    if not args.watch:
                        break
                elif line.strip() == "mark":
                    start = time.monotonic()
                    print(f"mark done={len(done)}", flush=True)
        else:
            time.sleep(wait)
        now = time.monotonic()
        if args.mode == "slowloris" and now >= next_byte and sent < len(request) - 1:
            for i, sock in enumerate(socks):
                if i not in done:
                    try:
                        sock.send(request[sent : sent + 1])
                    except OSError:
                        pass
            sent += 1
            next_byte = now + args.interval
        if args.watch:
            for i, sock in enumerate(socks):
                if i in done:
                    continue
                got = poll_peer(sock)
                if got is None:
                    continue
                status = None
                if got.startswith(b"HTTP/1.1 ") and len(got) >= 12:
                    try:
                        status = int(got[9:12])
                    except ValueError:
                        pass
                done[i] = (time.monotonic() - start, status)
            if len(done) == len(socks):
                break
    answered = [st for _, st in done.values() if st is not None]
    last = max((t for t, _ in done.values()), default=0.0)
    if len(done) < len(socks):
        last = time.monotonic() - start
    return len(done), len(answered), sum(1 for st in answered if 200 <= st < 300), last


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--host-header", default="localhost")
    parser.add_argument("--path", default="/")
    parser.add_argument(
        "--mode", choices=["idle", "pending", "silent", "slowloris"], default="idle"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="per socket operation")
    parser.add_argument("--hold", type=float, default=120.0, help="hold at most this long")
    parser.add_argument("--interval", type=float, default=1.0, help="slowloris byte interval")
    parser.add_argument(
        "--watch", action="store_true", help="report when the server closes the connections"
    )
    args = parser.parse_args()
    raise_fd_limit(args.count)
    socks, ok, failed, request = open_all(args)
    print(f"ready opened={len(socks)} ok={ok} failed={failed}", flush=True)
    done, answered, ok_2xx, took = hold(args, socks, request)
    if args.watch:
        print(
            f"done={done} answered={answered} answered_2xx={ok_2xx} of {len(socks)}"
            f" last_after={took:.2f}s",
            flush=True,
        )
    for sock in socks:
        sock.close()


if __name__ == "__main__":
    main()
